"""The fused kernels against their NumPy references, and the HMC decoder gradient with and
without them.

One JSON line per measurement (benchmarks/common.py's `emit`, with the load average):
  kernel         each kernel at AIS sizes (rows = datapoints x chains): seconds per call
                 (median; best too), GB/s of the bytes it must move, speedup over `name_ref`
  decoder_grad   one gradient of log p(z) + beta log p(x|z) wrt z through 50-200-200-784:
                 numpy      minivae.model.model.log_joint (the library path, allocating)
                 ais_numpy  minivae.estimators.ais.likelihood_target (the reference AIS target)
                 ref        minivae.model.fastpath.Decoder with buffers and the kernels' NumPy references
                 fused      minivae.model.fastpath.Decoder with the Numba (or CUDA) kernels
  decoder_part   where the fused gradient's time goes: each matmul and each kernel alone

    python benchmarks/kernels.py [--rows 1000] [--chains 10] [--dtype float32] [--device cpu|gpu]
        [--blas-threads N] [--numba-threads N] [--layer workqueue|omp] [--only kernels,decoder,parts]
    python benchmarks/kernels.py --sweep     # decoder_grad under each thread setting, one process each

Thread settings must be fixed before numpy and numba load, hence the flags (and --sweep's
subprocesses) instead of a call.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def early_env(argv):
    """Apply --blas-threads / --numba-threads / --layer to the environment before numpy loads."""
    names = {"--blas-threads": ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"),
             "--numba-threads": ("NUMBA_NUM_THREADS",), "--layer": ("NUMBA_THREADING_LAYER",)}
    for i, a in enumerate(argv):
        key, _, val = a.partition("=")
        if key in names:
            val = val or argv[i + 1]
            for var in names[key]:
                os.environ[var] = val


early_env(sys.argv[1:])

import numpy as np  # noqa: E402

from kernels import adam, ais_weights, bernoulli, elu, leapfrog  # noqa: E402
from minivae.estimators import ais  # noqa: E402
from minivae.model import fastpath, model  # noqa: E402
from minivae.backend import device_xp  # noqa: E402

hmc_accept_mod = sys.modules["kernels.hmc_accept"]


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1000, help="datapoints x chains")
    ap.add_argument("--chains", type=int, default=10)
    ap.add_argument("--adam-params", type=int, default=100, help="P of the (rows, P) Adam block")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20, help="calls per timed repeat")
    ap.add_argument("--only", default="kernels,decoder,parts",
                    help="comma list of kernels, decoder (decoder_grad lines), parts (decoder_part lines)")
    ap.add_argument("--blas-threads", default=None)
    ap.add_argument("--numba-threads", default=None)
    ap.add_argument("--layer", default=None, help="numba threading layer (default: kernels' choice)")
    ap.add_argument("--sweep", action="store_true", help="decoder_grad under several thread settings")
    return ap.parse_args(argv)


def settings():
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        layer = numba.config.THREADING_LAYER
    return dict(numba_threads=numba.get_num_threads(), layer=layer,
                blas_threads=os.environ.get("OPENBLAS_NUM_THREADS", "default"))


def timer(xp, calls, repeats):
    sync = (lambda: None) if xp is np else (lambda: xp.cuda.Device().synchronize())

    def run(fn):
        """Seconds per call: the median and the best over the repeats, and the median
        process-CPU seconds (all threads: above the wall time when threads spin)."""
        def many():
            for _ in range(calls):
                fn()
        t = common.time_repeats(many, repeats, warmup=1, sync=sync)
        wall, cpu = sorted(s / calls for s in t.wall), sorted(s / calls for s in t.cpu)
        return dict(seconds=wall[len(wall) // 2], best_seconds=wall[0],
                    cpu_seconds=cpu[len(cpu) // 2])
    return run


def kernel_cases(xp, dt, R, C, P):
    """(name, bytes moved, fn(impl)) for each kernel at AIS sizes."""
    Z, H, D = common.LATENT, common.HIDDEN, common.DATA_DIM
    rng = np.random.default_rng(0)

    def arr(*shape, scale=1.0):
        return xp.asarray((scale * rng.standard_normal(shape)).astype(dt))

    it = np.dtype(dt).itemsize
    a_h, b_h, y_h, d_h = arr(R, H), arr(H), arr(R, H), arr(R, H)
    a_d, b_d, g_d = arr(R, D, scale=5), arr(D), arr(R, D)
    x = xp.asarray((rng.random((R // C, D)) < 0.3).astype(dt))
    ll = arr(R)
    p, z, g, zn, gn, pn = (arr(R, Z) for _ in range(6))
    step = xp.full(R, 0.05, dt)
    logf, logfn = arr(R), arr(R)
    log_u = xp.asarray(np.log(rng.random(R)).astype(dt))
    acc, nan = xp.zeros(R, bool), xp.zeros(R, bool)
    ap, ag, am, av = arr(R, P), arr(R, P), arr(R, P, scale=0.1), xp.abs(arr(R, P, scale=0.1))
    st, eh, active = xp.full(R, 1e-3, dt), xp.full(R, 1e-8, dt), xp.asarray(rng.random(R) < 0.9)
    return [
        ("bias_elu", 3 * R * H * it, lambda i: elu.bias_elu(a_h, b_h, y_h, d_h, impl=i)),
        ("elu_backward", 3 * R * H * it, lambda i: elu.elu_backward(a_h, d_h, y_h, impl=i)),
        ("bernoulli_grad", (2 * R + R // C) * D * it,
         lambda i: bernoulli.bernoulli_grad(a_d, b_d, x, C, g_d, None, False, impl=i)),
        ("bernoulli_grad+ll", (2 * R + R // C) * D * it,
         lambda i: bernoulli.bernoulli_grad(a_d, b_d, x, C, g_d, ll, True, impl=i)),
        ("leapfrog_momentum", 3 * R * Z * it, lambda i: leapfrog.leapfrog_momentum(p, g, step, 0.5, impl=i)),
        ("leapfrog_position", 3 * R * Z * it, lambda i: leapfrog.leapfrog_position(z, p, step, impl=i)),
        ("leapfrog_momentum_position", 5 * R * Z * it,
         lambda i: leapfrog.leapfrog_momentum_position(p, z, g, step, impl=i)),
        ("hmc_accept", 4 * R * Z * it,
         lambda i: hmc_accept_mod.hmc_accept(z, logf, g, zn, logfn, gn, p, pn, log_u, 0.5, step, acc, nan,
                                             0.65, False, impl=i)),
        ("ais_log_weight", 3 * R * it, lambda i: ais_weights.ais_log_weight(ll, logf, 0.001, impl=i)),
        ("adam_rows", 7 * R * P * it,
         lambda i: adam.adam_rows(ap, ag, am, av, st, eh, active, impl=i)),
    ]


def bench_kernels(args, xp, dt, fast):
    run = timer(xp, args.calls, args.repeats)
    for name, nbytes, fn in kernel_cases(xp, dt, args.rows, args.chains, args.adam_params):
        ref = run(lambda: fn("ref"))
        t = run(lambda: fn(fast))
        s = t["seconds"]
        common.emit(workload="kernel", kernel=name, impl=fast, dtype=args.dtype, rows=args.rows,
                    **t, gbytes_per_second=nbytes / s / 1e9, ref_seconds=ref["seconds"],
                    speedup_vs_ref=ref["seconds"] / s, **settings())


def decoder_inputs(xp, dt, R, C):
    cfg = common.paper_config().replace(dtype=np.dtype(dt).name)
    params = {k: xp.asarray(v) for k, v in model.init_params(cfg, np.random.default_rng(0)).items()}
    rng = np.random.default_rng(1)
    x = xp.asarray((rng.random((R // C, common.DATA_DIM)) < 0.3).astype(dt))
    z = xp.asarray(rng.standard_normal((R, common.LATENT)).astype(dt))
    return cfg, params, x, z


def bench_decoder(args, xp, dt, fast):
    R, C, beta = args.rows, args.chains, 0.5
    run = timer(xp, max(1, args.calls // 4), args.repeats)
    cfg, params, x, z = decoder_inputs(xp, dt, R, C)
    ref, dec = fastpath.Decoder(params, R, impl="ref"), fastpath.Decoder(params, R, impl=fast)
    z3 = z.reshape(R // C, C, -1)
    target = ais.likelihood_target(params, cfg, x, C, impl="ref")
    cases = {"numpy": lambda: model.log_joint(params, cfg, x, z3, beta),
             "ref": lambda: ref(params, x, z, C, beta, False),
             "fused": lambda: dec(params, x, z, C, beta, False),
             "fused+ll": lambda: dec(params, x, z, C, beta, True),
             "ais_numpy": lambda: target(z, need_value=False)}
    base = None
    for name, fn in cases.items():
        t = run(fn)
        base = base or t["seconds"]
        common.emit(workload="decoder_grad", impl=name, dtype=args.dtype, rows=R, chains=C, **t,
                    speedup_vs_numpy=base / t["seconds"], **settings())
    if "parts" in args.only.split(","):
        bench_parts(args, xp, params, dec, x, z, fast, run)


def bench_parts(args, xp, params, dec, x, z, fast, run):
    """The fused gradient's steps one by one, on the buffers it uses."""
    R, C = args.rows, args.chains
    W = [params[f"dec.fc{i}.W"] for i in range(3)]
    b = [params[f"dec.fc{i}.b"] for i in range(3)]
    (h0, h1, out), (d0, d1) = dec.mlp.act, dec.mlp.der
    dec(params, x, z, C, 0.5, False)                                     # realistic buffer contents
    parts = [
        ("matmul z@W0 (R,50)x(50,200)", lambda: xp.matmul(z, W[0], out=h0)),
        ("bias_elu (R,200)", lambda: elu.bias_elu(h0, b[0], h1, d0, impl=fast)),
        ("matmul h@W1 (R,200)x(200,200)", lambda: xp.matmul(h0, W[1], out=h1)),
        ("matmul h@W2 (R,200)x(200,784)", lambda: xp.matmul(h1, W[2], out=out)),
        ("bernoulli_grad (R,784)", lambda: bernoulli.bernoulli_grad(out, b[2], x, C, out, None, False, impl=fast)),
        ("bernoulli_grad+ll (R,784)", lambda: bernoulli.bernoulli_grad(out, b[2], x, C, out, dec.ll, True, impl=fast)),
        ("matmul g@W2.T (R,784)x(784,200)", lambda: xp.matmul(out, W[2].T, out=h1)),
        ("elu_backward (R,200)", lambda: elu.elu_backward(h1, d1, h1, impl=fast)),
        ("matmul dh@W1.T (R,200)x(200,200)", lambda: xp.matmul(h1, W[1].T, out=h0)),
        ("matmul dh@W0.T (R,200)x(200,50)", lambda: xp.matmul(h0, W[0].T, out=dec.grad_ll)),
    ]
    for name, fn in parts:
        common.emit(workload="decoder_part", part=name, impl=fast, dtype=args.dtype, rows=R,
                    **run(fn), **settings())


