"""minivae against PyTorch (eager) and JAX (jit) on the same machine, weights and data.

Workloads (the paper's MNIST model: latent 50, decoder 50-200-200-784, ELU, Bernoulli):
  train_epoch   one training epoch of the FFG VAE at batch 100 (benchmarks/train_epoch.py)
  ais_leapfrog  HMC on log p(z) + beta log p(x|z), rows = datapoints x chains; throughput in
                leapfrog gradient evaluations (one = decoder forward + backward over all rows)
  qstar_ffg     Adam steps on per-datapoint (mu, logvar), 100 datapoints x 100 samples
  train_epoch_flow, qstar_flow   the same two with the paper's flow q (2 steps; for q* every
                net per datapoint): workloads d and e, not run by default (--workloads a,b,c,d,e)

    python benchmarks/compare.py [--threads 1] [--batches N] [--sides minivae,torch,jax]

--threads 0 leaves every library's own thread defaults.

Every side of every workload runs in its own subprocess (thread settings and imports do not
leak), in turn, interleaved per workload. Their JSON lines are passed through; then one
summary line per workload: the throughputs, the ratios minivae / peer (>1: minivae faster),
this machine's float32 matmul peak (big np.matmul, measured in the same run), and whether the
sides agree on a value check at the shared initial weights (same model, same numbers).
minivae measures the library as shipped first (train.training_step, localopt.fit_local, the
AIS loop), then its other paths (the bare fused step, the NumPy reference); the summary uses
the first and lists all under `minivae_impls`.

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
              qstar_ffg="steps_per_second", train_epoch_flow="images_per_second",
              qstar_flow="steps_per_second")
CPU_SECONDS = dict(train_epoch="cpu_epoch_seconds", ais_leapfrog="cpu_seconds",
                   qstar_ffg="cpu_seconds", train_epoch_flow="cpu_epoch_seconds",
                   qstar_flow="cpu_seconds")   # the same work on every side
CHECK_RTOL = 1e-3


# ---- minivae's side of (b), (c) and the matmul peak --------------------------------------------

def ais_library(params, cfg, x, chains, impl):
    """The library's AIS inner loop: minivae.estimators.hmc.hmc_transition on minivae.estimators.ais.likelihood_target
    (x once per datapoint, rows datapoint-major). impl="auto": the fused kernels with
    preallocated buffers (state updated in place); "ref": the NumPy reference. None where the
    checkout lacks them (or the fused form, for "auto")."""
    try:
        from minivae.estimators import ais, hmc
        target = ais.likelihood_target(params, cfg, np.ascontiguousarray(x[::chains]), chains, impl)
    except (ImportError, TypeError):
        return None
    if impl == "auto" and target.fused is None:
        return None

    def transition(z, ll, gll, beta, step, p0, log_u, L):
        z, ll, gll, accepted, _, _ = hmc.hmc_transition(z, ll, gll, target, beta, step, p0, log_u, L,
                                                        impl=impl)
        return z, ll, gll, accepted

    def start(z, beta):
        return target.fused.start(z, beta) if impl == "auto" else target(z, need_value=True)

    return start, transition


def ais_plain(params, cfg, x):
    """Plain NumPy HMC on model.log_joint: the fallback, and the baseline the library beats."""
    from minivae.model import model
    from minivae.model.densities import log_std_normal

    def start(z, beta):
        return target(z)

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

    return start, transition


def minivae_ais(weights, args):
    """One line per implementation, fastest expected first (the summary takes the first)."""
    cfg = common.paper_config()
    x, z0 = common.ais_inputs(args.ais_data, args.ais_chains)
    R = len(x)
    beta, L = np.float32(common.AIS_BETA), common.AIS_LEAPFROG
    log2pi = z0.shape[-1] * np.log(2 * np.pi)
    impls = [("minivae.estimators.hmc fused: fastpath.Decoder+leapfrog+hmc_accept",
              ais_library(weights, cfg, x, args.ais_chains, "auto")),
             ("minivae.estimators.hmc reference: numpy ais.likelihood_target",
              ais_library(weights, cfg, x, args.ais_chains, "ref")),
             ("numpy+model.log_joint", ais_plain(weights, cfg, x))]
    for impl, fns in impls:
        if fns is None:
            common.skipped("ais_leapfrog", "not present in this checkout", side="minivae", impl=impl)
            continue
        rng = np.random.default_rng(0)
        step = np.full(R, common.AIS_STEP, np.float32)   # per-row step sizes, as minivae.estimators.ais
        start, transition = fns
        ll, gll = start(z0.copy(), beta)
        logp0 = -0.5 * ((z0 * z0).sum(-1) + log2pi) + beta * ll
        check = dict(check_logp_mean=float(logp0.mean()),
                     check_grad_norm=float(np.linalg.norm((beta * gll - z0).astype(np.float64))))
        state = [z0.copy(), ll, gll]

        def run():
            for _ in range(args.ais_transitions):
                p0 = rng.standard_normal(z0.shape, dtype=np.float32)
                log_u = np.log(1 - rng.random(R, dtype=np.float32))
                state[0], state[1], state[2], _ = transition(*state, beta, step, p0, log_u, L)

        try:
            timing = common.time_repeats(run, args.repeats, warmup=1)
        except Exception as e:   # in-progress kernels/: report, carry on with the other paths
            common.skipped("ais_leapfrog", f"{type(e).__name__}: {e}", side="minivae", impl=impl)
            continue
        common.emit_ais("minivae", timing, args, check, impl=impl, threads=args.threads)


def minivae_qstar(weights, args):
    """One line per implementation, the library as shipped first (the summary takes the first):
      localopt.fit_local              the library's q* loop (for this model: fastpath.QStarFFG
                                      and the adam_rows kernel), with its stopping-rule
                                      bookkeeping and one convergence check at the end
      fastpath.QStarFFG+batched_adam_step               that loop's step alone
      objectives.log_weights+batched_adam_step [ref]    the NumPy reference step
    Each step line carries grad_check_rel: its d ELBO / d h against the reference's."""
    from minivae.model import fastpath
    from minivae.backend import normal
    from minivae.estimators.localopt import fit_local
    from minivae.model.objectives import log_weights
    from minivae.model.optim import batched_adam_init, batched_adam_step
    from minivae.model.posteriors import get_family
    cfg = common.paper_config()
    family = get_family(cfg)
    x, eps_check = common.qstar_inputs(args.q_data, args.q_samples)
    N, S = x.shape[0], args.q_samples
    h0, _ = family.init_local(None, N, x.dtype, np)
    check = dict(check_bound=float(log_weights(weights, cfg, family, x, h0, eps_check)[0].mean()))
    dlogw = np.full((N, S), 1.0 / S, dtype=x.dtype)

    def reference_grad(h, eps):
        logw, back = log_weights(weights, cfg, family, x, h, eps, decoder_grads=False)
        return back(dlogw)[0]

    def fast_grad(h, eps, step=fastpath.QStarFFG(weights, N, S)):
        return step(weights, x, h, eps)[0]

    def run_fit():
        fit_local(weights, cfg, family, x, np.random.default_rng(0), max_steps=args.q_steps,
                  samples=S, lr=1e-3, check_every=args.q_steps, patience=10 ** 9)

    timing = common.time_repeats(run_fit, args.repeats, warmup=1)
    common.emit_qstar("minivae", timing, args, check, impl="localopt.fit_local", threads=args.threads)
    for impl, grad, adam_impl in (("fastpath.QStarFFG+batched_adam_step", fast_grad, "auto"),
                                  ("objectives.log_weights+batched_adam_step [ref]",
                                   reference_grad, "ref")):
        # the inner loop of minivae.estimators.localopt.fit_local, without its convergence bookkeeping
        rng = np.random.default_rng(0)
        h = h0.copy()
        state = batched_adam_init({"h": h}, N)
        active = np.ones(N, dtype=bool)

        def run():
            for _ in range(args.q_steps):
                g = grad(h, normal(rng, (N, S, family.noise_dim), x))
                batched_adam_step({"h": h}, {"h": g}, state, 1e-3, active, impl=adam_impl)

        timing = common.time_repeats(run, args.repeats, warmup=1)
        common.emit_qstar("minivae", timing, args, check, impl=impl, threads=args.threads,
                          grad_check_rel=grad_agreement(grad, reference_grad, h0, eps_check))


