"""The VAE's two nets and log p(x, z) with gradients wrt z and the decoder's parameters.

cfg.arch "mlp" (here): encoder `enc.fc{i}.{W,b}`, decoder `dec.fc{i}.{W,b}`; "conv": the
CIFAR-10 model of convmodel.py. Posterior family `q.*` for both.
"""
import numpy as np

from . import convmodel, nn
from ..backend import get_xp
from .densities import bernoulli_logits, gaussian_lik, log_std_normal
from ..errors import MinivaeError
from .posteriors import get_family

LIKELIHOODS = {"mlp": ("bernoulli", "gaussian"), "conv": ("logistic",)}


def check_arch(cfg):
    """A one-line error for an unknown arch or a likelihood the arch does not output."""
    if cfg.arch not in LIKELIHOODS:
        raise MinivaeError(f"unknown arch {cfg.arch!r}: choose mlp or conv")
    if cfg.likelihood not in LIKELIHOODS[cfg.arch]:
        raise MinivaeError(f"arch {cfg.arch} supports the {' and '.join(LIKELIHOODS[cfg.arch])} "
                           f"likelihood, not {cfg.likelihood!r}")


def enc_sizes(cfg, n_out):
    return [cfg.data_dim] + [cfg.enc_hidden] * cfg.enc_layers + [n_out]


def dec_sizes(cfg):
    return [cfg.latent] + [cfg.dec_hidden] * cfg.dec_layers + [cfg.data_dim]


def init_params(cfg, rng, xp=np):
    """All parameters of the VAE (encoder, decoder, family globals) in one flat dict."""
    check_arch(cfg)
    dtype = np.dtype(cfg.dtype)
    family = get_family(cfg)
    if cfg.arch == "conv":
        params = convmodel.init_params(cfg, family, rng, xp)
        family.init_global(rng, params, dtype, xp)
        return params
    params = {}
    if cfg.encoder:
        nn.init_mlp(rng, params, "enc", enc_sizes(cfg, family.n_out), dtype, xp=xp)
    nn.init_mlp(rng, params, "dec", dec_sizes(cfg), dtype, xp=xp)
    family.init_global(rng, params, dtype, xp)
    return params


def require_encoder(cfg, what):
    """A one-line error when `what` needs q(z|x) but the model has none (an imported decoder)."""
    if not cfg.encoder:
        raise MinivaeError(f"{what} needs an encoder, and this model was imported without one: "
                           "use ais, bdmc or localopt --init prior")


def encode(params, cfg, x):
    """x: (B, D) -> per-datapoint parameters of q, h: (B, P). backward gives dx = None."""
    require_encoder(cfg, "q(z|x)")
    if cfg.arch == "conv":
        return convmodel.encode(params, cfg, x)
    return nn.mlp(params, "enc", x, cfg.enc_layers + 1, cfg.act, need_dx=False)


def decode(params, cfg, z, need_grads=True):
    """z: (..., Z) -> logits (Bernoulli) or mean (Gaussian): (..., D); arch conv: the pair
    (mean (..., D), per-channel log-scale (..., 3)), backward taking the pair of gradients."""
    if cfg.arch == "conv":
        return convmodel.decode(params, cfg, z, need_grads)
    lead = z.shape[:-1]
    out, back = nn.mlp(params, "dec", z.reshape(-1, z.shape[-1]), cfg.dec_layers + 1, cfg.act,
                       need_grads=need_grads)

    def backward(dout):
        dz, grads = back(dout.reshape(-1, out.shape[-1]))
        return dz.reshape(z.shape), grads

    return out.reshape(lead + (out.shape[-1],)), backward


def log_lik(params, cfg, x, z, need_grads=True, need_value=True):
    """log p(x|z): x (B, D), z (B, D)-matched (B, Z) or (B, K, Z) -> (B,) or (B, K).

    backward(dll) -> (dz, decoder grads); need_grads=False: dz only (grads {}).
    need_value=False: a Bernoulli decoder may return None for log p(x|z) (dz only, for HMC).
    """
    if cfg.arch == "conv":
        return convmodel.log_lik(params, cfg, x, z, need_grads)
    out, back = decode(params, cfg, z, need_grads)
    xb = x[:, None, :] if z.ndim == x.ndim + 1 else x
    if cfg.likelihood == "bernoulli":
        ll, dout = bernoulli_logits(xb, out, need_value)
    else:
        ll, dout = gaussian_lik(xb, out, cfg.obs_std)

    def backward(dll):
        return back(dout * dll[..., None])

    return ll, backward


def log_joint(params, cfg, x, z, beta=1.0):
    """log p(z) + beta * log p(x|z) and its gradient wrt z (decoder grads not needed)."""
    ll, back = log_lik(params, cfg, x, z, need_grads=False)
    dz, _ = back(get_xp(z).full(ll.shape, beta, dtype=z.dtype))
    return log_std_normal(z) + beta * ll, dz - z
