"""Shared helpers for the benchmark scripts: thread settings, timing, JSON lines, the paper's
MNIST model and the inputs every side (minivae, torch, jax) gets.

Import order matters: thread counts are read by BLAS, OpenMP and Numba when they load, so a
script calls `set_threads(n)` before it (or anything it imports) imports numpy.
"""
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The repository root goes first, ahead of benchmarks/ (a script's own sys.path[0]): a checkout
# without `pip install -e .` still finds minivae and kernels, and benchmarks/kernels.py does not
# shadow the kernels package.
if str(ROOT) in sys.path:
    sys.path.remove(str(ROOT))
sys.path.insert(0, str(ROOT))

from minivae.threads import THREAD_VARS  # noqa: E402  (imports nothing: numpy stays unloaded)

# The paper's MNIST model (Cremer et al. 2018, Table 5 row "2 hidden layers"): latent 50,
# encoder 784-200-200-2*50, decoder 50-200-200-784, ELU, Bernoulli likelihood.
LATENT, HIDDEN, DATA_DIM, BATCH = 50, 200, 784, 100


def set_threads(n):
    """Pin BLAS/OpenMP/Numba thread pools to n threads (None or 0: leave the defaults).
    Must run before numpy is imported to take effect."""
    if not n:
        return
    if "numpy" in sys.modules:
        raise RuntimeError("set_threads must run before numpy is imported")
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    # XLA's CPU client: one intra-op thread pool; only the single-thread case can be asked for
    if n == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()
    # Thread-count knobs are advice: recent XLA CPU runtimes keep a pool of their own and ran on
    # ~1.9 cores here with the flags above. Pinning the process to n CPUs makes "n threads" true
    # for every side, so wall time and CPU time measure the same thing.
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if n < len(cpus):
            os.sched_setaffinity(0, cpus[-n:])


def pinned_cpus():
    """The CPUs this process may run on (reported with each measurement)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def early_threads(argv=None):
    """`--threads N` read from argv before argparse (and numpy) run; applies set_threads."""
    argv = sys.argv[1:] if argv is None else argv
    n = None
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = int(argv[i + 1])
        elif a.startswith("--threads="):
            n = int(a.split("=", 1)[1])
    set_threads(n)
    return n


def emit(**fields):
    """One measurement as one JSON line on stdout, with the machine's 1-minute load average
    (other processes on the machine skew every number)."""
    fields.setdefault("loadavg", round(os.getloadavg()[0], 2))
    fields.setdefault("cpus", pinned_cpus())
    print(json.dumps(fields, default=_jsonable), flush=True)


def skipped(workload, reason, **fields):
    emit(workload=workload, skipped=reason, **fields)


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


class Timing:
    """Wall and process-CPU seconds of each timed repeat. CPU seconds count every thread of
    this process, so with --threads 1 they are the number to trust on a busy machine (wall
    time then includes the time other processes held the cores)."""

    def __init__(self, wall, cpu):
        self.wall, self.cpu = wall, cpu

    def scaled(self, factor):
        return Timing([t * factor for t in self.wall], [t * factor for t in self.cpu])

    def fields(self, name="seconds"):
        return {name: statistics.median(self.wall), f"{name}_all": self.wall,
                f"cpu_{name}": statistics.median(self.cpu)}


def time_repeats(fn, repeats, warmup=1, sync=None):
    """Timing of `repeats` calls of fn() after `warmup` untimed calls (JIT compiles, first-touch
    allocations and caches are paid there). `sync()` runs before each clock read so that
    asynchronous devices have finished."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return Timing(wall, cpu)


# ---- inputs shared by every side -------------------------------------------------------------

def paper_config(q="ffg", **kw):
    """minivae's Config for the benchmark model (imports minivae lazily)."""
    from minivae.model.config import Config
    return Config(q=q, latent=LATENT, enc_hidden=HIDDEN, enc_layers=2, dec_hidden=HIDDEN,
                  dec_layers=2, act="elu", batch=BATCH, objective="elbo", k=1,
                  schedule="plain", epochs=1, lr=1e-3, warmup_epochs=0, dtype="float32", **kw)


def init_weights(seed=0, q="ffg"):
    """minivae's initial parameters for the paper model: {key: float32 array}."""
    import numpy as np
    from minivae.model import model
    return model.init_params(paper_config(q), np.random.default_rng(seed))


def save_weights(path, params):
    import numpy as np
    np.savez(path, **params)


def load_weights(path):
    """{key: float32 array} from an .npz written by save_weights (keys: enc.fc0.W ...)."""
    import numpy as np
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def weights_arg(path, seed=0, q="ffg"):
    """The weights a peer runs with: the exported file, or minivae's init (family q) with this seed."""
    return load_weights(path) if path else init_weights(seed, q)


def mnist_train():
    """The 50000 embedded binarized MNIST training images, uint8 (N, 784)."""
    from minivae import data
    return data.load("mnist", "train")


def check_batch(seed=0):
    """A fixed batch and noise for cross-checking values: x (100, 784) f32, eps (100, 50) f32."""
    import numpy as np
    x = mnist_train()[:BATCH].astype(np.float32)
    eps = np.random.default_rng([seed, 1]).standard_normal((BATCH, LATENT), dtype=np.float32)
    return x, eps


def ais_inputs(n_data=10, chains=100, seed=0):
    """AIS rows = datapoints x chains: x (R, 784) f32 (each image repeated `chains` times) and
    the chains' start z (R, 50) f32 drawn from the prior."""
    import numpy as np
    x = np.repeat(mnist_train()[:n_data].astype(np.float32), chains, axis=0)
    z = np.random.default_rng([seed, 2]).standard_normal((n_data * chains, LATENT), dtype=np.float32)
    return x, z


def qstar_inputs(n_data=100, samples=100, seed=0):
    """q*_FFG inputs: x (N, 784) f32 and fixed check noise eps (N, S, 50) f32."""
    import numpy as np
    x = mnist_train()[:n_data].astype(np.float32)
    eps = np.random.default_rng([seed, 3]).standard_normal((n_data, samples, LATENT),
                                                          dtype=np.float32)
    return x, eps


def qstar_flow_inputs(n_data=100, samples=100, seed=0):
    """q*_Flow inputs: x (N, 784) f32, check noise eps (N, S, 2*50) f32 and the per-datapoint
    nets at their Glorot init (minivae's Flow.init_local): {key: (N, in, out) or (N, 1, out)}."""
    import numpy as np
    from minivae.model.flow import Flow
    x = mnist_train()[:n_data].astype(np.float32)
    eps = np.random.default_rng([seed, 4]).standard_normal((n_data, samples, 2 * LATENT),
                                                          dtype=np.float32)
    _, nets = Flow(LATENT).init_local(np.random.default_rng([seed, 5]), n_data, np.float32, np)
    return x, eps, nets


def check_batch_flow(seed=0):
    """check_batch with noise of the flow's size: x (100, 784), eps (100, 2*50) f32."""
    import numpy as np
    x = mnist_train()[:BATCH].astype(np.float32)
    eps = np.random.default_rng([seed, 1]).standard_normal((BATCH, 2 * LATENT), dtype=np.float32)
    return x, eps


def mlp_macs(sizes):
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


ENC_MACS = mlp_macs([DATA_DIM, HIDDEN, HIDDEN, 2 * LATENT])
DEC_MACS = mlp_macs([LATENT, HIDDEN, HIDDEN, DATA_DIM])
# FLOPs a workload needs (matrix products only, 2 per multiply-add): training = forward +
# weight gradients + input gradients except the encoder input's; HMC and q* = decoder forward +
# backward to z only (no weight gradients).
FLOP_PER_TRAIN_STEP = 2 * BATCH * (3 * (ENC_MACS + DEC_MACS) - DATA_DIM * HIDDEN)


def flop_per_decoder_grad(rows):
    return 2 * rows * 2 * DEC_MACS


# The flow (2 steps): q(v0|z0) and r(vT|zT) nets Z-100-100-2Z, four Z-100-100-Z nets per step.
# Each net needs forward + weight gradients + input gradients (3x its MACs) in training and q*.
FLOW_NET_MACS = 2 * mlp_macs([LATENT, 100, 100, 2 * LATENT]) + 8 * mlp_macs([LATENT, 100, 100, LATENT])
FLOP_PER_FLOW_TRAIN_STEP = FLOP_PER_TRAIN_STEP + 2 * BATCH * 3 * FLOW_NET_MACS


def flop_per_qstar_flow_step(rows):
    return flop_per_decoder_grad(rows) + 2 * rows * 3 * FLOW_NET_MACS


# HMC settings of the AIS workload (b): one transition = fresh momentum, L leapfrog steps,
# Metropolis accept. The gradient at the start point is carried from the last transition, so a
# transition costs exactly L gradient evaluations.
AIS_BETA, AIS_STEP, AIS_LEAPFROG = 0.5, 0.05, 10


# ---- the peers' command line and the JSON lines of workloads (b) and (c), shared by all sides --

def peer_parser(doc):
    import argparse
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help=".npz of minivae's initial weights "
                    "(default: minivae's init with seed 0)")
    ap.add_argument("--workloads", default="a,b,c", help="comma list of a (train_epoch), "
                    "b (ais_leapfrog), c (qstar_ffg), d (train_epoch_flow), e (qstar_flow), "
                    "m (matmul_peak)")
    ap.add_argument("--threads", type=int, default=None, help="BLAS/OpenMP threads")
    ap.add_argument("--epochs-timed", type=int, default=1)
    ap.add_argument("--batches", type=int, default=None, help="(a) time only this many batches")
    ap.add_argument("--repeats", type=int, default=3, help="(b, c) timed repeats; median reported")
    ap.add_argument("--ais-data", type=int, default=10)
    ap.add_argument("--ais-chains", type=int, default=100)
    ap.add_argument("--ais-transitions", type=int, default=5, help="(b) transitions per repeat")
    ap.add_argument("--q-data", type=int, default=100)
    ap.add_argument("--q-samples", type=int, default=100)
    ap.add_argument("--q-steps", type=int, default=5, help="(c) Adam steps per repeat")
    return ap


