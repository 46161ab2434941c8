"""Adam (gradient ascent on an objective), its batched per-datapoint twin, and schedules.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    theta += lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps_hat)
(the "efficient" bias correction of Kingma & Ba, sec. 2, with eps_hat = eps * sqrt(1 - b2^t)
so that it equals the textbook update exactly).
"""
import math

from kernels.adam import adam_dense_ref, adam_rows_ref

from ..backend import get_xp, kernels


def adam_init(params):
    xp = get_xp(next(iter(params.values())))
    return dict(m={k: xp.zeros_like(p) for k, p in params.items()},
                v={k: xp.zeros_like(p) for k, p in params.items()}, t=0)


def _fused(impl, arrays):
    """The kernels to run, or None for the NumPy code (impl="ref", no kernels, odd layouts)."""
    if impl == "ref":
        return None
    k = kernels()
    if k is None or not all(a.flags.c_contiguous for a in arrays):
        if impl == "kernel":
            raise ValueError("the Adam kernels are unavailable or the arrays not C-contiguous")
        return None
    return k


def adam_scalars(state, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Advance state["t"]; this step's (step size, eps_hat) in float64 (module docstring)."""
    state["t"] += 1
    t = state["t"]
    c2 = math.sqrt(1 - b2 ** t)
    return lr * c2 / (1 - b1 ** t), eps * c2


def adam_step(params, grads, state, lr, b1=0.9, b2=0.999, eps=1e-8, impl="auto"):
    """One ascent step on every key of `grads`, in place (params, m, v updated).
    impl: "ref" kernels.adam.adam_dense_ref (NumPy), "kernel" its kernel adam_dense (the same
    numbers, one pass per key), "auto" the kernel where it can run."""
    step, eps_hat = adam_scalars(state, lr, b1, b2, eps)
    for k, g in grads.items():
        m, v, p = state["m"][k], state["v"][k], params[k]
        fused = _fused(impl, (p, g, m, v))
        (fused.adam_dense if fused is not None else adam_dense_ref)(p, g, m, v, step, eps_hat, b1, b2)


def batched_adam_step(params, grads, state, lr, active, b1=0.9, b2=0.999, eps=1e-8, impl="auto"):
    """Adam with one state per datapoint: every array has leading axis N, `state["t"]` is
    (N,) and rows with active == False are left untouched (frozen, converged datapoints).
    impl as adam_step's: the reference kernels.adam.adam_rows_ref, or its kernel
    adam_rows, which sees each key as (N, P)."""
    t = state["t"]
    t += active
    xp = get_xp(t)
    tt = xp.maximum(t, 1).astype(next(iter(params.values())).dtype)
    c2 = xp.sqrt(1 - b2 ** tt)
    step = xp.where(active, lr * c2 / (1 - b1 ** tt), 0)
    eps_hat = eps * c2
    fused = _fused(impl, [a for k in grads for a in (params[k], grads[k], state["m"][k], state["v"][k])])
    for k, g in grads.items():
        p, m, v = params[k], state["m"][k], state["v"][k]
        if fused is None:
            adam_rows_ref(p, g, m, v, step, eps_hat, active, b1, b2)
        else:
            n = g.shape[0]
            fused.adam_rows(*(a.reshape(n, -1) for a in (p, g, m, v)), step, eps_hat, active, b1, b2)


def batched_adam_init(params, n):
    xp = get_xp(next(iter(params.values())))
    state = adam_init(params)
    state["t"] = xp.zeros(n, dtype=xp.int64)
    return state


def burda_schedule():
    """Burda et al. (2016): 3^i epochs at lr 1e-3 * 10^(-i/7), i = 0..7 (3280 epochs)."""
    return [(3 ** i, 1e-3 * 10 ** (-i / 7)) for i in range(8)]


def learning_rate(cfg, epoch):
    """The learning rate of (0-based) `epoch` under cfg's schedule."""
    if cfg.schedule == "plain":
        return cfg.lr
    start = 0
    for n, lr in burda_schedule():
        if epoch < start + n:
            return lr
        start += n
    return burda_schedule()[-1][1]


def total_epochs(cfg):
    return cfg.epochs if cfg.schedule == "plain" else min(cfg.epochs, 3280)


def entropy_weight(cfg, epoch_progress):
    """lambda of the entropy-annealed ELBO (paper 5.3.1): 0 -> 1 linearly over warm-up."""
    if cfg.warmup_epochs <= 0:
        return 1.0
    return min(1.0, epoch_progress / cfg.warmup_epochs)
