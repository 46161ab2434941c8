"""AIS speed: HMC leapfrog gradient evaluations per second on the paper's decoder.

Decoder 50-200-200-784, ELU, Bernoulli (minivae's initial weights), N datapoints x 100 chains as
one matrix of rows, float32. One JSON line per measurement, each with wall and process-CPU
seconds (with --threads 1 the CPU numbers are the ones to trust on a busy machine):
  matmul_peak   this machine's float32 matmul rate (one big square np.matmul, best of 5)
  ais_leapfrog  hmc.hmc_transition alone (L = 10, beta 0.5, step 0.05: benchmarks/peers'
                workload), impl "auto" (the fused kernels) and "ref" (the NumPy reference):
                gradient evaluations per second (one = all rows) and GFLOP/s
  ais_forward   ais.forward end to end (noise draws, weight updates, adaptation included)
  ais_profile   where one gradient evaluation's CPU time goes: the six matrix products alone
                (into buffers), the whole gradient (fused fastpath.Decoder, or the NumPy target),
                and per gradient the rest of a transition (leapfrog updates, accept, adaptation)
GFLOP/s counts what runs: 2 * rows * (50*200 + 200*200 + 200*784) for the forward and the same
again for the backward to z (AIS needs no weight gradients); `gflops_cpu` per CPU second.

    python benchmarks/ais.py [--n 10] [--chains 100] [--transitions 5] [--threads 1] [--device cpu|gpu]
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets sys.path and thread counts before numpy loads)

common.early_threads()

import numpy as np  # noqa: E402

from minivae.estimators import ais, hmc  # noqa: E402
from minivae.backend import device_xp  # noqa: E402

FLOP = common.flop_per_decoder_grad(1)      # one row's forward + backward to z


def sync_for(xp):
    if xp is np:
        return None
    return lambda: xp.cuda.Device().synchronize()


def rates(timing, evals, rows):
    """Gradient evaluations/s and GFLOP/s from wall and from CPU seconds."""
    wall, cpu = statistics.median(timing.wall), statistics.median(timing.cpu)
    return dict(grad_evals_per_second=evals / wall, row_grads_per_second=evals * rows / wall,
                gflops=evals * rows * FLOP / wall / 1e9, gflops_cpu=evals * rows * FLOP / cpu / 1e9,
                **timing.fields())


def matmul_peak(xp, n, repeats):
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    b, out = a.T.copy(), xp.empty_like(a)
    timing = common.time_repeats(lambda: xp.matmul(a, b, out=out), max(repeats, 5), 2, sync_for(xp))
    common.emit_matmul("minivae", timing, n, impl="numpy" if xp is np else "cupy")


def setup(xp, cfg, params, n_data, chains, impl):
    x_rows, z = common.ais_inputs(n_data, chains)
    x = xp.asarray(np.ascontiguousarray(x_rows[::chains]))          # (N, D): once per datapoint
    target = ais.likelihood_target(params, cfg, x, chains, impl)
    return target, xp.asarray(z)


def leapfrog(xp, params, cfg, n_data, chains, transitions, repeats, impl):
    target, z = setup(xp, cfg, params, n_data, chains, impl)
    R, beta, L = len(z), np.float32(common.AIS_BETA), common.AIS_LEAPFROG
    ll, gll = target.fused.start(z, beta) if hmc.fused_of(target, impl) else target(z)
    rng = np.random.default_rng(1)
    noise = [(xp.asarray(rng.standard_normal(z.shape, dtype=np.float32)),
              xp.asarray(np.log1p(-rng.random(R, dtype=np.float32)))) for _ in range(transitions)]
    step = xp.full(R, common.AIS_STEP, np.float32)
    state = [z, ll, gll]

    def run():
        for p0, log_u in noise:
            state[:] = hmc.hmc_transition(*state, target, beta, step, p0, log_u, L, impl=impl)[:3]

    timing = common.time_repeats(run, repeats, 1, sync_for(xp))
    common.emit(workload="ais_leapfrog", impl=impl, fused=hmc.fused_of(target, impl) is not None, rows=R,
                datapoints=n_data, chains=chains, leapfrog=L, transitions=transitions,
                **rates(timing, L * transitions, R))
    return timing


def forward(xp, params, cfg, n_data, chains, transitions, repeats, impl):
    x = xp.asarray(common.mnist_train()[:n_data].astype(np.float32))
    s = ais.Settings(chains=chains, steps=transitions + 1, leapfrog=common.AIS_LEAPFROG)
    timing = common.time_repeats(lambda: ais.forward(params, cfg, x, range(n_data), 0, s, impl=impl),
                                 repeats, 1, sync_for(xp))
    common.emit(workload="ais_forward", impl=impl, rows=n_data * chains, datapoints=n_data, chains=chains,
                transitions=transitions, **rates(timing, common.AIS_LEAPFROG * transitions, n_data * chains))


def profile(xp, params, cfg, n_data, chains, repeats, impl, transition_timing, transitions):
    """CPU milliseconds of one gradient evaluation, split into matrix products and the rest."""
    target, z = setup(xp, cfg, params, n_data, chains, impl)
    R, beta, calls = len(z), np.float32(common.AIS_BETA), 10
    W = [params[f"dec.fc{i}.W"] for i in range(3)]
    h0, h1 = xp.empty((R, common.HIDDEN), np.float32), xp.empty((R, common.HIDDEN), np.float32)
    out, gz = xp.empty((R, common.DATA_DIM), np.float32), xp.empty_like(z)

    def matmuls():                                          # the six products, nothing else
        xp.matmul(z, W[0], out=h0)
        xp.matmul(h0, W[1], out=h1)
        xp.matmul(h1, W[2], out=out)
        xp.matmul(out, W[2].T, out=h1)
        xp.matmul(h1, W[1].T, out=h0)
        xp.matmul(h0, W[0].T, out=gz)

    fused = hmc.fused_of(target, impl)
    grad = (lambda: fused.grad_log_f(z, beta, False)) if fused else (lambda: target(z, need_value=False))

    def ms(fn):
        def many():
            for _ in range(calls):
                fn()
        t = common.time_repeats(many, repeats, 1, sync_for(xp))
        return min(t.cpu) / calls * 1e3

    mm, g = ms(matmuls), ms(grad)
    per_grad = min(transition_timing.cpu) / (transitions * common.AIS_LEAPFROG) * 1e3
    common.emit(workload="ais_profile", impl=impl, fused=fused is not None, rows=R,
                cpu_ms_matmuls=mm, cpu_ms_gradient=g, cpu_ms_elementwise=g - mm,
                cpu_ms_per_gradient_in_transition=per_grad, cpu_ms_transition_rest=per_grad - g,
                matmul_share=mm / per_grad, matmul_gflops_cpu=R * FLOP / mm / 1e6,
                gradient_gflops_cpu=R * FLOP / per_grad / 1e6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="10", help="datapoints per block, a comma list (rows = n x chains)")
    ap.add_argument("--chains", type=int, default=100)
    ap.add_argument("--transitions", type=int, default=5, help="HMC transitions per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--matmul", type=int, default=2048, help="side of the peak-rate matmul")
    ap.add_argument("--impl", default="auto,ref", help="comma list of auto (fused kernels), ref (NumPy)")
    ap.add_argument("--only", default="leapfrog,forward,profile", help="comma list of workloads")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="BLAS/OpenMP/Numba threads (set before numpy loads)")
    args = ap.parse_args()
    xp = device_xp(args.device)
    cfg = common.paper_config()
    params = {k: xp.asarray(v) for k, v in common.init_weights().items()}
    only = args.only.split(",")
    matmul_peak(xp, args.matmul, args.repeats)
    for n in (int(v) for v in args.n.split(",")):
        for impl in args.impl.split(","):
            t = leapfrog(xp, params, cfg, n, args.chains, args.transitions, args.repeats, impl)
            if "forward" in only:
                forward(xp, params, cfg, n, args.chains, args.transitions, args.repeats, impl)
            if "profile" in only:
                profile(xp, params, cfg, n, args.chains, args.repeats, impl, t, args.transitions)


if __name__ == "__main__":
    main()
