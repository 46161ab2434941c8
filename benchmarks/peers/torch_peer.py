"""PyTorch (CPU, eager) peer of minivae's three benchmark workloads, same weights and data.

  train_epoch  one epoch of the paper MNIST FFG VAE at batch 100: single-sample ELBO,
               torch.optim.Adam lr 1e-3, autograd
  ais_leapfrog HMC transitions on log p(z) + beta log p(x|z) of the decoder 50-200-200-784,
               rows = datapoints x chains; throughput in leapfrog gradient evaluations
  qstar_ffg    Adam on per-datapoint (mu, logvar) of 100 datapoints x 100 samples, decoder fixed
  train_epoch_flow, qstar_flow  the same with the paper's flow q (2 steps, nets Z-100-100-*;
               for q* every net per datapoint)

    python benchmarks/peers/torch_peer.py [--weights init.npz] [--workloads a,b,c] [--threads N]

Prints one JSON line per workload; {"skipped": "torch not installed"} when torch is absent.
"""
import math
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402

common.early_threads()

import numpy as np  # noqa: E402
from paper_model import paper_model  # noqa: E402

SIDE = "torch"


def tensors(weights, requires_grad=False):
    return {k: torch.tensor(v, requires_grad=requires_grad) for k, v in weights.items()}


def train_epoch(weights, args, flow=False):
    ws = tensors({k: v for k, v in weights.items() if flow or not k.startswith("q.")}, requires_grad=True)
    opt = torch.optim.Adam(list(ws.values()), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    elbo, E = (vae.elbo_flow, 2 * common.LATENT) if flow else (vae.elbo_ffg, common.LATENT)

    # cross-check: the bound and its gradient on a fixed batch, before any step
    xc, ec = (torch.tensor(a) for a in (common.check_batch_flow() if flow else common.check_batch()))
    value = elbo(ws, xc, vae.mlp(ws, "enc", xc), ec[:, None, :]).mean()
    grads = torch.autograd.grad(value, list(ws.values()))
    check = dict(check_bound=value.item(),
                 check_grad_norm=math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)))

    x_all = torch.from_numpy(common.mnist_train())       # uint8 (N, D); cast per batch as minivae
    n_full = len(x_all) // common.BATCH
    n = n_full if args.batches is None else min(args.batches, n_full)
    gen = torch.Generator().manual_seed(0)

    def step(idx):
        xb = x_all[idx].float()
        eps = torch.randn(common.BATCH, 1, E, generator=gen)
        loss = -elbo(ws, xb, vae.mlp(ws, "enc", xb), eps).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return -loss.item()

    def epoch():
        perm = torch.randperm(len(x_all), generator=gen)
        return [step(perm[b * common.BATCH:(b + 1) * common.BATCH]) for b in range(n)]

    warm = torch.randperm(len(x_all), generator=gen)
    for b in range(5):
        step(warm[b * common.BATCH:(b + 1) * common.BATCH])
    timing = common.time_repeats(epoch, args.epochs_timed, warmup=0)
    common.emit_epoch(SIDE, timing, n, n_full, workload="train_epoch_flow" if flow else "train_epoch",
                      q="flow" if flow else "ffg", **check, **meta())


