"""Hamiltonian Monte Carlo on the annealed VAE posterior, one row per chain.

The density of every row is  f(z) = N(z; 0, I) * exp(beta * l(z)),  l = log p(x|z), and
H(z, p) = -log f(z) + |p|^2 / 2.  One transition is one leapfrog trajectory of L steps,

    p <- p + (s/2) g(z);   L times { z <- z + s p;  p <- p + s g(z) }   (the last p step is s/2)
    with g(z) = beta * grad l(z) - z,

then a Metropolis accept when log u < H(z, p0) - H(z', p'), and optionally a per-row step-size
nudge toward a target acceptance rate. A proposal whose energy or gradient is NaN/inf is
rejected and counted, never carried on.

`hmc_transition` is the seam for the fused kernels: the randomness (momenta, log-uniforms)
comes in pre-drawn, step sizes are per row, and the only call out is to the target. impl="ref"
runs the NumPy lines below (the reference: `target(z, need_value) -> (l (R,), grad l (R, Z))`,
new arrays). impl="auto" runs the same maths on the fused kernels (kernels.leapfrog_*,
kernels.hmc_accept) when the target has a `fused` form (a `Fused`), in place on preallocated
arrays. The target is log p(x|z), not log f, because AIS needs l of the current state for its
weight update, and at a change of beta the prior term and beta are applied here without
another decoder call.
"""
import math

import numpy as np

from ..backend import get_xp, kernels


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


def adapt_step(step, accepted, target_accept=0.65, rate=0.05):
    """Per-row step sizes nudged toward the target acceptance rate:
    log s += rate * (accepted - target), i.e. x exp(0.0175) on accept, x exp(-0.0325) on reject
    at target 0.65; the rate of acceptance where log s stops drifting is the target."""
    xp, ft = get_xp(step), step.dtype.type
    up, down = math.exp(rate * (1.0 - target_accept)), math.exp(-rate * target_accept)
    return step * xp.where(accepted, ft(up), ft(down))


def hmc_transition(z, ll, gll, target, beta, step, momentum0, log_u, L, target_accept=None,
                   impl="auto"):
    """One HMC trajectory plus Metropolis accept per row, leaving f (see module doc) invariant;
    then, if target_accept is given, step = adapt_step(step, accepted, target_accept).

    z, gll, momentum0: (R, Z); ll, step, log_u: (R,); beta: scalar (or (R,) on the reference).
    Returns (z, ll, gll, accepted (R,) bool, nonfinite (R,) bool, step). The fused path
    (see module doc) updates z, ll, gll and step in place and returns them.
    """
    fused = fused_of(target, impl)
    if fused is not None and getattr(beta, "ndim", 0) == 0:
        return fused.transition(z, ll, gll, beta, step, momentum0, log_u, L, target_accept)
    xp = get_xp(z)
    with np.errstate(all="ignore"):              # NaN rows are expected and handled below
        zn, pn, lln, glln = leapfrog(z, momentum0, gll, target, beta, step, L)
        h_old = log_f(z, ll, beta) - 0.5 * (momentum0 * momentum0).sum(-1)   # = -H(z, p0)
        h_new = log_f(zn, lln, beta) - 0.5 * (pn * pn).sum(-1)
        dH = h_new - h_old
        finite = xp.isfinite(dH) & xp.isfinite(glln).all(-1)
        accepted = finite & (log_u < xp.where(finite, dH, 0))
    keep = accepted[:, None]
    if target_accept is not None:
        step = adapt_step(step, accepted, target_accept)
    return (xp.where(keep, zn, z), xp.where(accepted, lln, ll), xp.where(keep, glln, gll),
            accepted, ~finite, step)


# ---- the fused path ---------------------------------------------------------------------------

def fused_of(target, impl="auto"):
    """The `Fused` form of target that impl selects: None for impl="ref" or a plain target."""
    if impl not in ("auto", "ref"):
        raise ValueError(f"impl must be auto or ref, not {impl!r}")
    return getattr(target, "fused", None) if impl == "auto" else None


class Fused:
    """A target's fused form and the transition's preallocated arrays, for R rows of Z.

    grad_log_f(z, beta, need_value) -> (grad log f (R, Z), l (R,) or None, grad l (R, Z)):
    arrays of its own that its next call overwrites (fastpath.Decoder's buffers).
    """

    def __init__(self, grad_log_f, rows, latent, dtype, xp):
        self.grad_log_f = grad_log_f
        self.z, self.p, self.g = (xp.empty((rows, latent), dtype) for _ in range(3))
        self.accepted, self.nonfinite = xp.empty(rows, bool), xp.empty(rows, bool)

    def start(self, z, beta):
        """(l, grad l) at z as new arrays: the state hmc_transition carries."""
        _, ll, gll = self.grad_log_f(z, beta, True)
        return ll.copy(), gll.copy()

    def transition(self, z, ll, gll, beta, step, momentum0, log_u, L, target_accept=None):
        """hmc_transition on the kernels, in place: the same updates in the same order."""
        k, xp = kernels(), get_xp(z)
        zn, p, g = self.z, self.p, self.g
        zn[...] = z
        p[...] = momentum0
        xp.multiply(gll, beta, out=g)
        g -= z                                                   # g(z) at this beta
        k.leapfrog_momentum(p, g, step, 0.5)
        k.leapfrog_position(zn, p, step)
        for _ in range(L - 1):
            g, _, _ = self.grad_log_f(zn, beta, False)
            k.leapfrog_momentum_position(p, zn, g, step)
        g, lln, glln = self.grad_log_f(zn, beta, True)           # l only at the end
        k.leapfrog_momentum(p, g, step, 0.5)
        adapt = target_accept is not None
        k.hmc_accept(z, ll, gll, zn, lln, glln, momentum0, p, log_u, beta, step, self.accepted,
                     self.nonfinite, target_accept if adapt else 0.5, adapt)
        return z, ll, gll, self.accepted, self.nonfinite, step