def minivae_qstar_flow(weights, args):
    """q*_Flow: first fit_local's step loop as shipped (fused_flow.QStarFlow and the adam_rows
    kernel) from the shared initial nets, as the peers time it; then localopt.fit_local itself
    (which also draws every datapoint's initial nets: a fixed cost, large against a few steps)
    and with impl="ref" (objectives.log_weights, NumPy Adam). The value check: the mean ELBO
    and the norm of its gradient over h and every net, at h = 0, the shared initial nets and
    the fixed check noise (the peers compute the same two numbers)."""
    from minivae.backend import normal
    from minivae.estimators import localopt
    from minivae.estimators.localopt import fit_local
    from minivae.model.objectives import log_weights
    from minivae.model.optim import batched_adam_init, batched_adam_step
    from minivae.model.posteriors import get_family
    cfg = common.paper_config("flow")
    family = get_family(cfg)
    dec = {k: v for k, v in weights.items() if k.startswith("dec.")}
    x, eps, nets = common.qstar_flow_inputs(args.q_data, args.q_samples)
    N, S = x.shape[0], args.q_samples
    local = {"h": np.zeros((N, 2 * common.LATENT), np.float32), **nets}
    logw, back = log_weights({**dec, **local}, cfg, family, x, local["h"], eps, decoder_grads=False)
    dh, g = back(np.full(logw.shape, 1.0 / S, np.float32))
    norm = np.sqrt(sum((a.astype(np.float64) ** 2).sum() for a in [dh] + [g[k] for k in nets]))
    check = dict(check_bound=float(logw.mean(1).mean()), check_grad_norm=float(norm))
    # fit_local's inner loop (noise, gradient, Adam), from the shared initial nets
    step = localopt._fast_gradient(dec, cfg, family, x, S)
    rng = np.random.default_rng(0)
    work = {k: v.copy() for k, v in local.items()}
    state, active = batched_adam_init(work, N), np.ones(N, dtype=bool)

    def run_steps():
        for _ in range(args.q_steps):
            grads, _ = step(work, x, normal(rng, (N, S, family.noise_dim), x))
            batched_adam_step(work, grads, state, 1e-3, active)

    timing = common.time_repeats(run_steps, args.repeats, warmup=1)
    common.emit_qstar("minivae", timing, args, check, workload="qstar_flow", threads=args.threads,
                      impl=f"{type(step).__module__}.{type(step).__name__}+batched_adam_step")
    for impl in ("auto", "ref"):       # the library's loop with its set-up (per-row inits) and checks
        def run():
            fit_local(dec, cfg, family, x, np.random.default_rng(0), max_steps=args.q_steps,
                      samples=S, lr=1e-3, check_every=args.q_steps, patience=10 ** 9, impl=impl)
        timing = common.time_repeats(run, args.repeats, warmup=1)
        common.emit_qstar("minivae", timing, args, check, workload="qstar_flow", threads=args.threads,
                          impl="localopt.fit_local" + ("[ref]" if impl == "ref" else ""))


