"""Bernoulli output layer: bias, gradient wrt the logits and (optionally) the log-likelihood.

Row r of `a` (R = N datapoints x C chains, datapoint-major) belongs to datapoint r // C:
x is passed once per datapoint, never repeated over chains.

    l = a + b                                   a: (R, D) = h W (no bias), b: (D,)
    e = exp(-|l|),  q = e / (1 + e)             (q = sigmoid(-|l|): one exp per element)
    grad = x - sigmoid(l) = (x - 1) + q if l >= 0 else x - q    (no cancellation for x in {0, 1})
    ll[r] = sum_d x l - softplus(l),  softplus(l) = max(l, 0) + log1p(e)   (if want_ll)

Finite for any finite logit (|l| = 1e4 included). grad may alias a.
"""
import math

import numba
from numba import cuda, njit, prange

from . import _dispatch as dp
from ._math import exp_nonpos, log1p_unit


def bernoulli_grad_ref(a, b, x, chains, grad, ll, want_ll):
    xp = dp.get_xp(a)
    rows, d = a.shape
    l = (a + b).reshape(-1, chains, d)                       # (N, C, D)
    xr = x.astype(a.dtype, copy=False)[:, None, :]            # (N, 1, D)
    e = xp.exp(-xp.abs(l))
    q = e / (1 + e)
    grad[...] = xp.where(l >= 0, (xr - 1) + q, xr - q).reshape(rows, d)
    if want_ll:
        ll[...] = (xr * l - xp.maximum(l, 0) - xp.log1p(e)).sum(-1).reshape(rows)


@njit(fastmath={"contract"}, error_model="numpy")  # no reassociation: (x - 1) + q would cancel q
def _grad_and_term(l, xv, zero, one, want_ll):
    e = exp_nonpos(-abs(l))
    q = e / (one + e)
    pos = l >= zero
    g = (xv - one) + q if pos else xv - q
    t = zero
    if want_ll:
        t = (xv * l - (l if pos else zero)) - log1p_unit(e)
    return g, t


# reassoc lets LLVM vectorise the row sum; the element maths above keeps its own flags.
# The want_ll test sits outside the pixel loops: inside, it stops vectorisation (50x slower).
@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _bernoulli_grad_cpu(a, b, x, chains, grad, ll, want_ll):
    ft = a.dtype.type
    zero, one = ft(0), ft(1)
    for r in prange(a.shape[0]):
        n = r // chains
        if want_ll:
            s = zero
            for c in range(a.shape[1]):
                g, t = _grad_and_term(a[r, c] + b[c], ft(x[n, c]), zero, one, True)
                grad[r, c] = g
                s += t
            ll[r] = s
        else:
            for c in range(a.shape[1]):
                g, t = _grad_and_term(a[r, c] + b[c], ft(x[n, c]), zero, one, False)
                grad[r, c] = g


_SCRATCH = dp.MAX_BLOCK  # a plain global: the shared array's size must be a compile-time constant


@cuda.jit
def _bernoulli_grad_cuda(a, b, x, chains, grad, ll, want_ll):
    # one block per row (grid-stride over rows), threads over pixels, tree sum in shared memory
    ft = a.dtype.type
    zero, one = ft(0), ft(1)
    part = cuda.shared.array(_SCRATCH, numba.float64)
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    for r in range(cuda.blockIdx.x, a.shape[0], cuda.gridDim.x):
        n = r // chains
        s = 0.0
        for c in range(tid, a.shape[1], nt):
            l = a[r, c] + b[c]
            xv = ft(x[n, c])
            e = math.exp(-abs(l))
            q = e / (one + e)
            if l >= zero:
                grad[r, c] = (xv - one) + q
                t = xv * l - l
            else:
                grad[r, c] = xv - q
                t = xv * l
            if want_ll:
                s += t - math.log1p(e)
        if want_ll:
            part[tid] = s
            cuda.syncthreads()
            k = nt // 2
            while k > 0:
                if tid < k:
                    part[tid] += part[tid + k]
                cuda.syncthreads()
                k //= 2
            if tid == 0:
                ll[r] = part[0]
            cuda.syncthreads()


def bernoulli_grad(a, b, x, chains, grad, ll, want_ll, impl="auto"):
    """grad = x - sigmoid(a + b): (R, D); if want_ll, ll = log Bernoulli(x; sigmoid(a + b)): (R,).

    x: (N, D) with R = N * chains; ll may be None when want_ll is False.
    """
    impl = dp.pick(impl, a)
    if x.shape[0] * chains != a.shape[0] or x.shape[1] != a.shape[1]:  # the kernels do not check
        raise ValueError(f"x {x.shape} with {chains} chains does not match logits {a.shape}")
    if ll is None:
        ll = dp.get_xp(a).empty(0, dtype=a.dtype)
    want_ll = bool(want_ll)
    if impl == "ref":
        bernoulli_grad_ref(a, b, x, chains, grad, ll, want_ll)
    elif impl == "cpu":
        dp.cpu(_bernoulli_grad_cpu, a.size, a, b, x, chains, grad, ll, want_ll)
    else:
        _bernoulli_grad_cuda[dp.grid_rows(a.shape[0], a)](a, b, x, chains, grad, ll, want_ll)
