"""Bring your own VAE, end to end: train the paper's MNIST VAE in PyTorch, measure its gaps in minivae.

The model is the paper's (encoder 784-200-200 then mu and logvar heads of 50, decoder
50-200-200-784, ELU, Bernoulli), trained a few epochs on minivae's embedded binarized MNIST
with the single-sample ELBO and Adam. Its state_dict goes to safetensors with a spec in
PyTorch's layout; then `minivae import` makes a checkpoint and `minivae gaps` (small budgets by
default) prints the gap table.

    python benchmarks/peers/export_torch.py [--epochs 3] [--n 20] [--out runs/export-torch]

torch is needed here only; minivae itself never imports it. One thread by default (a shared
machine); --threads to change.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def make_vae(torch, latent=50, hidden=200, D=784):
    """The paper's MNIST VAE as PyTorch modules (torch passed in: --help works without it)."""
    nn = torch.nn
    m = nn.Module()
    m.enc = nn.Sequential(nn.Linear(D, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU())
    m.fc_mu, m.fc_logvar = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
    m.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                          nn.Linear(hidden, D))
    return m


def elbo(torch, m, x):
    """Single-sample ELBO per datapoint: log p(x|z) + log p(z) - log q(z|x), z = mu + sigma eps."""
    h = m.enc(x)
    mu, logvar = m.fc_mu(h), m.fc_logvar(h)
    eps = torch.randn_like(mu)
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = m.dec(z)
    ll = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    kl_terms = -0.5 * (z * z) + 0.5 * (eps * eps + logvar)       # log p(z) - log q(z|x), 2pi cancels
    return ll + kl_terms.sum(-1)


def spec_for(latent=50):
    def lin(name):
        return dict(weight=f"{name}.weight", bias=f"{name}.bias")
    return dict(layout="pytorch", dataset="mnist", likelihood="bernoulli", posterior="ffg",
                latent=latent, activation="elu",
                encoder=dict(layers=[lin("enc.0"), lin("enc.2"),
                                     dict(heads=[lin("fc_mu"), lin("fc_logvar")])]),
                decoder=dict(layers=[lin("dec.0"), lin("dec.2"), lin("dec.4")]))


def minivae(*args):
    """Run this checkout's CLI (not an installed copy) and stop on failure."""
    cmd = [sys.executable, str(REPO / "cli.py"), *map(str, args)]
    print("$ minivae", " ".join(map(str, args)), flush=True)
    subprocess.run(cmd, check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n", type=int, default=20, help="test datapoints for the gap table")
    p.add_argument("--out", default="runs/export-torch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError as e:
        print(json.dumps({"skipped": f"{e.name} not installed"}))
        return
    sys.path.insert(0, str(REPO))
    from minivae import data

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    x = torch.from_numpy(data.load("mnist", "train").astype("float32"))      # (50000, 784) in {0, 1}
    m = make_vae(torch)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for epoch in range(a.epochs):
        t0, total = time.perf_counter(), 0.0
        for idx in torch.randperm(len(x)).split(100):
            loss = -elbo(torch, m, x[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total -= loss.item() * len(idx)
        print(json.dumps(dict(epoch=epoch + 1, train_elbo=round(total / len(x), 3),
                              seconds=round(time.perf_counter() - t0, 1))), flush=True)

    weights, spec, ckpt = out / "torch_vae.safetensors", out / "torch_vae.spec.json", out / "torch_vae.h5"
    save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, str(weights))
    spec.write_text(json.dumps(spec_for(), indent=2) + "\n")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(a.threads))
    minivae("import", weights, "--spec", spec, "--out", ckpt)
    minivae("--threads", a.threads, "gaps", ckpt, "--n", a.n, "--out", out / "results.h5",
            "--k", 500, "--chains", 10, "--steps", 100, "--leapfrog", 5, "--qstar", "ffg",
            "--init", "encoder", "--max-steps", 1000, "--check-every", 50, "--samples", 10,
            "--final-samples", 500,
            "--localopt-block", a.n, "--format", "markdown")


if __name__ == "__main__":
    main()