def grad_agreement(grad, reference, h, eps):
    """Relative difference of an implementation's d ELBO / d h from the library's, at (h, eps)."""
    a, b = grad(h, eps).astype(np.float64), reference(h, eps).astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def matmul_peak(weights=None, args=None, n=2048):
    """float32 GFLOP/s of one big np.matmul (best of 5): what this machine's BLAS can do."""
    a = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(2).standard_normal((n, n), dtype=np.float32)
    out = np.empty_like(a)
    timing = common.time_repeats(lambda: np.matmul(a, b, out=out), 5, warmup=2)
    common.emit_matmul("minivae", timing, n, impl="numpy", threads=getattr(args, "threads", None))


MINIVAE = dict(b=minivae_ais, c=minivae_qstar, e=minivae_qstar_flow, m=matmul_peak)


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


def measured(lines, workload):
    """The measured (not skipped) lines of `workload`, in the order they were printed."""
    return [l for l in lines if l.get("workload") == workload and "skipped" not in l]


def pick(lines, workload):
    """The line the summary uses: the first measured line (a side prints its fastest path first)."""
    found = measured(lines, workload)
    return found[0] if found else None


def agree(a, b):
    """Largest relative difference of the check_* values two sides share (None: nothing shared)."""
    keys = [k for k in a if k.startswith("check_") and k in b]
    if not keys:
        return None
    return max(abs(a[k] - b[k]) / max(abs(a[k]), abs(b[k]), 1e-12) for k in keys)


