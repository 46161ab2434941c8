"""Seconds per training epoch of minivae's paper MNIST model (workload a).

Latent 50, encoder 784-200-200-P, decoder 50-200-200-784, ELU, Bernoulli, batch 100, Adam
lr 1e-3, single-sample ELBO over the 50000 embedded binarized MNIST training images. The
inner loop is minivae.train's: gather + cast the batch, draw eps, train.training_step (the
fused fastpath.TrainStep for this model; --impl ref: objectives.bound_and_grads +
optim.adam_step in NumPy), read the batch's bound back. Validation is not timed.

    python benchmarks/train_epoch.py [--q ffg|flow|fullcov] [--epochs-timed 1] [--batches N]
                                     [--threads N] [--device cpu|gpu] [--impl auto|ref] [--profile]

--batches N times only the first N batches of the epoch and scales up to a full epoch
(the JSON line then says extrapolated: true).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.early_threads()

import numpy as np  # noqa: E402

WARMUP_BATCHES = 5


def make_step(cfg, x_train, xp, seed=0, impl="auto", weights=None):
    """State and a `step(b, perm)` closure doing exactly one iteration of minivae.train's loop
    (train.training_step: the fused fastpath.TrainStep where it applies; impl="ref" forces
    the reference objectives.bound_and_grads + optim.adam_step)."""
    from minivae.model import fastpath, model
    from minivae import train
    from minivae.backend import normal
    from minivae.model.optim import adam_init
    from minivae.model.posteriors import get_family

    family = get_family(cfg)
    rng = np.random.default_rng(seed)
    params = model.init_params(cfg, rng, xp)
    if weights:                             # before the step is made: it adopts the arrays
        params.update({k: xp.asarray(v) for k, v in weights.items()})
    adam = adam_init(params)
    dtype = np.dtype(cfg.dtype)
    lam, lr = 1.0, cfg.lr
    sparse = fastpath.mostly_zeros(x_train)
    inner = train.training_step(params, adam, cfg, family, (), sparse, impl=impl)

    def step(b, perm):
        xb = xp.asarray(x_train[perm[b * cfg.batch:(b + 1) * cfg.batch]], dtype=dtype)
        eps = normal(rng, (cfg.batch, cfg.k, family.noise_dim), xb)
        value = inner(xb, eps, lam, lr)
        return float(value.mean())          # the loop reads it back (a device sync on GPU)

    return step, rng, params


def check_values(params, cfg, xp):
    """The bound and the norm of its gradient on the fixed check batch, at the initial weights:
    the peers report the same two numbers, so compare.py can tell they run the same model."""
    from minivae.model import objectives
    from minivae.backend import to_numpy
    from minivae.model.posteriors import get_family
    x, eps = common.check_batch() if cfg.q == "ffg" else common.check_batch_flow()
    value, grads = objectives.bound_and_grads(params, cfg, get_family(cfg), xp.asarray(x),
                                              xp.asarray(eps[:, None, :]))
    norm = np.sqrt(sum((to_numpy(g).astype(np.float64) ** 2).sum() for g in grads.values()))
    return dict(check_bound=float(value.mean()), check_grad_norm=float(norm))


def sync_fn(xp):
    if xp.__name__ == "cupy":
        return lambda: xp.cuda.Device().synchronize()
    return lambda: None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--q", default="ffg", choices=["ffg", "flow", "fullcov"])
    ap.add_argument("--epochs-timed", type=int, default=1)
    ap.add_argument("--batches", type=int, default=None, help="time only this many batches")
    ap.add_argument("--threads", type=int, default=None, help="BLAS/OpenMP/Numba threads")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--impl", default="auto", choices=["auto", "ref"],
                    help="auto: train.training_step as shipped (the fused path where it applies); "
                         "ref: the reference bound_and_grads + NumPy adam_step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None,
                    help=".npz of initial weights (compare.py's export); default: init with --seed")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the timed batches; top functions to stderr")
    args = ap.parse_args(argv)
    workload = "train_epoch"
    try:
        from minivae.backend import device_xp
        xp = device_xp(args.device)
        cfg = common.paper_config(args.q)
        x_train = common.mnist_train()
        weights = common.load_weights(args.weights) if args.weights else None
        step, rng, params = make_step(cfg, x_train, xp, args.seed, args.impl, weights)
        check = check_values(params, cfg, xp) if args.q in ("ffg", "flow") else {}
    except Exception as e:   # a family not written yet, no GPU, ...: say so on the JSON line
        common.skipped(workload, f"{type(e).__name__}: {e}", side="minivae", q=args.q)
        return 0
    sync = sync_fn(xp)
    n_full = len(x_train) // cfg.batch
    n = n_full if args.batches is None else min(args.batches, n_full)

    perm = rng.permutation(len(x_train))
    for b in range(WARMUP_BATCHES):           # first-touch allocations, any JIT compile
        step(b, perm)
    sync()

    prof = None
    if args.profile:
        import cProfile
        prof = cProfile.Profile()
    bounds = []

    def epoch():
        perm = rng.permutation(len(x_train))
        running = 0.0
        if prof:
            prof.enable()
        for b in range(n):
            running += step(b, perm)
        if prof:
            prof.disable()
        bounds.append(running / n)

    timing = common.time_repeats(epoch, args.epochs_timed, warmup=0, sync=sync)
    workload = "train_epoch" if args.q == "ffg" else f"train_epoch_{args.q}"
    common.emit_epoch("minivae", timing, n, n_full, workload=workload, q=args.q, device=args.device,
                      epochs_timed=args.epochs_timed, train_bound=bounds[-1], threads=args.threads,
                      impl="minivae.train.training_step" + ("[ref]" if args.impl == "ref" else ""),
                      **check)
    if prof:
        import pstats
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
