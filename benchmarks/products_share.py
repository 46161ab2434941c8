"""Where a fused step's time goes: the share of its matrix products, and their FLOP rate.

Runs the library's step (train.training_step, or localopt's q* gradient + batched Adam) with
np.matmul wrapped by a timer, so every product of the step (BLAS, through `xp.matmul`) is
timed and its FLOPs counted from the shapes. One JSON line per workload: step seconds,
product seconds and share, product GFLOP/s, and the float32 matmul peak of one big product.

    python benchmarks/products_share.py [--threads 1] [--q ffg,flow,fullcov] [--steps 20]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.early_threads()

import numpy as np  # noqa: E402

_matmul = np.matmul
LOG = dict(seconds=0.0, flops=0.0, calls=0)


def timed_matmul(a, b, *args, **kw):
    t0 = time.perf_counter()
    out = _matmul(a, b, *args, **kw)
    LOG["seconds"] += time.perf_counter() - t0
    LOG["flops"] += 2.0 * out.size * a.shape[-1]
    LOG["calls"] += 1
    return out


def measure(step, n):
    step()                                       # warm-up, JIT compiles
    np.matmul = timed_matmul
    LOG.update(seconds=0.0, flops=0.0, calls=0)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        total = time.perf_counter() - t0
    finally:
        np.matmul = _matmul
    return dict(step_seconds=total / n, product_seconds=LOG["seconds"] / n,
                product_share=LOG["seconds"] / total, product_gflops=LOG["flops"] / LOG["seconds"] / 1e9,
                products_per_step=LOG["calls"] / n)


def train_step(q):
    """One iteration of minivae.train's loop (as benchmarks/train_epoch.py)."""
    from minivae import train
    from minivae.backend import normal
    from minivae.model import fastpath, model
    from minivae.model.optim import adam_init
    from minivae.model.posteriors import get_family
    cfg, x_train = common.paper_config(q), common.mnist_train()
    family, rng = get_family(cfg), np.random.default_rng(0)
    params = model.init_params(cfg, rng, np)
    inner = train.training_step(params, adam_init(params), cfg, family, (),
                                fastpath.mostly_zeros(x_train))
    perm, state = rng.permutation(len(x_train)), [0]

    def one():
        b = state[0] % (len(x_train) // cfg.batch)
        xb = x_train[perm[b * cfg.batch:(b + 1) * cfg.batch]].astype(np.float32)
        float(inner(xb, normal(rng, (cfg.batch, 1, family.noise_dim), xb), 1.0, cfg.lr).mean())
        state[0] += 1
    return one


def qstar_step(q):
    from minivae.backend import normal
    from minivae.estimators import localopt
    from minivae.model.optim import batched_adam_init, batched_adam_step
    from minivae.model.posteriors import get_family
    cfg = common.paper_config(q)
    family = get_family(cfg)
    params = common.init_weights(0, q)
    x = common.mnist_train()[:100].astype(np.float32)
    rng = np.random.default_rng(0)
    h, nets = localopt.init_rows(family, rng.spawn(100), np.float32, np)
    work = {"h": h, **nets}
    grad = (localopt._fast_gradient(params, cfg, family, x, 100)
            or localopt._gradient(params, cfg, family, "auto"))
    state, on = batched_adam_init(work, 100), np.ones(100, bool)

    def one():
        grads, _ = grad(work, x, normal(rng, (100, 100, family.noise_dim), x))
        batched_adam_step(work, grads, state, 1e-3, on)
    return one


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--q", default="ffg,flow,fullcov")
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    a_ = np.random.default_rng(1).standard_normal((2048, 2048), dtype=np.float32)
    out = np.empty_like(a_)
    t = common.time_repeats(lambda: np.matmul(a_, a_, out=out), 5, warmup=2)
    peak = 2 * 2048 ** 3 / min(t.wall) / 1e9
    for q in a.q.split(","):
        for workload, make, n in (("train_step", train_step, 10 * a.steps), ("qstar_step", qstar_step, a.steps)):
            common.emit(workload=f"{workload}_{q}", threads=a.threads, matmul_peak_gflops=peak,
                        **measure(make(q), n))


if __name__ == "__main__":
    main()
