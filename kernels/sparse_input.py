"""The two matrix products of a layer whose input x is mostly zeros (binarized images: ~13%
ones in MNIST), costing the nonzeros only:

    sparse_matmul:     y = x W         x: (R, D), W: (D, H)  ->  y: (R, H)   (the forward)
    sparse_matmul_tn:  dW = x^T dy     x: (R, D), dy: (R, H) ->  dW: (D, H)  (the weight gradient)

Every output element is sum_k x[., k] * (row k of the other operand), over the k with
x != 0, in increasing k: the same sums as a BLAS product, summed in another order. x may be
any float or integer dtype (uint8 images are not cast first).
"""
import numpy as np
from numba import cuda, njit, prange

from . import _dispatch as dp


def sparse_matmul_ref(x, W, y):
    y[...] = x.astype(W.dtype) @ W


def sparse_matmul_tn_ref(x, dy, dW):
    dW[...] = x.astype(dy.dtype).T @ dy


@njit(inline="always")
def _nonzeros(x, r, k, by_row, idx):
    """Indices of the nonzeros of row r (by_row) or column k of x into idx, branch-free: n."""
    n = 0
    if by_row:
        for k in range(x.shape[1]):
            idx[n] = k
            n += x[r, k] != 0
    else:
        for r in range(x.shape[0]):
            idx[n] = r
            n += x[r, k] != 0
    return n


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _accumulate(out, o, x, xrow, xcol, idx, n, other):
    """out[o, :] = sum_j x[.] * other[idx[j], :] in order of j; four rows per pass over out[o]
    (the partial sum stays in a register: one load and store of out per four terms)."""
    ft = out.dtype.type
    cols = out.shape[1]
    for c in range(cols):
        out[o, c] = 0
    j = 0
    while j + 4 <= n:
        i0, i1, i2, i3 = idx[j], idx[j + 1], idx[j + 2], idx[j + 3]
        if xrow >= 0:
            x0, x1, x2, x3 = ft(x[xrow, i0]), ft(x[xrow, i1]), ft(x[xrow, i2]), ft(x[xrow, i3])
        else:
            x0, x1, x2, x3 = ft(x[i0, xcol]), ft(x[i1, xcol]), ft(x[i2, xcol]), ft(x[i3, xcol])
        for c in range(cols):
            t = out[o, c]
            t += x0 * other[i0, c]
            t += x1 * other[i1, c]
            t += x2 * other[i2, c]
            t += x3 * other[i3, c]
            out[o, c] = t
        j += 4
    while j < n:
        i0 = idx[j]
        x0 = ft(x[xrow, i0]) if xrow >= 0 else ft(x[i0, xcol])
        for c in range(cols):
            out[o, c] += x0 * other[i0, c]
        j += 1


@njit(parallel=True, cache=True, fastmath={"contract"}, error_model="numpy")
def _sparse_matmul_cpu(x, W, y):
    for r in prange(x.shape[0]):
        idx = np.empty(x.shape[1], np.int64)
        n = _nonzeros(x, r, 0, True, idx)
        _accumulate(y, r, x, r, -1, idx, n, W)


@njit(parallel=True, cache=True, fastmath={"contract"}, error_model="numpy")
def _sparse_matmul_tn_cpu(x, dy, dW):
    # one output row per k: x's column k is read with a stride, dW's row stays in cache
    for k in prange(x.shape[1]):
        idx = np.empty(x.shape[0], np.int64)
        n = _nonzeros(x, 0, k, False, idx)
        _accumulate(dW, k, x, -1, k, idx, n, dy)


@cuda.jit
def _sparse_matmul_cuda(x, W, y):
    # one thread per output element; threads of a warp share r, so the branch is uniform
    cols = W.shape[1]
    ft = y.dtype.type
    for i in range(cuda.grid(1), x.shape[0] * cols, cuda.gridsize(1)):
        r, c = i // cols, i % cols
        s = ft(0)
        for k in range(x.shape[1]):
            if x[r, k] != 0:
                s += ft(x[r, k]) * W[k, c]
        y[r, c] = s


@cuda.jit
def _sparse_matmul_tn_cuda(x, dy, dW):
    cols = dy.shape[1]
    ft = dW.dtype.type
    for i in range(cuda.grid(1), x.shape[1] * cols, cuda.gridsize(1)):
        k, c = i // cols, i % cols
        s = ft(0)
        for r in range(x.shape[0]):
            if x[r, k] != 0:
                s += ft(x[r, k]) * dy[r, c]
        dW[k, c] = s


def sparse_matmul(x, W, y, impl="auto"):
    """y = x W into y (R, H), skipping the zeros of x (R, D)."""
    impl = dp.pick(impl, W)
    if x.shape[1] != W.shape[0] or y.shape != (x.shape[0], W.shape[1]):
        raise ValueError(f"x {x.shape} @ W {W.shape} does not fit y {y.shape}")
    if impl == "ref":
        sparse_matmul_ref(x, W, y)
    elif impl == "cpu":
        dp.cpu(_sparse_matmul_cpu, y.size, x, W, y)
    else:
        _sparse_matmul_cuda[dp.grid_elems(y.size, y)](x, W, y)


def sparse_matmul_tn(x, dy, dW, impl="auto"):
    """dW = x^T dy into dW (D, H), skipping the zeros of x (R, D)."""
    impl = dp.pick(impl, dy)
    if x.shape[0] != dy.shape[0] or dW.shape != (x.shape[1], dy.shape[1]):
        raise ValueError(f"x {x.shape}^T @ dy {dy.shape} does not fit dW {dW.shape}")
    if impl == "ref":
        sparse_matmul_tn_ref(x, dy, dW)
    elif impl == "cpu":
        dp.cpu(_sparse_matmul_tn_cpu, dW.size, x, dy, dW)
    else:
        _sparse_matmul_tn_cuda[dp.grid_elems(dW.size, dW)](x, dy, dW)
