"""The full-covariance Gaussian's Cholesky factor (minivae.model.fullcov) to and from its packed
parameters, one pass each:

    h = [mu (Z), the lower triangle of L row by row (Z(Z+1)/2), the diagonal as log L_ii]
    unpack:  L[b, i, j] = h[b, Z + i(i+1)/2 + j]   (j < i),  exp(that) (j = i),  0 (j > i)
    pack:    dh[b, Z + i(i+1)/2 + j] = dL[b, i, j]  (j < i),  dL[b, i, i] L[b, i, i] - s[b]  (j = i)

pack is the backward of unpack for a given dL = d/dL, with s[b] = d/d(sum_i log L_ii) subtracted
on the diagonal (log q has -sum_i log L_ii); dh[:, :Z] is left to the caller. pack_outer is pack
with dL = sum_k dz[b, k] eps[b, k]^T (the gradient of z = mu + L eps) formed on the fly, for few
samples k (training), where a batched product of inner size K is mostly call overhead.
"""
import math

import numpy as np
from numba import cuda, njit, prange

from . import _dispatch as dp


def _index(Z, xp):
    rows, cols = np.tril_indices(Z)
    return xp.asarray(rows), xp.asarray(cols), xp.asarray(np.flatnonzero(rows == cols))


def tril_unpack_ref(h, L):
    xp, Z = dp.get_xp(h), L.shape[-1]
    rows, cols, diag = _index(Z, xp)
    vals = h[:, Z:].copy()
    vals[:, diag] = xp.exp(vals[:, diag])
    L[...] = 0
    L[:, rows, cols] = vals


def tril_pack_ref(dL, L, s, dh):
    xp, Z = dp.get_xp(dL), L.shape[-1]
    rows, cols, diag = _index(Z, xp)
    d = dL[:, rows, cols]
    d[:, diag] = d[:, diag] * L[:, rows[diag], cols[diag]] - s[:, None]
    dh[:, Z:] = d


def tril_pack_outer_ref(dz, eps, L, s, dh):
    tril_pack_ref(dz.swapaxes(-1, -2) @ eps, L, s, dh)


@njit(parallel=True, cache=True, error_model="numpy")
def _tril_unpack_cpu(h, L):
    Z = L.shape[-1]
    zero = L.dtype.type(0)
    for b in prange(L.shape[0]):
        at = Z
        for i in range(Z):
            for j in range(i):
                L[b, i, j] = h[b, at + j]
            L[b, i, i] = np.exp(h[b, at + i])
            for j in range(i + 1, Z):
                L[b, i, j] = zero
            at += i + 1


@njit(parallel=True, cache=True, error_model="numpy")
def _tril_pack_cpu(dL, L, s, dh):
    Z = L.shape[-1]
    for b in prange(L.shape[0]):
        at = Z
        for i in range(Z):
            for j in range(i):
                dh[b, at + j] = dL[b, i, j]
            dh[b, at + i] = dL[b, i, i] * L[b, i, i] - s[b]
            at += i + 1


@njit(parallel=True, cache=True, error_model="numpy")
def _tril_pack_outer_cpu(dz, eps, L, s, dh):
    K, Z = dz.shape[1], L.shape[-1]
    for b in prange(L.shape[0]):
        at = Z
        for i in range(Z):
            for j in range(i + 1):
                dh[b, at + j] = dz[b, 0, i] * eps[b, 0, j]
            for k in range(1, K):
                for j in range(i + 1):
                    dh[b, at + j] += dz[b, k, i] * eps[b, k, j]
            dh[b, at + i] = dh[b, at + i] * L[b, i, i] - s[b]
            at += i + 1


@cuda.jit
def _tril_unpack_cuda(h, L):
    B, Z = L.shape[0], L.shape[-1]
    for t in range(cuda.grid(1), B * Z * Z, cuda.gridsize(1)):   # one thread per element of L
        b, i, j = t // (Z * Z), (t // Z) % Z, t % Z
        at = Z + i * (i + 1) // 2 + j
        if j < i:
            L[b, i, j] = h[b, at]
        elif j == i:
            L[b, i, j] = math.exp(h[b, at])
        else:
            L[b, i, j] = 0


@cuda.jit
def _tril_pack_cuda(dL, L, s, dh):
    B, Z = L.shape[0], L.shape[-1]
    for t in range(cuda.grid(1), B * Z * Z, cuda.gridsize(1)):
        b, i, j = t // (Z * Z), (t // Z) % Z, t % Z
        at = Z + i * (i + 1) // 2 + j
        if j < i:
            dh[b, at] = dL[b, i, j]
        elif j == i:
            dh[b, at] = dL[b, i, i] * L[b, i, i] - s[b]


@cuda.jit
def _tril_pack_outer_cuda(dz, eps, L, s, dh):
    B, K, Z = L.shape[0], dz.shape[1], L.shape[-1]
    for t in range(cuda.grid(1), B * Z * Z, cuda.gridsize(1)):
        b, i, j = t // (Z * Z), (t // Z) % Z, t % Z
        if j <= i:
            acc = dz[b, 0, i] * eps[b, 0, j]
            for k in range(1, K):
                acc += dz[b, k, i] * eps[b, k, j]
            at = Z + i * (i + 1) // 2 + j
            dh[b, at] = acc * L[b, i, i] - s[b] if j == i else acc


def tril_unpack(h, L, impl="auto"):
    """L (B, Z, Z) from h (B, Z + Z(Z+1)/2) (module docstring), into L."""
    impl = dp.pick(impl, h)
    if impl == "ref":
        tril_unpack_ref(h, L)
    elif impl == "cpu":
        dp.cpu(_tril_unpack_cpu, L.size, h, L)
    else:
        _tril_unpack_cuda[dp.grid_elems(L.size, L)](h, L)


def tril_pack(dL, L, s, dh, impl="auto"):
    """dh[:, Z:] (B, Z(Z+1)/2) from dL, L (B, Z, Z) and s (B,) (module docstring)."""
    impl = dp.pick(impl, dL)
    if impl == "ref":
        tril_pack_ref(dL, L, s, dh)
    elif impl == "cpu":
        dp.cpu(_tril_pack_cpu, L.size, dL, L, s, dh)
    else:
        _tril_pack_cuda[dp.grid_elems(L.size, L)](dL, L, s, dh)


def tril_pack_outer(dz, eps, L, s, dh, impl="auto"):
    """tril_pack of dL = sum_k dz[:, k] eps[:, k]^T; dz, eps (B, K, Z) (module docstring)."""
    impl = dp.pick(impl, dz)
    if impl == "ref":
        tril_pack_outer_ref(dz, eps, L, s, dh)
    elif impl == "cpu":
        dp.cpu(_tril_pack_outer_cpu, L.size, dz, eps, L, s, dh)
    else:
        _tril_pack_outer_cuda[dp.grid_elems(L.size, L)](dz, eps, L, s, dh)
