"""Metropolis accept/reject at the end of an HMC trajectory, one decision per row, on the
annealed VAE target of minivae.estimators.hmc (l = log p(x|z), the decoder's log-likelihood):

    log f(z) = -|z|^2 / 2 + beta l(z);   dH = (log f(z_new) - |p_new|^2/2) - (log f(z) - |p0|^2/2)
    valid  = dH and grad l(z_new) finite                (nonfinite[r] = not valid)
    accept = valid and log_u[r] < dH                    (log_u = log of a uniform)
    accepted rows: z, l, grad l <- z_new, l_new, grad l_new (in place); accepted[r] = accept
    adapt:  step[r] *= up if accept else down,  up = exp(GAIN (1 - target)), down = exp(-GAIN target)

This is minivae.estimators.hmc.hmc_transition's accept and adapt_step, term for term (the factors are
computed once, in float64, and rounded to the step's dtype), so the fused AIS path and the
NumPy reference make the same decisions. `grad` is only copied: pass whatever (R, Z) array must
follow z. No fastmath here: it would let LLVM assume the NaN and inf tests away.
"""
import contextlib
import math

import numpy as np
from numba import cuda, njit, prange

from . import _dispatch as dp

GAIN = 0.05  # minivae.estimators.hmc.adapt_step's rate


def _factors(target_accept):
    return math.exp(GAIN * (1.0 - target_accept)), math.exp(-GAIN * target_accept)


def hmc_accept_ref(z, ll, grad, z_new, ll_new, grad_new, p0, p_new, log_u, beta, step,
                   accepted, nonfinite, up, down, adapt):
    xp = dp.get_xp(z)
    ft = z.dtype.type
    beta = ft(beta)
    quiet = np.errstate(invalid="ignore", over="ignore") if xp is np else contextlib.nullcontext()
    with quiet:
        h_old = (-0.5 * (z * z).sum(1) + beta * ll) - 0.5 * (p0 * p0).sum(1)
        h_new = (-0.5 * (z_new * z_new).sum(1) + beta * ll_new) - 0.5 * (p_new * p_new).sum(1)
        dh = h_new - h_old
        ok = xp.isfinite(dh) & xp.isfinite(grad_new).all(1)
        acc = ok & (log_u < xp.where(ok, dh, 0))
    z[...] = xp.where(acc[:, None], z_new, z)
    grad[...] = xp.where(acc[:, None], grad_new, grad)
    ll[...] = xp.where(acc, ll_new, ll)
    accepted[...] = acc
    nonfinite[...] = ~ok
    if adapt:
        st = step.dtype.type
        step[...] = step * xp.where(acc, st(up), st(down))


@njit(parallel=True, cache=True, error_model="numpy")
def _hmc_accept_cpu(z, ll, grad, z_new, ll_new, grad_new, p0, p_new, log_u, beta, step,
                    accepted, nonfinite, up, down, adapt):
    ft, st = z.dtype.type, step.dtype.type
    half, beta = ft(0.5), ft(beta)
    up, down = st(up), st(down)
    for r in prange(z.shape[0]):
        z0, z1, k0, k1 = ft(0), ft(0), ft(0), ft(0)
        ok = True
        for c in range(z.shape[1]):
            z0 += z[r, c] * z[r, c]
            z1 += z_new[r, c] * z_new[r, c]
            k0 += p0[r, c] * p0[r, c]
            k1 += p_new[r, c] * p_new[r, c]
            ok &= np.isfinite(grad_new[r, c])
        h_old = (-half * z0 + beta * ll[r]) - half * k0
        h_new = (-half * z1 + beta * ll_new[r]) - half * k1
        dh = h_new - h_old
        ok &= np.isfinite(dh)
        acc = ok and log_u[r] < dh
        if acc:
            ll[r] = ll_new[r]
            for c in range(z.shape[1]):
                z[r, c] = z_new[r, c]
                grad[r, c] = grad_new[r, c]
        accepted[r] = acc
        nonfinite[r] = not ok
        if adapt:
            step[r] = step[r] * (up if acc else down)


@cuda.jit
def _hmc_accept_cuda(z, ll, grad, z_new, ll_new, grad_new, p0, p_new, log_u, beta, step,
                     accepted, nonfinite, up, down, adapt):
    # one thread per row: Z is small and the launch dominates
    ft, st = z.dtype.type, step.dtype.type
    half, beta = ft(0.5), ft(beta)
    up, down = st(up), st(down)
    for r in range(cuda.grid(1), z.shape[0], cuda.gridsize(1)):
        z0, z1, k0, k1 = ft(0), ft(0), ft(0), ft(0)
        ok = True
        for c in range(z.shape[1]):
            z0 += z[r, c] * z[r, c]
            z1 += z_new[r, c] * z_new[r, c]
            k0 += p0[r, c] * p0[r, c]
            k1 += p_new[r, c] * p_new[r, c]
            ok = ok and math.isfinite(grad_new[r, c])
        h_old = (-half * z0 + beta * ll[r]) - half * k0
        h_new = (-half * z1 + beta * ll_new[r]) - half * k1
        dh = h_new - h_old
        ok = ok and math.isfinite(dh)
        acc = ok and log_u[r] < dh
        if acc:
            ll[r] = ll_new[r]
            for c in range(z.shape[1]):
                z[r, c] = z_new[r, c]
                grad[r, c] = grad_new[r, c]
        accepted[r] = acc
        nonfinite[r] = not ok
        if adapt:
            step[r] = step[r] * (up if acc else down)


def hmc_accept(z, ll, grad, z_new, ll_new, grad_new, p0, p_new, log_u, beta, step,
               accepted, nonfinite, target_accept, adapt, impl="auto"):
    """Accept/reject per row and copy accepted proposals into (z, ll, grad), in place.

    z*, grad*, p0, p_new: (R, Z); ll*, log_u, step, accepted, nonfinite: (R,); beta: scalar.
    accepted and nonfinite (bool or integer) are written, not accumulated.
    """
    impl = dp.pick(impl, z)
    up, down = _factors(float(target_accept))
    args = (z, ll, grad, z_new, ll_new, grad_new, p0, p_new, log_u, float(beta), step,
            accepted, nonfinite, up, down, bool(adapt))
    if impl == "ref":
        hmc_accept_ref(*args)
    elif impl == "cpu":
        dp.cpu(_hmc_accept_cpu, z.size, *args)
    else:
        _hmc_accept_cuda[dp.grid_elems(z.shape[0], z)](*args)