SWEEP = [dict(blas="1", numba="1", layer="omp", wait="passive"),
         dict(blas="1", numba="2", layer="omp", wait="passive"),
         dict(blas="2", numba="1", layer="omp", wait="passive"),
         dict(blas="2", numba="2", layer="omp", wait="passive"),
         dict(blas="2", numba="2", layer="omp", wait="active"),
         dict(blas="1", numba="2", layer="workqueue", wait="passive"),
         dict(blas="2", numba="2", layer="workqueue", wait="passive")]


def sweep(args):
    for s in SWEEP:
        env = dict(os.environ, OMP_WAIT_POLICY=s["wait"])
        cmd = [sys.executable, __file__, "--only", "decoder", "--rows", str(args.rows),
               "--chains", str(args.chains), "--dtype", args.dtype, "--repeats", str(args.repeats),
               "--calls", str(args.calls), "--blas-threads", s["blas"], "--numba-threads", s["numba"],
               "--layer", s["layer"]]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if '"decoder_grad"' in line:
                print(line.rstrip()[:-1] + f', "omp_wait_policy": "{s["wait"]}"}}', flush=True)


def main():
    args = parse()
    if args.sweep:
        return sweep(args)
    xp = device_xp(args.device)
    dt = np.dtype(args.dtype).type
    fast = "cpu" if xp is np else "cuda"
    only = args.only.split(",")
    if "kernels" in only:
        bench_kernels(args, xp, dt, fast)
    if "decoder" in only:
        bench_decoder(args, xp, dt, fast)


if __name__ == "__main__":
    main()
