"""One affine coupling of the flow (minivae.model.flow.Flow.transform), forward and backward
in one pass each:

    forward:   s = 2 sigmoid(a),  y = x s + m,  logdet += sum_j log s_j          x, a, m: (R, Z)
               log s = log 2 - softplus(-a)  (finite for any a)
    backward:  given dy = d/dy and dl = d/dlogdet (R,):
               da = (1 - s/2) (dy x s + dl),  dm = dy,  dx = dy s

sigmoid and softplus share one e = exp(-|a|) in (0, 1]. dx may alias dy (each element is read
before it is written); nothing else aliases.
"""
import math

from numba import cuda, njit, prange

from . import _dispatch as dp
from ._math import exp_nonpos, log1p_unit

LOG2 = math.log(2.0)


def coupling_forward_ref(x, a, m, y, s, logdet):
    xp = dp.get_xp(a)
    e = xp.exp(-xp.abs(a))
    s[...] = xp.where(a >= 0, 2 / (1 + e), 2 * e / (1 + e))
    y[...] = x * s + m
    logdet += (LOG2 - xp.maximum(-a, 0) - xp.log1p(e)).sum(-1)


def coupling_backward_ref(dy, x, s, dl, da, dm, dx):
    g = dy.copy()
    da[...] = (1 - 0.5 * s) * (g * x * s + dl[:, None])
    dm[...] = g
    dx[...] = g * s


# reassoc lets LLVM vectorise the row sum; the branch-free select keeps the loop in SIMD
@njit(parallel=True, cache=True, fastmath={"reassoc"}, error_model="numpy")
def _coupling_forward_cpu(x, a, m, y, s, logdet):
    ft = a.dtype.type
    zero, one, two, l2 = ft(0), ft(1), ft(2), ft(LOG2)
    for r in prange(a.shape[0]):
        acc = zero
        for j in range(a.shape[1]):
            aj = a[r, j]
            e = exp_nonpos(-abs(aj))
            num = two if aj >= zero else two * e
            sj = num / (one + e)
            s[r, j] = sj
            y[r, j] = x[r, j] * sj + m[r, j]
            acc += l2 - max(-aj, zero) - log1p_unit(e)
        logdet[r] += acc


@njit(parallel=True, cache=True, error_model="numpy")
def _coupling_backward_cpu(dy, x, s, dl, da, dm, dx):
    ft = s.dtype.type
    one, half = ft(1), ft(0.5)
    for r in prange(s.shape[0]):
        for j in range(s.shape[1]):
            g, sj = dy[r, j], s[r, j]
            da[r, j] = (one - half * sj) * (g * x[r, j] * sj + dl[r])
            dm[r, j] = g
            dx[r, j] = g * sj


@cuda.jit
def _coupling_forward_cuda(x, a, m, y, s, logdet):
    ft = a.dtype.type
    zero, one, two, l2 = ft(0), ft(1), ft(2), ft(LOG2)
    for r in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):     # one thread per row
        acc = zero
        for j in range(a.shape[1]):
            aj = a[r, j]
            pos = aj >= zero
            e = math.exp(-aj if pos else aj)
            sj = (two if pos else two * e) / (one + e)
            s[r, j] = sj
            y[r, j] = x[r, j] * sj + m[r, j]
            acc += l2 - (zero if pos else -aj) - math.log1p(e)
        logdet[r] += acc


@cuda.jit
def _coupling_backward_cuda(dy, x, s, dl, da, dm, dx):
    ft = s.dtype.type
    one, half = ft(1), ft(0.5)
    cols = s.shape[1]
    for i in range(cuda.grid(1), s.shape[0] * cols, cuda.gridsize(1)):
        r, j = i // cols, i % cols
        g, sj = dy[r, j], s[r, j]
        da[r, j] = (one - half * sj) * (g * x[r, j] * sj + dl[r])
        dm[r, j] = g
        dx[r, j] = g * sj


def coupling_forward(x, a, m, y, s, logdet, impl="auto"):
    """y = x s + m, s = 2 sigmoid(a) (R, Z), logdet (R,) += sum log s; into the given arrays."""
    impl = dp.pick(impl, a)
    if impl == "ref":
        coupling_forward_ref(x, a, m, y, s, logdet)
    elif impl == "cpu":
        dp.cpu(_coupling_forward_cpu, a.size, x, a, m, y, s, logdet)
    else:
        _coupling_forward_cuda[dp.grid_elems(a.shape[0], a)](x, a, m, y, s, logdet)


def coupling_backward(dy, x, s, dl, da, dm, dx, impl="auto"):
    """da, dm, dx (R, Z) from dy (R, Z) and dl = d/dlogdet (R,) (module docstring)."""
    impl = dp.pick(impl, s)
    if impl == "ref":
        coupling_backward_ref(dy, x, s, dl, da, dm, dx)
    elif impl == "cpu":
        dp.cpu(_coupling_backward_cpu, s.size, dy, x, s, dl, da, dm, dx)
    else:
        _coupling_backward_cuda[dp.grid_elems(s.size, s)](dy, x, s, dl, da, dm, dx)
