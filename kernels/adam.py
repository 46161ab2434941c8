"""Batched Adam (ascent), one optimiser state per row: minivae.model.optim.batched_adam_step on a
flat (N, P) parameter block. Rows with active[n] == False are not touched at all.

    t += 1;  c2 = sqrt(1 - b2^t);  step = lr c2 / (1 - b1^t)          (active rows)
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p += step m / (sqrt(v) + eps c2)     (eps_hat = eps c2: equals the textbook update)

Scalars enter in float64 and are rounded to the arrays' dtype inside, as NumPy does with
Python floats, so float32 kernels compute what the reference computes.
"""
import math

import numpy as np
from numba import cuda, njit, prange

from minivae.backend import get_xp

from . import _dispatch as dp


def adam_batched_ref(p, g, m, v, t, active, lr, b1, b2, eps):
    xp = get_xp(p)
    t += active
    tt = xp.maximum(t, 1).astype(p.dtype)[:, None]              # (N, 1)
    c2 = xp.sqrt(1 - b2 ** tt)
    step = lr * c2 / (1 - b1 ** tt)
    a = active[:, None]
    m[...] = xp.where(a, b1 * m + (1 - b1) * g, m)
    v[...] = xp.where(a, b2 * v + (1 - b2) * g * g, v)
    p[...] = xp.where(a, p + step * m / (xp.sqrt(v) + eps * c2), p)


@njit(parallel=True, cache=True, error_model="numpy")
def _adam_batched_cpu(p, g, m, v, t, active, lr, b1, b2, eps):
    ft = p.dtype.type
    one = ft(1)
    b1f, b2f, nb1, nb2 = ft(b1), ft(b2), ft(1.0 - b1), ft(1.0 - b2)
    for r in prange(p.shape[0]):
        if not active[r]:
            continue
        t[r] += 1
        tt = ft(t[r])
        c2 = np.sqrt(one - b2f ** tt)
        step = ft(lr) * c2 / (one - b1f ** tt)
        ec2 = ft(eps) * c2
        for c in range(p.shape[1]):
            mc = b1f * m[r, c] + nb1 * g[r, c]
            vc = b2f * v[r, c] + nb2 * g[r, c] * g[r, c]
            m[r, c] = mc
            v[r, c] = vc
            p[r, c] += step * mc / (np.sqrt(vc) + ec2)


@cuda.jit
def _adam_batched_cuda(p, g, m, v, t, active, lr, b1, b2, eps):
    # one block per row: t[r] is read by every thread before thread 0 increments it
    ft = p.dtype.type
    one = ft(1)
    b1f, b2f, nb1, nb2 = ft(b1), ft(b2), ft(1.0 - b1), ft(1.0 - b2)
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    for r in range(cuda.blockIdx.x, p.shape[0], cuda.gridDim.x):
        if not active[r]:
            continue                      # uniform over the block
        tn = t[r] + 1
        cuda.syncthreads()
        if tid == 0:
            t[r] = tn
        tt = ft(tn)
        c2 = math.sqrt(one - b2f ** tt)
        step = ft(lr) * c2 / (one - b1f ** tt)
        ec2 = ft(eps) * c2
        for c in range(tid, p.shape[1], nt):
            mc = b1f * m[r, c] + nb1 * g[r, c]
            vc = b2f * v[r, c] + nb2 * g[r, c] * g[r, c]
            m[r, c] = mc
            v[r, c] = vc
            p[r, c] += step * mc / (math.sqrt(vc) + ec2)


def adam_batched(p, g, m, v, t, active, lr, b1=0.9, b2=0.999, eps=1e-8, impl="auto"):
    """One batched Adam ascent step, in place.

    p, g, m, v: (N, P); t: (N,) int64 step counts; active: (N,) bool (False: row frozen).
    """
    impl = dp.pick(impl, p)
    args = (p, g, m, v, t, active, float(lr), float(b1), float(b2), float(eps))
    if impl == "ref":
        adam_batched_ref(*args)
    elif impl == "cpu":
        dp.cpu(_adam_batched_cpu, p.size, *args)
    else:
        _adam_batched_cuda[dp.grid_rows(p.shape[0], p)](*args)
