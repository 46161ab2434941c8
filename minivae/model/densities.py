"""Log-densities, their gradients, and the reparameterised diagonal Gaussian; last, reduce_weights:
the bounds (ELBO or IWAE) of log importance weights, and their gradient wrt log w.

Every density reduces over the last axis (the event axis) and broadcasts over the rest.
"""
import math

from ..backend import get_xp

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


def bernoulli_logits(x, logits, need_value=True):
    """log Bernoulli(x; sigmoid(logits)) summed over the last axis, stable for any logit.

    Returns (value, dvalue/dlogits) where the gradient is x - sigmoid(logits); value None
    when need_value is False (HMC's inner leapfrog steps need only the gradient).
    """
    xp = get_xp(logits)
    ll = (x * logits - softplus(logits)).sum(-1) if need_value else None
    grad = x - 0.5 * (xp.tanh(0.5 * logits) + 1)
    return ll, grad


def gaussian_lik(x, mean, std):
    """log N(x; mean, std^2 I) summed over the last axis, and its gradient wrt mean."""
    r = x - mean
    ll = -0.5 * ((r * r).sum(-1) / std**2 + x.shape[-1] * (LOG2PI + 2 * math.log(std)))
    return ll, r / std**2


BIN = 1.0 / 256  # discretized logistic: pixel k in 0..255 sits at x = k / 256, bin [x, x + BIN)


def discretized_logistic(x, mean, log_scale):
    """log p(x) of pixels x = k/256 under a logistic(mean, exp(log_scale)) discretized into bins
    [x, x + 1/256), summed over the last axis (Kingma et al. 2016). All of (..., D), broadcast.

    Edge bins take the tails (PixelCNN++'s convention): k = 0 gets CDF(x + 1/256) (CDF(-inf) = 0
    below it), k = 255 gets 1 - CDF(x) (CDF(+inf) = 1 above it), so the 256 bins sum to 1.
    Returns (value, d value / d mean, d value / d log_scale), the last two per element.
    """
    xp = get_xp(mean)
    inv_s = xp.exp(-log_scale)
    a = (x - mean) * inv_s                 # standardised lower edge
    d = BIN * inv_s                        # bin width in standard units (> 0)
    b = a + d                              # standardised upper edge
    has_lo = x > 0.5 * BIN                 # k > 0: a finite lower edge
    has_hi = x < 1 - 1.5 * BIN             # k < 255: a finite upper edge
    # sigma(b) - sigma(a) = sigma(b) sigma(-a) (1 - e^-d): each log term is stable for any a, b, d
    # and the small difference never cancels (d enters only through log(-expm1(-d))).
    ll = (xp.where(has_hi, -softplus(-b), 0) + xp.where(has_lo, -softplus(a), 0)
          + xp.where(has_lo & has_hi, xp.log(-xp.expm1(-d)), 0))
    gb = xp.where(has_hi, 0.5 * (1 - xp.tanh(0.5 * b)), 0)       # d/db of log sigma(b)
    ga = xp.where(has_lo, -0.5 * (1 + xp.tanh(0.5 * a)), 0)      # d/da of log sigma(-a)
    gd = xp.where(has_lo & has_hi, 1 / xp.expm1(d), 0)          # d/dd of log(1 - e^-d)
    dmean = -(ga + gb) * inv_s             # da/dmean = db/dmean = -1/s
    dlog_scale = -(a * ga + b * gb + d * gd)  # da/dlog_s = -a, db/dlog_s = -b, dd/dlog_s = -d
    return ll.sum(-1), dmean, dlog_scale


def logsumexp(a, axis=-1):
    xp = get_xp(a)
    m = a.max(axis, keepdims=True)
    return (m + xp.log(xp.exp(a - m).sum(axis, keepdims=True))).squeeze(axis)


def reduce_weights(logw, objective):
    """Per-datapoint bound (B,) from log w (B, K), and d(sum of bounds)/d logw."""
    xp = get_xp(logw)
    K = logw.shape[1]
    if objective == "elbo":
        return logw.mean(1), xp.full(logw.shape, 1.0 / K, dtype=logw.dtype)
    if objective == "iwae":
        lse = logsumexp(logw, 1)
        return lse - math.log(K), xp.exp(logw - lse[:, None])
    raise ValueError(objective)