def flops(workload, line):
    """FLOPs the work of one line needs (common.FLOP_*), to set against the matmul peak."""
    if workload == "train_epoch":
        return common.FLOP_PER_TRAIN_STEP * line["images"] / line["batch"]
    if workload == "train_epoch_flow":
        return common.FLOP_PER_FLOW_TRAIN_STEP * line["images"] / line["batch"]
    if workload == "ais_leapfrog":
        return common.flop_per_decoder_grad(line["rows"]) * line["transitions"] * line["leapfrog"]
    if workload == "qstar_flow":
        return common.flop_per_qstar_flow_step(line["datapoints"] * line["samples"]) * line["steps"]
    return common.flop_per_decoder_grad(line["datapoints"] * line["samples"]) * line["steps"]


def summarize(workload, lines_by_side, peak, threads):
    metric = METRIC[workload]
    by_side = {side: (lines[0] if lines else None) for side, lines in lines_by_side.items()}
    mine = by_side.get("minivae")
    cpu = CPU_SECONDS[workload]
    out = dict(workload=f"compare/{workload}", metric=metric,
               ratio="throughput minivae / peer (>1: minivae faster); _cpu: from process CPU "
                     "seconds, robust to other load when --threads 1", threads=threads,
               matmul_peak_gflops=peak and peak["gflops"],
               matmul_peak_gflops_cpu=peak and peak["gflops_cpu"])
    for side in SIDES:
        line = by_side.get(side)
        out[side] = line[metric] if line else None
        # useful matrix-product FLOP rate per CPU second: how near each side is to the BLAS peak
        out[f"{side}_gflops_cpu"] = flops(workload, line) / line[cpu] / 1e9 if line else None
        if side != "minivae":
            both = bool(mine and line)
            out[f"minivae_over_{side}"] = mine[metric] / line[metric] if both else None
            out[f"minivae_over_{side}_cpu"] = line[cpu] / mine[cpu] if both else None
            out[f"check_rel_diff_{side}"] = agree(mine, line) if both else None
    if mine and "impl" in mine:
        out["minivae_impl"] = mine["impl"]
        out["minivae_impls"] = {l["impl"]: l[metric] for l in lines_by_side["minivae"]}
    diffs = [out[f"check_rel_diff_{s}"] for s in SIDES[1:] if out.get(f"check_rel_diff_{s}") is not None]
    out["same_numbers"] = all(d < CHECK_RTOL for d in diffs) if diffs else None
    common.emit(**out)
    return out


def drive(args):
    with tempfile.TemporaryDirectory(prefix="minivae-bench-") as tmp:
        return drive_in(args, os.path.join(tmp, "init.npz"))


def drive_in(args, weights):
    sides = args.sides.split(",")
    flow_weights = weights.replace(".npz", "-flow.npz")
    common.save_weights(weights, common.init_weights(args.seed))
    common.save_weights(flow_weights, common.init_weights(args.seed, "flow"))
    threads = ["--threads", args.threads] if args.threads else []        # 0: defaults
    shared = ["--weights", weights] + threads
    sizes = ["--repeats", args.repeats, "--ais-data", args.ais_data, "--ais-chains", args.ais_chains,
             "--ais-transitions", args.ais_transitions, "--q-data", args.q_data,
             "--q-samples", args.q_samples, "--q-steps", args.q_steps]
    batches = ["--batches", args.batches] if args.batches else []
    me = Path(__file__).resolve()

    peak_line = pick(child([me, "--side", "minivae", "--workloads", "m"] + threads, args.verbose),
                     "matmul_peak")
    peak = peak_line
    summaries = []
    for key in args.workloads.split(","):        # the peers skip what they lack
        workload = common.WORKLOAD_NAMES[key]
        shared = ["--weights", flow_weights if key in common.FLOW_WORKLOADS else weights] + threads
        lines_by_side = {}
        for side in sides:
            if side == "minivae" and key in ("a", "d"):   # the library as shipped, then the reference
                q = "ffg" if key == "a" else "flow"
                runs = [[HERE / "train_epoch.py", "--q", q, "--impl", impl] + shared + batches
                        for impl in ("auto", "ref")]
            elif side == "minivae":
                runs = [[me, "--side", "minivae", "--workloads", key] + shared + sizes]
            else:
                runs = [[PEERS[side], "--workloads", key] + shared + sizes + batches]
            lines_by_side[side] = [line for argv in runs
                                   for line in measured(child(argv, args.verbose), workload)]
        summaries.append(summarize(workload, lines_by_side, peak, args.threads))
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
