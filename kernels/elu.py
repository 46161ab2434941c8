"""Bias + ELU and its derivative in one pass; the ELU backward as one multiply.

    s = a + b                        a: (R, H) = h W (no bias), b: (H,)
    y = s if s > 0 else expm1(s)
    dy_da = 1 if s > 0 else exp(s)  (ELU'(s): minivae.model.nn.elu's y + 1, without its cancellation)
    out = dy * dy_da                 (elu_backward)

Outputs may alias inputs (y may be a; out may be dy).
"""
import math

from numba import cuda, njit, prange

from . import _dispatch as dp
from ._math import expm1_exp_nonpos


def bias_elu_ref(a, b, y, dy_da):
    xp = dp.get_xp(a)
    s = a + b
    pos = s > 0
    neg = xp.minimum(s, 0)
    y[...] = xp.where(pos, s, xp.expm1(neg))
    dy_da[...] = xp.where(pos, 1, xp.exp(neg))


@njit(parallel=True, cache=True, error_model="numpy")
def _bias_elu_cpu(a, b, y, dy_da):
    zero, one = a.dtype.type(0), a.dtype.type(1)
    for r in prange(a.shape[0]):
        for c in range(a.shape[1]):
            s = a[r, c] + b[c]
            em1, e = expm1_exp_nonpos(min(s, zero))  # both sides computed: the loop vectorises
            pos = s > 0
            y[r, c] = s if pos else em1
            dy_da[r, c] = one if pos else e


@cuda.jit
def _bias_elu_cuda(a, b, y, dy_da):
    one = a.dtype.type(1)
    cols = a.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, a.shape[0] * cols, stride):
        r, c = i // cols, i % cols
        s = a[r, c] + b[c]
        if s > 0:
            y[r, c] = s
            dy_da[r, c] = one
        else:
            y[r, c] = math.expm1(s)
            dy_da[r, c] = math.exp(s)


def bias_elu(a, b, y, dy_da, impl="auto"):
    """y = elu(a + b), dy_da = elu'(a + b); a, y, dy_da: (R, H), b: (H,). In place."""
    impl = dp.pick(impl, a)
    if impl == "ref":
        bias_elu_ref(a, b, y, dy_da)
    elif impl == "cpu":
        dp.cpu(_bias_elu_cpu, a.size, a, b, y, dy_da)
    else:
        _bias_elu_cuda[dp.grid_elems(a.size, a)](a, b, y, dy_da)


def elu_backward_ref(dy, dy_da, out):
    out[...] = dy * dy_da


@njit(parallel=True, cache=True, error_model="numpy")
def _elu_backward_cpu(dy, dy_da, out):
    for r in prange(dy.shape[0]):
        for c in range(dy.shape[1]):
            out[r, c] = dy[r, c] * dy_da[r, c]


@cuda.jit
def _elu_backward_cuda(dy, dy_da, out):
    cols = dy.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, dy.shape[0] * cols, stride):
        r, c = i // cols, i % cols
        out[r, c] = dy[r, c] * dy_da[r, c]


def elu_backward(dy, dy_da, out, impl="auto"):
    """out = dy * dy_da, all (R, H); out may be dy."""
    impl = dp.pick(impl, dy)
    if impl == "ref":
        elu_backward_ref(dy, dy_da, out)
    elif impl == "cpu":
        dp.cpu(_elu_backward_cpu, dy.size, dy, dy_da, out)
    else:
        _elu_backward_cuda[dp.grid_elems(dy.size, dy)](dy, dy_da, out)
