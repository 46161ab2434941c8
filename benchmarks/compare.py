"""minivae against PyTorch (eager) and JAX (jit) on the same machine, weights and data.

Workloads (the paper's MNIST model: latent 50, decoder 50-200-200-784, ELU, Bernoulli):
  train_epoch   one training epoch of the FFG VAE at batch 100 (benchmarks/train_epoch.py)
  ais_leapfrog  HMC on log p(z) + beta log p(x|z), rows = datapoints x chains; throughput in
                leapfrog gradient evaluations (one = decoder forward + backward over all rows)
  qstar_ffg     Adam steps on per-datapoint (mu, logvar), 100 datapoints x 100 samples

    python benchmarks/compare.py [--threads 1] [--batches N] [--sides minivae,torch,jax]

--threads 0 leaves every library's own thread defaults.

Every side of every workload runs in its own subprocess (thread settings and imports do not
leak), in turn, interleaved per workload. Their JSON lines are passed through; then one
summary line per workload: the throughputs, the ratios minivae / peer (>1: minivae faster),
this machine's float32 matmul peak (big np.matmul, measured in the same run), and whether the
sides agree on a value check at the shared initial weights (same model, same numbers).

`--side minivae --workloads b,c,m` runs minivae's side of (b), (c) and the matmul peak in this
process; it is what the driver calls.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

if __name__ == "__main__":
    common.early_threads()

import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402

SIDES = ("minivae", "torch", "jax")
PEERS = dict(torch=HERE / "peers" / "torch_peer.py", jax=HERE / "peers" / "jax_peer.py")
METRIC = dict(train_epoch="images_per_second", ais_leapfrog="grad_evals_per_second",
              qstar_ffg="steps_per_second")
CPU_SECONDS = dict(train_epoch="cpu_epoch_seconds", ais_leapfrog="cpu_seconds",
                   qstar_ffg="cpu_seconds")   # the same work on every side
CHECK_RTOL = 1e-3


# ---- minivae's side of (b), (c) and the matmul peak --------------------------------------------

def ais_library(params, cfg, x):
    """The library's AIS inner loop (minivae.hmc + minivae.ais.likelihood_target), or None
    where those are not there yet."""
    try:
        from minivae.ais import likelihood_target
        from minivae.hmc import hmc_transition
    except ImportError:
        return None
    target = likelihood_target(params, cfg, x)

    def transition(z, ll, gll, beta, step, p0, log_u, L):
        z, ll, gll, accepted, _ = hmc_transition(z, ll, gll, target, beta, step, p0, log_u, L)
        return z, ll, gll, accepted

    return target, transition


def ais_plain(params, cfg, x):
    """Plain NumPy HMC on model.log_joint: the fallback, and the baseline the library beats."""
    from minivae import model
    from minivae.densities import log_std_normal

    def target(z, need_value=True):
        # log_joint gives log p(z) + beta l(z) and its gradient; at beta = 1, l = that - log p(z)
        logp, g = model.log_joint(params, cfg, x, z, 1.0)
        return logp - log_std_normal(z), g + z

    def transition(z, ll, gll, beta, step, p0, log_u, L):
        s = step[:, None]                                  # (R, 1) per-row step sizes
        zn, pn = z, p0 + 0.5 * s * (beta * gll - z)
        for i in range(L):
            zn = zn + s * pn
            lln, glln = target(zn)
            pn = pn + (s if i < L - 1 else 0.5 * s) * (beta * glln - zn)
        h0 = -0.5 * (z * z).sum(-1) + beta * ll - 0.5 * (p0 * p0).sum(-1)
        h1 = -0.5 * (zn * zn).sum(-1) + beta * lln - 0.5 * (pn * pn).sum(-1)
        acc = log_u < h1 - h0
        a = acc[:, None]
        return np.where(a, zn, z), np.where(acc, lln, ll), np.where(a, glln, gll), acc

    return target, transition


def minivae_ais(weights, args):
    cfg = common.paper_config()
    x, z0 = common.ais_inputs(args.ais_data, args.ais_chains)
    R = len(x)
    beta, L = np.float32(common.AIS_BETA), common.AIS_LEAPFROG
    step = np.full(R, common.AIS_STEP, np.float32)       # per-row step sizes, as minivae.ais
    impls = [("minivae.hmc+ais.likelihood_target", ais_library(weights, cfg, x)),
             ("numpy+model.log_joint", ais_plain(weights, cfg, x))]
    for impl, fns in impls:
        if fns is None:
            common.skipped("ais_leapfrog", "minivae.hmc / minivae.ais not present", side="minivae",
                           impl=impl)
            continue
        target, transition = fns
        ll, gll = target(z0, need_value=True)
        logp0 = -0.5 * ((z0 * z0).sum(-1) + z0.shape[-1] * np.log(2 * np.pi)) + beta * ll
        check = dict(check_logp_mean=float(logp0.mean()),
                     check_grad_norm=float(np.linalg.norm((beta * gll - z0).astype(np.float64))))
        rng = np.random.default_rng(0)
        state = [z0, ll, gll]

        def run():
            for _ in range(args.ais_transitions):
                p0 = rng.standard_normal(z0.shape, dtype=np.float32)
                log_u = np.log(1 - rng.random(R, dtype=np.float32))
                state[0], state[1], state[2], _ = transition(*state, beta, step, p0, log_u, L)

        timing = common.time_repeats(run, args.repeats, warmup=1)
        common.emit_ais("minivae", timing, args, check, impl=impl, threads=args.threads)


def minivae_qstar(weights, args):
    from minivae.backend import normal
    from minivae.objectives import log_weights
    from minivae.optim import batched_adam_init, batched_adam_step
    from minivae.posteriors import get_family
    cfg = common.paper_config()
    family = get_family(cfg)
    x, eps_check = common.qstar_inputs(args.q_data, args.q_samples)
    N, S = x.shape[0], args.q_samples
    h0, _ = family.init_local(None, N, x.dtype, np)
    check = dict(check_bound=float(log_weights(weights, cfg, family, x, h0, eps_check)[0].mean()))

    # the inner loop of minivae.localopt.fit_local, without its convergence bookkeeping
    rng = np.random.default_rng(0)
    work = {"h": h0.copy()}
    adam = batched_adam_init(work, N)
    active = np.ones(N, dtype=bool)
    dlogw = np.full((N, S), 1.0 / S, dtype=x.dtype)

    def step():
        eps = normal(rng, (N, S, family.noise_dim), x)
        logw, back = log_weights({**weights, **work}, cfg, family, x, work["h"], eps)
        dh, _ = back(dlogw)
        batched_adam_step(work, {"h": dh}, adam, 1e-3, active)

    def run():
        for _ in range(args.q_steps):
            step()

    timing = common.time_repeats(run, args.repeats, warmup=1)
    common.emit_qstar("minivae", timing, args, check, impl="objectives.log_weights+batched_adam_step",
                      threads=args.threads)

    try:
        from minivae.localopt import fit_local
    except ImportError:
        return
    # the library's own loop: q_steps steps from the N(0, I) start, one convergence check at the end

    def run_fit():
        fit_local(weights, cfg, family, x, np.random.default_rng(0), max_steps=args.q_steps,
                  samples=S, lr=1e-3, check_every=args.q_steps, patience=10 ** 9)

    timing = common.time_repeats(run_fit, args.repeats, warmup=1)
    common.emit_qstar("minivae", timing, args, check, impl="localopt.fit_local", threads=args.threads)


def matmul_peak(weights=None, args=None, n=2048):
    """float32 GFLOP/s of one big np.matmul (best of 5): what this machine's BLAS can do."""
    a = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(2).standard_normal((n, n), dtype=np.float32)
    out = np.empty_like(a)
    timing = common.time_repeats(lambda: np.matmul(a, b, out=out), 5, warmup=2)
    common.emit_matmul("minivae", timing, n, impl="numpy", threads=getattr(args, "threads", None))


