"""AIS speed: HMC leapfrog gradient evaluations per second on the paper's decoder.

Decoder 50-200-200-784, ELU, Bernoulli (random weights), 100 chains x N datapoints as one
matrix of rows, float32. One JSON line per measurement:
  matmul_peak   this machine's float32 matmul rate (one big square np.matmul), the ceiling
  ais_leapfrog  hmc.hmc_transition alone (L = 10): row gradients per second and GFLOP/s
  ais_forward   ais.forward end to end (noise draws, weight updates, adaptation included)
GFLOP/s counts what runs: 2 * rows * (50*200 + 200*200 + 200*784) for the forward and the same
again for the backward to z (AIS needs no weight gradients); `gflops_3x` uses the common
"backward = 2 x forward" convention instead.

    python benchmarks/ais.py [--n 10] [--chains 100] [--transitions 5] [--device cpu|gpu] [--threads N]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets sys.path and thread counts before numpy loads)

common.early_threads()

import numpy as np  # noqa: E402

from minivae import ais, hmc  # noqa: E402
from minivae.backend import device_xp  # noqa: E402

MACS = common.LATENT * common.HIDDEN + common.HIDDEN * common.HIDDEN + common.HIDDEN * common.DATA_DIM


def sync_for(xp):
    if xp is np:
        return lambda: None
    return lambda: xp.cuda.Device().synchronize()


def timed(fn, repeats, warmup, sync):
    """Wall seconds of each of `repeats` calls after `warmup` untimed ones, the device synced."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def fields(times):
    return dict(seconds=statistics.median(times), seconds_all=times)


def matmul_peak(xp, n, repeats):
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    b = a.T.copy()
    times = timed(lambda: a @ b, repeats, 2, sync_for(xp))
    s = min(times)
    common.emit(workload="matmul_peak", n=n, dtype="float32", gflops=2 * n ** 3 / s / 1e9,
                **fields(times))


def leapfrog(xp, params, cfg, n_data, chains, transitions, repeats):
    x, z = (xp.asarray(a) for a in common.ais_inputs(n_data, chains))
    R = len(z)
    target = ais.likelihood_target(params, cfg, x)
    ll, gll = target(z)
    rng = np.random.default_rng(1)
    noise = [(xp.asarray(rng.standard_normal(z.shape, dtype=np.float32)),
              xp.asarray(np.log1p(-rng.random(R, dtype=np.float32)))) for _ in range(transitions)]
    step = xp.full(R, common.AIS_STEP, np.float32)
    beta = np.float32(common.AIS_BETA)
    state = [z, ll, gll]

    def run():
        for p0, log_u in noise:
            z, ll, gll, acc, _ = hmc.hmc_transition(*state, target, beta, step, p0, log_u, common.AIS_LEAPFROG)
            state[:] = [z, ll, gll]

    times = timed(run, repeats, 1, sync_for(xp))
    s = statistics.median(times)
    grads = R * common.AIS_LEAPFROG * transitions / s
    common.emit(workload="ais_leapfrog", rows=R, datapoints=n_data, chains=chains, leapfrog=common.AIS_LEAPFROG,
                transitions=transitions, row_grads_per_second=grads,
                gflops=grads * 4 * MACS / 1e9, gflops_3x=grads * 6 * MACS / 1e9, **fields(times))


def forward(xp, params, cfg, n_data, chains, transitions, repeats):
    x = xp.asarray(common.mnist_train()[:n_data].astype(np.float32))
    s = ais.Settings(chains=chains, steps=transitions + 1, leapfrog=common.AIS_LEAPFROG)
    times = timed(lambda: ais.forward(params, cfg, x, range(n_data), 0, s), repeats, 1, sync_for(xp))
    t = statistics.median(times)
    grads = n_data * chains * common.AIS_LEAPFROG * transitions / t
    common.emit(workload="ais_forward", rows=n_data * chains, datapoints=n_data, chains=chains,
                transitions=transitions, row_grads_per_second=grads, gflops=grads * 4 * MACS / 1e9,
                **fields(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="10", help="datapoints per block, a comma list (rows = n x chains)")
    ap.add_argument("--chains", type=int, default=100)
    ap.add_argument("--transitions", type=int, default=5, help="HMC transitions per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--matmul", type=int, default=2048, help="side of the peak-rate matmul")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (read before numpy loads)")
    args = ap.parse_args()
    xp = device_xp(args.device)
    cfg = common.paper_config()
    params = {k: xp.asarray(v) for k, v in common.init_weights().items()}
    matmul_peak(xp, args.matmul, args.repeats)
    for n in (int(v) for v in args.n.split(",")):
        leapfrog(xp, params, cfg, n, args.chains, args.transitions, args.repeats)
        forward(xp, params, cfg, n, args.chains, args.transitions, args.repeats)


if __name__ == "__main__":
    main()