def ais_leapfrog(weights, args):
    ws = tensors(weights)
    x, z0 = (torch.tensor(a) for a in common.ais_inputs(args.ais_data, args.ais_chains))
    beta, step, L = common.AIS_BETA, common.AIS_STEP, common.AIS_LEAPFROG
    gen = torch.Generator().manual_seed(0)

    def log_joint_and_grad(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            logp = vae.log_prior(z) + beta * vae.log_lik(ws, x, z)
            (g,) = torch.autograd.grad(logp.sum(), z)
        return logp.detach(), g

    logp0, g0 = log_joint_and_grad(z0)
    check = dict(check_logp_mean=logp0.mean().item(), check_grad_norm=g0.double().norm().item())

    def transition(z, logp, g):
        with torch.no_grad():
            p = torch.randn(z.shape, generator=gen)
            h0 = logp - 0.5 * (p * p).sum(-1)
            zn, pn, gn = z, p + 0.5 * step * g, g
            for i in range(L):
                zn = zn + step * pn
                logpn, gn = log_joint_and_grad(zn)
                pn = pn + (step if i < L - 1 else 0.5 * step) * gn
            h1 = logpn - 0.5 * (pn * pn).sum(-1)
            accept = torch.log(torch.rand(h0.shape, generator=gen)) < h1 - h0
            a = accept[:, None]
            return torch.where(a, zn, z), torch.where(accept, logpn, logp), torch.where(a, gn, g), accept

    state = [z0, logp0, g0]

    def run():
        for _ in range(args.ais_transitions):
            state[0], state[1], state[2], _ = transition(*state)

    common.emit_ais(SIDE, common.time_repeats(run, args.repeats, warmup=1), args, check, **meta())


def qstar_ffg(weights, args):
    ws = tensors(weights)
    x, eps_check = (torch.tensor(a) for a in common.qstar_inputs(args.q_data, args.q_samples))
    h = torch.zeros(args.q_data, 2 * common.LATENT, requires_grad=True)   # N(0, I) init
    opt = torch.optim.Adam([h], lr=1e-3)
    with torch.no_grad():
        check = dict(check_bound=vae.elbo_ffg(ws, x, h, eps_check).mean().item())
    timing = time_ascent(lambda eps: vae.elbo_ffg(ws, x, h, eps).sum(), opt, eps_check.shape, args)
    common.emit_qstar(SIDE, timing, args, check, **meta())


def time_ascent(objective, opt, shape, args):
    """Timing of args.q_steps Adam ascent steps (opt) on objective(eps), fresh N(0, I) noise of
    `shape` each step (the per-datapoint objectives are independent: their sum)."""
    gen = torch.Generator().manual_seed(0)

    def run():
        for _ in range(args.q_steps):
            loss = -objective(torch.randn(shape, generator=gen))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return common.time_repeats(run, args.repeats, warmup=1)


def qstar_flow(weights, args):
    """Adam on per-datapoint h and flow nets (W (N, in, out)), decoder fixed."""
    ws = tensors({k: v for k, v in weights.items() if k.startswith("dec.")})
    x_np, eps_np, nets = common.qstar_flow_inputs(args.q_data, args.q_samples)
    x, eps_check = torch.tensor(x_np), torch.tensor(eps_np)
    local = tensors({"h": np.zeros((args.q_data, 2 * common.LATENT), np.float32), **nets},
                    requires_grad=True)
    opt = torch.optim.Adam(list(local.values()), lr=1e-3)
    value = vae.elbo_flow({**ws, **local}, x, local["h"], eps_check).sum()
    grads = torch.autograd.grad(value, list(local.values()))
    check = dict(check_bound=value.item() / args.q_data,
                 check_grad_norm=math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)))
    timing = time_ascent(lambda eps: vae.elbo_flow({**ws, **local}, x, local["h"], eps).sum(), opt,
                         eps_check.shape, args)
    common.emit_qstar(SIDE, timing, args, check, workload="qstar_flow", **meta())


def matmul_peak(weights, args):
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    timing = common.time_repeats(lambda: torch.matmul(a, b, out=out), 5, warmup=2)
    common.emit_matmul(SIDE, timing, n, **meta())


def meta():
    return dict(version=torch.__version__, threads=torch.get_num_threads())


WORKLOADS = dict(a=train_epoch, b=ais_leapfrog, c=qstar_ffg, d=partial(train_epoch, flow=True),
                 e=qstar_flow, m=matmul_peak)


def load(args):
    """Import torch into this module and build the model on it; False where torch is not
    installed."""
    global torch, vae
    try:
        import torch
    except ImportError:
        return False
    if args.threads:
        torch.set_num_threads(args.threads)
    F = torch.nn.functional
    vae = paper_model(torch.exp, F.elu, F.softplus, torch.sigmoid)
    return True


def main(argv=None):
    return common.peer_main(__doc__, SIDE, WORKLOADS, load, argv)


if __name__ == "__main__":
    sys.exit(main())
