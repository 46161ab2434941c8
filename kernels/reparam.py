"""The reparameterised FFG posterior of a row block, forward and backward in one pass each
(minivae.model.posteriors.FFG.sample with the prior of objectives.log_weights):

    h = [mu, logvar] (B, 2Z), eps (B, K, Z),  std = exp(logvar / 2) (B, Z) from the caller
                                              (xp.exp vectorises; a scalar exp here would not)
    forward:   z = mu + std eps;   c = log N(z; 0, I) - lam log q(z|x)                  (B, K)
               log q(z|x) = -1/2 sum_j (eps_j^2 + logvar_j + log 2pi)   (no division needed)
    backward:  given g = d/dz sum_k w_k log p(x|z_k)  (weighted=True: already times w_k;
               False: plain, multiplied by w_k here) and w = d/dlog w (B, K),
               dz = g - w z                                     (the prior's gradient added)
               dh = [sum_k dz,  sum_k (dz std eps / 2 + lam w / 2)]                     (B, 2Z)

so that log w = log p(x|z) + c. z may be given as (B*K, Z), rows datapoint-major.
"""
import math

import numpy as np
from numba import cuda, njit, prange

from . import _dispatch as dp

LOG2PI = math.log(2 * math.pi)


def ffg_forward_ref(h, std, eps, lam, z, c):
    B, K, Z = eps.shape
    mu, logvar = h[:, None, :Z], h[:, None, Z:]
    zz = mu + std[:, None, :] * eps
    z[...] = zz.reshape(z.shape)
    logq = -0.5 * (eps * eps + logvar + LOG2PI).sum(-1)
    c[...] = -0.5 * ((zz * zz).sum(-1) + Z * LOG2PI) - lam * logq


def ffg_backward_ref(h, std, eps, g, w, lam, weighted, dh):
    B, K, Z = eps.shape
    std = std[:, None, :]
    z = h[:, None, :Z] + std * eps
    g = g.reshape(B, K, Z)
    dz = (g if weighted else g * w[..., None]) - z * w[..., None]
    dh[:, :Z] = dz.sum(1)
    dh[:, Z:] = (0.5 * dz * std * eps + 0.5 * lam * w[..., None]).sum(1)


# reassoc lets LLVM vectorise the sums over Z; exp runs once per (b, j), not per sample
@njit(parallel=True, cache=True, fastmath={"reassoc"}, error_model="numpy")
def _ffg_forward_cpu(h, std, eps, lam, z, c):
    B, K, Z = eps.shape
    ft = h.dtype.type
    half, lam_f, l2p = ft(0.5), ft(lam), ft(LOG2PI)
    for b in prange(B):
        sl = ft(0)
        for j in range(Z):
            sl += h[b, Z + j] + l2p
        for k in range(K):
            sz = ft(0)
            se = ft(0)
            for j in range(Z):
                e = eps[b, k, j]
                zj = h[b, j] + std[b, j] * e
                z[b * K + k, j] = zj
                sz += zj * zj
                se += e * e
            c[b, k] = -half * (sz + Z * l2p) + lam_f * half * (se + sl)


@njit(parallel=True, cache=True, error_model="numpy")
def _ffg_backward_cpu(h, std, eps, g, w, lam, weighted, dh):
    B, K, Z = eps.shape
    ft = h.dtype.type
    half, one = ft(0.5), ft(1)
    for b in prange(B):
        dmu = np.zeros(Z, h.dtype)
        dze = np.zeros(Z, h.dtype)                    # sum_k dz eps
        sw = ft(0)
        for k in range(K):
            wk = w[b, k]
            gk = one if weighted else wk
            sw += wk
            for j in range(Z):
                e = eps[b, k, j]
                dz = g[b * K + k, j] * gk - (h[b, j] + std[b, j] * e) * wk
                dmu[j] += dz
                dze[j] += dz * e
        for j in range(Z):
            dh[b, j] = dmu[j]
            dh[b, Z + j] = half * std[b, j] * dze[j] + half * ft(lam) * sw


@cuda.jit
def _ffg_forward_cuda(h, std, eps, lam, z, c):
    B, K, Z = eps.shape
    ft = h.dtype.type
    half, lam_f, l2p = ft(0.5), ft(lam), ft(LOG2PI)
    for i in range(cuda.grid(1), B * K, cuda.gridsize(1)):     # one thread per sample row
        b, k = i // K, i % K
        sz = ft(0)
        sq = ft(0)
        for j in range(Z):
            e = eps[b, k, j]
            zj = h[b, j] + std[b, j] * e
            z[i, j] = zj
            sz += zj * zj
            sq += e * e + h[b, Z + j] + l2p
        c[b, k] = -half * (sz + Z * l2p) + lam_f * half * sq


@cuda.jit
def _ffg_backward_cuda(h, std, eps, g, w, lam, weighted, dh):
    B, K, Z = eps.shape
    ft = h.dtype.type
    half = ft(0.5)
    hl = half * ft(lam)
    for i in range(cuda.grid(1), B * Z, cuda.gridsize(1)):     # one thread per (b, j)
        b, j = i // Z, i % Z
        s = std[b, j]
        dmu = ft(0)
        dlv = ft(0)
        for k in range(K):
            wk = w[b, k]
            e = eps[b, k, j]
            dz = g[b * K + k, j] * (ft(1) if weighted else wk) - (h[b, j] + s * e) * wk
            dmu += dz
            dlv += half * dz * s * e + hl * wk
        dh[b, j] = dmu
        dh[b, Z + j] = dlv


def _shapes(h, std, eps, z2d):
    B, K, Z = eps.shape
    if h.shape != (B, 2 * Z) or std.shape != (B, Z) or z2d.shape != (B * K, Z):
        raise ValueError(f"h {h.shape}, std {std.shape}, eps {eps.shape} and z/g {z2d.shape} "
                         "do not fit (B, 2Z), (B, Z), (B, K, Z), (B*K, Z)")


def ffg_forward(h, std, eps, lam, z, c, impl="auto"):
    """z (B*K, Z) and c = log p(z) - lam log q(z|x) (B, K), into the given arrays."""
    impl = dp.pick(impl, h)
    _shapes(h, std, eps, z)
    args = (h, std, eps, float(lam), z, c)
    if impl == "ref":
        ffg_forward_ref(*args)
    elif impl == "cpu":
        dp.cpu(_ffg_forward_cpu, eps.size, *args)
    else:
        _ffg_forward_cuda[dp.grid_elems(c.size, c)](*args)


def ffg_backward(h, std, eps, g, w, lam, weighted, dh, impl="auto"):
    """dh (B, 2Z) from g (B*K, Z) and w (B, K), into dh (module docstring)."""
    impl = dp.pick(impl, h)
    _shapes(h, std, eps, g)
    args = (h, std, eps, g, w, float(lam), bool(weighted), dh)
    if impl == "ref":
        ffg_backward_ref(*args)
    elif impl == "cpu":
        dp.cpu(_ffg_backward_cpu, eps.size, *args)
    else:
        _ffg_backward_cuda[dp.grid_elems(dh.size // 2, dh)](*args)
