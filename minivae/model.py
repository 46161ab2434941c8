"""The VAE's two nets and log p(x, z) with gradients wrt z and the decoder's parameters.

Keys: encoder `enc.fc{i}.{W,b}`, decoder `dec.fc{i}.{W,b}`, posterior family `q.*`.
"""
import numpy as np

from . import nn
from .backend import get_xp
from .densities import bernoulli_logits, gaussian_lik, log_std_normal
from .posteriors import get_family


def enc_sizes(cfg, n_out):
    return [cfg.data_dim] + [cfg.enc_hidden] * cfg.enc_layers + [n_out]


def dec_sizes(cfg):
    return [cfg.latent] + [cfg.dec_hidden] * cfg.dec_layers + [cfg.data_dim]


def init_params(cfg, rng, xp=np):
    """All parameters of the VAE (encoder, decoder, family globals) in one flat dict."""
    dtype = np.dtype(cfg.dtype)
    family = get_family(cfg)
    params = {}
    nn.init_mlp(rng, params, "enc", enc_sizes(cfg, family.n_out), dtype, xp=xp)
    nn.init_mlp(rng, params, "dec", dec_sizes(cfg), dtype, xp=xp)
    family.init_global(rng, params, dtype, xp)
    return params


def encode(params, cfg, x):
    """x: (B, D) -> per-datapoint parameters of q, h: (B, P). backward gives dx = None."""
    return nn.mlp(params, "enc", x, cfg.enc_layers + 1, cfg.act, need_dx=False)


def decode(params, cfg, z, need_grads=True):
    """z: (..., Z) -> logits (Bernoulli) or mean (Gaussian): (..., D)."""
    lead = z.shape[:-1]
    out, back = nn.mlp(params, "dec", z.reshape(-1, z.shape[-1]), cfg.dec_layers + 1, cfg.act,
                       need_grads=need_grads)

    def backward(dout):
        dz, grads = back(dout.reshape(-1, out.shape[-1]))
        return dz.reshape(z.shape), grads

    return out.reshape(lead + (out.shape[-1],)), backward


def log_lik(params, cfg, x, z, need_grads=True):
    """log p(x|z): x (B, D), z (B, D)-matched (B, Z) or (B, K, Z) -> (B,) or (B, K).

    backward(dll) -> (dz, decoder grads); need_grads=False: dz only (grads {}).
    """
    out, back = decode(params, cfg, z, need_grads)
    xb = x[:, None, :] if z.ndim == x.ndim + 1 else x
    if cfg.likelihood == "bernoulli":
        ll, dout = bernoulli_logits(xb, out)
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
