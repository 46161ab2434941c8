"""Log-densities, their gradients, and the reparameterised diagonal Gaussian.

Every function reduces over the last axis (the event axis) and broadcasts over the rest.
"""
import math

from .backend import get_xp

LOG2PI = math.log(2 * math.pi)


def log_std_normal(z):
    """log N(z; 0, I), summed over the last axis. Gradient wrt z is -z."""
    return -0.5 * ((z * z).sum(-1) + z.shape[-1] * LOG2PI)


def log_diag_normal(z, mu, logvar):
    """log N(z; mu, diag(exp(logvar))), summed over the last axis."""
    xp = get_xp(z)
    d = z - mu
    return -0.5 * (d * d * xp.exp(-logvar) + logvar + LOG2PI).sum(-1)


def reparam(mu, logvar, eps):
    """z = mu + exp(logvar / 2) * eps; backward(dz) -> (dmu, dlogvar)."""
    xp = get_xp(mu)
    std = xp.exp(0.5 * logvar)
    z = mu + std * eps

    def backward(dz):
        return dz, 0.5 * dz * std * eps

    return z, backward


def softplus(a):
    """log(1 + exp(a)) without overflow for any a."""
    xp = get_xp(a)
    return xp.maximum(a, 0) + xp.log1p(xp.exp(-xp.abs(a)))


def bernoulli_logits(x, logits):
    """log Bernoulli(x; sigmoid(logits)) summed over the last axis, stable for any logit.

    Returns (value, dvalue/dlogits) where the gradient is x - sigmoid(logits).
    """
    xp = get_xp(logits)
    ll = (x * logits - softplus(logits)).sum(-1)
    grad = x - 0.5 * (xp.tanh(0.5 * logits) + 1)
    return ll, grad


def gaussian_lik(x, mean, std):
    """log N(x; mean, std^2 I) summed over the last axis, and its gradient wrt mean."""
    r = x - mean
    ll = -0.5 * ((r * r).sum(-1) / std**2 + x.shape[-1] * (LOG2PI + 2 * math.log(std)))
    return ll, r / std**2