FLOW_WORKLOADS = ("d", "e")     # these run with the flow model's weights (q.* nets)
WORKLOAD_NAMES = dict(a="train_epoch", b="ais_leapfrog", c="qstar_ffg", d="train_epoch_flow",
                      e="qstar_flow", m="matmul_peak")


def peer_main(doc, side, workloads, load, argv=None):
    """A peer's main: parse peer_parser's options, `load(args)` its library (False where it is
    not installed: one skipped line per workload), then run each asked workload
    `workloads[key](weights, args)` with its family's weights."""
    args = peer_parser(doc).parse_args(argv)
    todo = args.workloads.split(",")
    if not load(args):
        for w in todo:
            skipped(WORKLOAD_NAMES[w], f"{side} not installed", side=side)
        return 0
    for w in todo:
        workloads[w](weights_arg(args.weights, q="flow" if w in FLOW_WORKLOADS else "ffg"), args)
    return 0


def emit_epoch(side, timing, n, n_full, workload="train_epoch", **fields):
    """The train_epoch line: `timing` of n batches per repeat, scaled to the n_full of an epoch."""
    t = timing.scaled(n_full / n)
    s = statistics.median(t.wall)
    emit(workload=workload, side=side, batch=BATCH, latent=LATENT, images=n_full * BATCH,
         batches_timed=n, extrapolated=n < n_full, **t.fields("epoch_seconds"),
         images_per_second=n_full * BATCH / s, steps_per_second=n_full / s, **fields)