MINIVAE = dict(b=minivae_ais, c=minivae_qstar, m=matmul_peak)


# ---- the driver -------------------------------------------------------------------------------

def child(argv, log):
    """Run one side in a subprocess; pass its JSON lines through and return them parsed."""
    proc = subprocess.run([sys.executable] + [str(a) for a in argv], capture_output=True, text=True)
    lines = []
    for raw in proc.stdout.splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
        if log:
            print(raw, flush=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        common.emit(workload="error", argv=[str(a) for a in argv[:2]], rc=proc.returncode,
                    error=tail[0])
    return lines


def pick(lines, workload):
    """The line the summary uses: the first measured (not skipped) line of `workload`."""
    for line in lines:
        if line.get("workload") == workload and "skipped" not in line:
            return line
    return None


def agree(a, b):
    """Largest relative difference of the check_* values two sides share (None: nothing shared)."""
    keys = [k for k in a if k.startswith("check_") and k in b]
    if not keys:
        return None
    return max(abs(a[k] - b[k]) / max(abs(a[k]), abs(b[k]), 1e-12) for k in keys)


def summarize(workload, by_side, peak, threads):
    metric = METRIC[workload]
    mine = by_side.get("minivae")
    cpu = CPU_SECONDS[workload]
    out = dict(workload=f"compare/{workload}", metric=metric,
               ratio="throughput minivae / peer (>1: minivae faster); _cpu: from process CPU "
                     "seconds, robust to other load when --threads 1", threads=threads,
               matmul_peak_gflops=peak)
    for side in SIDES:
        line = by_side.get(side)
        out[side] = line[metric] if line else None
        if side != "minivae":
            both = bool(mine and line)
            out[f"minivae_over_{side}"] = mine[metric] / line[metric] if both else None
            out[f"minivae_over_{side}_cpu"] = line[cpu] / mine[cpu] if both else None
            out[f"check_rel_diff_{side}"] = agree(mine, line) if both else None
    if mine and "impl" in mine:
        out["minivae_impl"] = mine["impl"]
    diffs = [out[f"check_rel_diff_{s}"] for s in SIDES[1:] if out.get(f"check_rel_diff_{s}") is not None]
    out["same_numbers"] = all(d < CHECK_RTOL for d in diffs) if diffs else None
    common.emit(**out)
    return out


def drive(args):
    sides = args.sides.split(",")
    tmp = tempfile.mkdtemp(prefix="minivae-bench-")
    weights = os.path.join(tmp, "init.npz")
    common.save_weights(weights, common.init_weights(args.seed))
    shared = ["--weights", weights] + (["--threads", args.threads] if args.threads else [])  # 0: defaults
    sizes = ["--repeats", args.repeats, "--ais-data", args.ais_data, "--ais-chains", args.ais_chains,
             "--ais-transitions", args.ais_transitions, "--q-data", args.q_data,
             "--q-samples", args.q_samples, "--q-steps", args.q_steps]
    batches = ["--batches", args.batches] if args.batches else []
    me = Path(__file__).resolve()

    peak_line = pick(child([me, "--side", "minivae", "--workloads", "m"] + shared, args.verbose),
                     "matmul_peak")
    peak = peak_line["gflops"] if peak_line else None
    summaries = []
    for key in ("a", "b", "c"):
        workload = common.WORKLOAD_NAMES[key]
        by_side = {}
        for side in sides:
            if side == "minivae" and key == "a":
                argv = [HERE / "train_epoch.py", "--q", "ffg"] + shared + batches
            elif side == "minivae":
                argv = [me, "--side", "minivae", "--workloads", key] + shared + sizes
            else:
                argv = [PEERS[side], "--workloads", key] + shared + sizes + batches
            by_side[side] = pick(child(argv, args.verbose), workload)
        summaries.append(summarize(workload, by_side, peak, args.threads))
    return summaries


def main(argv=None):
    ap = common.peer_parser(__doc__)
    # one thread by default: spinning BLAS/OpenMP pools on a machine shared with other work
    # (or small GEMMs split over cores) make multi-threaded timings swing by 10x and more
    ap.set_defaults(threads=1)
    ap.add_argument("--side", default=None, choices=["minivae"],
                    help="run one side in this process (what the driver's subprocesses do)")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--seed", type=int, default=0, help="seed of the shared initial weights")
    ap.add_argument("--quiet", dest="verbose", action="store_false",
                    help="print only the summary lines")
    args = ap.parse_args(argv)
    if args.side == "minivae":
        weights = common.weights_arg(args.weights, args.seed)
        for w in args.workloads.split(","):
            MINIVAE[w](weights, args)
        return 0
    drive(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
