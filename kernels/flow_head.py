"""The top of the flow's bound (minivae.model.flow.Flow.sample with the prior of
objectives.log_weights), forward and backward in one pass each, per row of (R, Z):

    rv = [mr, lr] (R, 2Z) = the r(vT|zT) net's output;  d = vT - mr,  prec = exp(-lr)
    forward:   dprec = d prec  (kept for the backward)
               logq = -r / 2 - logdet + sum_j (d_j dprec_j + lr_j) / 2 - Z/2 log 2pi
               c = -sum_j zT_j^2 / 2 - Z/2 log 2pi - lam logq   (log w = log p(x|zT) + c)
    where r = sum (ez^2 + ev^2 + logvar0 + lv) holds log q(z0|x) + log q(v0|z0) as
    -(r + 2 Z log 2pi) / 2, and logdet the flow's log|det|.
    backward:  given g = d/dzT of the weighted log-likelihood and w = d/dlog w (R,), dq = -lam w:
               dz = g - w zT,  dv = dq dprec,  drv = [-dv, dq (1 - d dprec) / 2]

exp(-lr) is taken as exp(-|lr|) or its inverse, so that the CPU loop vectorises.
"""
import math

from numba import cuda, njit, prange

from . import _dispatch as dp
from ._math import exp_nonpos

LOG2PI = math.log(2 * math.pi)


def flow_head_forward_ref(zT, vT, rv, r, logdet, lam, d, dprec, c):
    xp, Z = dp.get_xp(zT), zT.shape[1]
    d[...] = vT - rv[:, :Z]
    dprec[...] = d * xp.exp(-rv[:, Z:])
    logq = -0.5 * r - logdet + 0.5 * (d * dprec + rv[:, Z:]).sum(1) - 0.5 * Z * LOG2PI
    c[...] = -0.5 * (zT * zT).sum(1) - 0.5 * Z * LOG2PI - lam * logq


def flow_head_backward_ref(g, zT, w, lam, d, dprec, dz, dv, drv):
    Z = zT.shape[1]
    dq = (-lam * w)[:, None]
    dz[...] = g - w[:, None] * zT
    dv[...] = dq * dprec
    drv[:, :Z] = -dv
    drv[:, Z:] = 0.5 * dq * (1 - d * dprec)


@njit(parallel=True, cache=True, fastmath={"reassoc"}, error_model="numpy")
def _flow_head_forward_cpu(zT, vT, rv, r, logdet, lam, d, dprec, c):
    ft = zT.dtype.type
    Z = zT.shape[1]
    half, zero, one, lamf, cz = ft(0.5), ft(0), ft(1), ft(lam), ft(0.5 * Z * LOG2PI)
    for i in prange(zT.shape[0]):
        s_r = zero
        s_z = zero
        for j in range(Z):
            lr = rv[i, Z + j]
            e = exp_nonpos(-abs(lr))
            prec = e if lr >= zero else one / e
            dj = vT[i, j] - rv[i, j]
            dp_ = dj * prec
            d[i, j] = dj
            dprec[i, j] = dp_
            s_r += dj * dp_ + lr
            s_z += zT[i, j] * zT[i, j]
        logq = -half * r[i] - logdet[i] + half * s_r - cz
        c[i] = -half * s_z - cz - lamf * logq


@njit(parallel=True, cache=True, error_model="numpy")
def _flow_head_backward_cpu(g, zT, w, lam, d, dprec, dz, dv, drv):
    ft = zT.dtype.type
    Z = zT.shape[1]
    half, one = ft(0.5), ft(1)
    for i in prange(zT.shape[0]):
        wi = w[i]
        dq = ft(-lam) * wi
        for j in range(Z):
            dz[i, j] = g[i, j] - wi * zT[i, j]
            dvj = dq * dprec[i, j]
            dv[i, j] = dvj
            drv[i, j] = -dvj
            drv[i, Z + j] = half * dq * (one - d[i, j] * dprec[i, j])


@cuda.jit
def _flow_head_forward_cuda(zT, vT, rv, r, logdet, lam, d, dprec, c):
    ft = zT.dtype.type
    Z = zT.shape[1]
    half, zero, lamf, cz = ft(0.5), ft(0), ft(lam), ft(0.5 * Z * LOG2PI)
    for i in range(cuda.grid(1), zT.shape[0], cuda.gridsize(1)):      # one thread per row
        s_r = zero
        s_z = zero
        for j in range(Z):
            lr = rv[i, Z + j]
            dj = vT[i, j] - rv[i, j]
            dp_ = dj * math.exp(-lr)
            d[i, j] = dj
            dprec[i, j] = dp_
            s_r += dj * dp_ + lr
            s_z += zT[i, j] * zT[i, j]
        logq = -half * r[i] - logdet[i] + half * s_r - cz
        c[i] = -half * s_z - cz - lamf * logq


@cuda.jit
def _flow_head_backward_cuda(g, zT, w, lam, d, dprec, dz, dv, drv):
    ft = zT.dtype.type
    Z = zT.shape[1]
    half, one = ft(0.5), ft(1)
    for t in range(cuda.grid(1), zT.shape[0] * Z, cuda.gridsize(1)):
        i, j = t // Z, t % Z
        wi = w[i]
        dq = ft(-lam) * wi
        dz[i, j] = g[i, j] - wi * zT[i, j]
        dvj = dq * dprec[i, j]
        dv[i, j] = dvj
        drv[i, j] = -dvj
        drv[i, Z + j] = half * dq * (one - d[i, j] * dprec[i, j])


def flow_head_forward(zT, vT, rv, r, logdet, lam, d, dprec, c, impl="auto"):
    """d, dprec (R, Z) and c (R,) from zT, vT (R, Z), rv (R, 2Z), r, logdet (R,) (docstring)."""
    impl = dp.pick(impl, zT)
    args = (zT, vT, rv, r, logdet, float(lam), d, dprec, c)
    if impl == "ref":
        flow_head_forward_ref(*args)
    elif impl == "cpu":
        dp.cpu(_flow_head_forward_cpu, zT.size, *args)
    else:
        _flow_head_forward_cuda[dp.grid_elems(zT.shape[0], zT)](*args)


def flow_head_backward(g, zT, w, lam, d, dprec, dz, dv, drv, impl="auto"):
    """dz, dv (R, Z) and drv (R, 2Z) from g, zT, d, dprec (R, Z) and w (R,) (docstring)."""
    impl = dp.pick(impl, zT)
    args = (g, zT, w, float(lam), d, dprec, dz, dv, drv)
    if impl == "ref":
        flow_head_backward_ref(*args)
    elif impl == "cpu":
        dp.cpu(_flow_head_backward_cpu, zT.size, *args)
    else:
        _flow_head_backward_cuda[dp.grid_elems(zT.size, zT)](*args)