def emit_ais(side, timing, args, check, **extra):
    rows = args.ais_data * args.ais_chains
    evals = args.ais_transitions * AIS_LEAPFROG
    s = statistics.median(timing.wall)
    emit(workload="ais_leapfrog", side=side, rows=rows, datapoints=args.ais_data,
         chains=args.ais_chains, leapfrog=AIS_LEAPFROG, transitions=args.ais_transitions,
         **timing.fields(), grad_evals_per_second=evals / s, row_grads_per_second=evals * rows / s,
         **check, **extra)


def emit_qstar(side, timing, args, check, workload="qstar_ffg", **extra):
    s = statistics.median(timing.wall)
    emit(workload=workload, side=side, datapoints=args.q_data, samples=args.q_samples,
         steps=args.q_steps, **timing.fields(), steps_per_second=args.q_steps / s, **check, **extra)


def emit_matmul(side, timing, n, **extra):
    """Best of the repeats: the peak is what the BLAS can do, not what the machine let it do."""
    s, c = min(timing.wall), min(timing.cpu)
    emit(workload="matmul_peak", side=side, n=n, dtype="float32", seconds=s, cpu_seconds=c,
         gflops=2 * n ** 3 / s / 1e9, gflops_cpu=2 * n ** 3 / c / 1e9, **extra)
