"""Training and evaluation objectives with their gradients.

log w = log p(x|z) + log p(z) - lam * log q(z|x), for K samples per datapoint:
  ELBO       = mean_k log w                       (lam anneals the entropy, paper 5.3.1)
  IWAE(K)    = logsumexp_k log w - log K
Gradients flow to the encoder (through h), the family's nets and the decoder.
"""
from . import fastpath, model
from .densities import log_std_normal, reduce_weights
from .nn import add_grads


def log_weights(params, cfg, family, x, h, eps, lam=1.0, decoder_grads=True, workspace=None):
    """log w: (B, K) for posterior parameters h (B, P) and noise eps (B, K, E).

    backward(dlogw) -> (dh, grads of the decoder (unless decoder_grads=False) and the family's nets).
    Without decoder gradients, an ELU/Bernoulli decoder runs fused (fastpath.log_lik_dz, its
    buffers kept in the caller's `workspace` dict); model.log_lik is the reference.
    """
    z, logq, back_q = family.sample(params, h, eps)
    if not decoder_grads and workspace is not None and fastpath.decoder_supported(cfg) \
            and z.dtype == params["dec.fc0.W"].dtype == x.dtype:
        ll, back_ll = fastpath.log_lik_dz(params, cfg, x, z, workspace)
    else:
        ll, back_ll = model.log_lik(params, cfg, x, z, decoder_grads)
    logw = ll + log_std_normal(z) - lam * logq

    def backward(dlogw):
        dz, grads = back_ll(dlogw)
        dz = dz - z * dlogw[..., None]                  # the prior's gradient
        dh, gq = back_q(dz, -lam * dlogw)
        return dh, add_grads(grads, gq)

    return logw, backward


def bound_and_grads(params, cfg, family, x, eps, lam=1.0, objective="elbo"):
    """The amortized training objective: per-datapoint bound (B,) and the gradient of
    its batch mean wrt every parameter (encoder, family nets, decoder)."""
    h, back_enc = model.encode(params, cfg, x)
    logw, back_w = log_weights(params, cfg, family, x, h, eps, lam)
    value, dlogw = reduce_weights(logw, objective)
    dh, grads = back_w(dlogw / x.shape[0])
    _, genc = back_enc(dh)
    return value, add_grads(grads, genc)


def bound(params, cfg, family, x, eps, objective="elbo"):
    """Per-datapoint bound (B,) without gradients (evaluation)."""
    h, _ = model.encode(params, cfg, x)
    logw, _ = log_weights(params, cfg, family, x, h, eps)
    return reduce_weights(logw, objective)[0]
