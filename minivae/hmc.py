"""Hamiltonian Monte Carlo on the annealed VAE posterior, one row per chain.

The density of every row is  f(z) = N(z; 0, I) * exp(beta * l(z)),  l = log p(x|z), and
H(z, p) = -log f(z) + |p|^2 / 2.  One transition is one leapfrog trajectory of L steps,

    p <- p + (s/2) g(z);   L times { z <- z + s p;  p <- p + s g(z) }   (the last p step is s/2)
    with g(z) = beta * grad l(z) - z,

then a Metropolis accept when log u < H(z, p0) - H(z', p').  A proposal whose energy or
gradient is NaN/inf is rejected and counted, never carried on.

This is the seam for the fused kernels: the randomness (momenta, log-uniforms) comes in
pre-drawn, step sizes are per row, and the only call out is `target(z, need_value) ->
(l (R,), grad l (R, Z))` (the decoder's matrix products). The target is log p(x|z), not log f,
because AIS needs l of the current state for its weight update, and at a change of beta the
prior term and beta are applied here without another decoder call.
"""
import numpy as np

from .backend import get_xp


def _col(a, z):
    """A per-row scalar (R,) or a plain scalar, shaped to broadcast against z (R, Z)."""
    return a[:, None] if getattr(a, "ndim", 0) == 1 else a


def log_f(z, ll, beta):
    """log f(z) up to its constant: -|z|^2/2 + beta * l(z): (R,)."""
    return -0.5 * (z * z).sum(-1) + beta * ll


def leapfrog(z, p, gll, target, beta, step, L):
    """L leapfrog steps from (z, p) with grad l(z) = gll; only the last step asks for l itself.

    Returns (z, p, ll, gll) at the end of the trajectory. step: (R,) or scalar.
    """
    s, b = _col(step, z), _col(beta, z)
    p = p + 0.5 * s * (b * gll - z)
    for i in range(L):
        last = i == L - 1
        z = z + s * p
        ll, gll = target(z, need_value=last)     # the L-1 inner calls need only the gradient
        p = p + (0.5 * s if last else s) * (b * gll - z)
    return z, p, ll, gll


def hmc_transition(z, ll, gll, target, beta, step, momentum0, log_u, L):
    """One HMC trajectory plus Metropolis accept per row, leaving f (see module doc) invariant.

    z, gll, momentum0: (R, Z); ll, step, log_u: (R,); beta: scalar or (R,).
    Returns (z, ll, gll, accepted (R,) bool, nan_rejected (R,) bool).
    """
    xp = get_xp(z)
    with np.errstate(all="ignore"):              # NaN rows are expected and handled below
        zn, pn, lln, glln = leapfrog(z, momentum0, gll, target, beta, step, L)
        h_old = log_f(z, ll, beta) - 0.5 * (momentum0 * momentum0).sum(-1)   # = -H(z, p0)
        h_new = log_f(zn, lln, beta) - 0.5 * (pn * pn).sum(-1)
        dH = h_new - h_old
        finite = xp.isfinite(dH) & xp.isfinite(glln).all(-1)
        accepted = finite & (log_u < xp.where(finite, dH, 0))
    keep = accepted[:, None]
    return (xp.where(keep, zn, z), xp.where(accepted, lln, ll), xp.where(keep, glln, gll),
            accepted, ~finite)


def adapt_step(step, accepted, target_accept=0.65, rate=0.05):
    """Per-row step sizes nudged toward the target acceptance rate:
    log s += rate * (accepted - target), i.e. x exp(0.0175) on accept, x exp(-0.0325) on reject
    at target 0.65; the rate of acceptance where log s stops drifting is the target."""
    xp = get_xp(step)
    return step * xp.exp(rate * (accepted.astype(step.dtype) - target_accept))
