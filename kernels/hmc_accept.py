"""Metropolis accept/reject at the end of an HMC trajectory, one decision per row.

    H = -log f(z) + |p|^2 / 2
    valid  = z_new, grad_new, log f(z_new) and H_new all finite   (else nan_count[r] += 1)
    accept = valid and log_u[r] < H_old - H_new                   (log_u = log of a uniform)
    accepted rows: z, logf, grad <- z_new, logf_new, grad_new (in place); accepted[r] = 1 / 0
    adapt:  step[r] *= exp(GAIN * (accepted[r] - target_accept))

The adaptation is minivae.hmc.adapt_step: a Robbins-Monro step on log step with constant
gain, which per row settles where the acceptance rate equals target_accept (x exp(0.0175) on
accept, x exp(-0.0325) on reject at target 0.65).
`grad` is only copied: pass whatever (R, Z) array must follow z. No fastmath here: it would
let LLVM assume the NaN and inf tests away.
"""
import contextlib
import math

import numpy as np
from numba import cuda, njit, prange

from minivae.backend import get_xp

from . import _dispatch as dp

GAIN = 0.05  # minivae.hmc.adapt_step's rate


def _factors(target_accept):
    return math.exp(GAIN * (1.0 - target_accept)), math.exp(-GAIN * target_accept)


def hmc_accept_ref(z, logf, grad, z_new, logf_new, grad_new, p0, p_new, log_u, step,
                   accepted, nan_count, target_accept, adapt):
    xp = get_xp(z)
    quiet = np.errstate(invalid="ignore", over="ignore") if xp is np else contextlib.nullcontext()
    with quiet:
        h_old = -logf + 0.5 * (p0 * p0).sum(1)
        h_new = -logf_new + 0.5 * (p_new * p_new).sum(1)
        ok = xp.isfinite(h_new) & xp.isfinite(grad_new).all(1) & xp.isfinite(z_new).all(1)
        acc = ok & (log_u < h_old - h_new)
    z[...] = xp.where(acc[:, None], z_new, z)
    grad[...] = xp.where(acc[:, None], grad_new, grad)
    logf[...] = xp.where(acc, logf_new, logf)
    accepted[...] = acc
    nan_count += ~ok
    if adapt:
        up, down = _factors(target_accept)
        step[...] = step * xp.where(acc, up, down)


@njit(parallel=True, cache=True, error_model="numpy")
def _hmc_accept_cpu(z, logf, grad, z_new, logf_new, grad_new, p0, p_new, log_u, step,
                    accepted, nan_count, target_accept, adapt):
    ft = z.dtype.type
    half = ft(0.5)
    up = np.exp(GAIN * (1.0 - target_accept))
    down = np.exp(-GAIN * target_accept)
    for r in prange(z.shape[0]):
        k0, k1 = ft(0), ft(0)
        ok = True
        for c in range(z.shape[1]):
            k0 += p0[r, c] * p0[r, c]
            k1 += p_new[r, c] * p_new[r, c]
            ok &= np.isfinite(grad_new[r, c]) & np.isfinite(z_new[r, c])
        h_old = -logf[r] + half * k0
        h_new = -logf_new[r] + half * k1
        ok &= np.isfinite(h_new)
        acc = ok and log_u[r] < h_old - h_new
        if not ok:
            nan_count[r] += 1
        if acc:
            logf[r] = logf_new[r]
            for c in range(z.shape[1]):
                z[r, c] = z_new[r, c]
                grad[r, c] = grad_new[r, c]
        accepted[r] = 1 if acc else 0
        if adapt:
            step[r] = step[r] * (up if acc else down)


@cuda.jit
def _hmc_accept_cuda(z, logf, grad, z_new, logf_new, grad_new, p0, p_new, log_u, step,
                     accepted, nan_count, target_accept, adapt):
    # one thread per row: Z is small and the launch dominates
    ft = z.dtype.type
    half = ft(0.5)
    for r in range(cuda.grid(1), z.shape[0], cuda.gridsize(1)):
        k0, k1 = ft(0), ft(0)
        ok = True
        for c in range(z.shape[1]):
            k0 += p0[r, c] * p0[r, c]
            k1 += p_new[r, c] * p_new[r, c]
            ok = ok and math.isfinite(grad_new[r, c]) and math.isfinite(z_new[r, c])
        h_old = -logf[r] + half * k0
        h_new = -logf_new[r] + half * k1
        ok = ok and math.isfinite(h_new)
        acc = ok and log_u[r] < h_old - h_new
        if not ok:
            nan_count[r] += 1
        if acc:
            logf[r] = logf_new[r]
            for c in range(z.shape[1]):
                z[r, c] = z_new[r, c]
                grad[r, c] = grad_new[r, c]
        accepted[r] = 1 if acc else 0
        if adapt:
            if acc:
                step[r] = step[r] * math.exp(GAIN * (1.0 - target_accept))
            else:
                step[r] = step[r] * math.exp(-GAIN * target_accept)


def hmc_accept(z, logf, grad, z_new, logf_new, grad_new, p0, p_new, log_u, step,
               accepted, nan_count, target_accept, adapt, impl="auto"):
    """Accept/reject per row and copy accepted proposals into (z, logf, grad), in place.

    z*, grad*, p0, p_new: (R, Z); logf*, log_u, step, accepted, nan_count: (R,).
    """
    impl = dp.pick(impl, z)
    args = (z, logf, grad, z_new, logf_new, grad_new, p0, p_new, log_u, step,
            accepted, nan_count, float(target_accept), bool(adapt))
    if impl == "ref":
        hmc_accept_ref(*args)
    elif impl == "cpu":
        dp.cpu(_hmc_accept_cpu, z.size, *args)
    else:
        _hmc_accept_cuda[dp.grid_elems(z.shape[0], z)](*args)
