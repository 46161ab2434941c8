"""The CIFAR-10 VAE of paper Table 9 (cfg.arch == "conv"), without batch norm.

Images are 3 x S x S (S a multiple of 8; CIFAR-10: S = 32, D = 3072), flattened (c, row, col).
  encoder  x -> [4x4 conv stride 2 pad 1, ELU] x 3 (64, 128, 256 channels; S -> S/8)
             -> FC to the family's h (B, P)                        enc.conv{0,1,2}, enc.fc
  decoder  z -> FC 256 (S/8)^2, ELU -> [4x4 deconv stride 2, ELU] x 2 (128, 64 channels)
             -> 4x4 deconv stride 2 to 3 channels, sigmoid: the per-pixel mean    dec.fc, dec.deconv{0,1,2}
           z -> FC 64-ELU-FC 32-ELU-FC 3: the per-channel log-scale             dec.scale.fc{0,1,2}
  log p(x|z) = densities.discretized_logistic(x, mean, log-scale of the pixel's channel).

Table 9 prints the generator's first FC as 256x2x2, but three stride-2 deconvs take 2x2 to 16x16,
not 32x32: we use 256x4x4 (S/8). Batch norm is left out: it makes log p(x|z) of one datapoint
depend on the rest of the batch, and AIS, IWAE and per-datapoint q* need it per datapoint
(README, "CIFAR-10").
"""
import math

import numpy as np

from . import nn
from ..backend import get_xp
from .conv import conv2d, deconv2d, init_conv
from .densities import discretized_logistic
from ..errors import MinivaeError

CHANNELS = (64, 128, 256)   # encoder conv outputs; the decoder mirrors them
SCALE_HIDDEN = (64, 32)     # the log-scale MLP
COLORS = 3


def image_side(cfg):
    """S for data_dim = 3 S^2, with S divisible by 8 (three stride-2 layers)."""
    side = math.isqrt(cfg.data_dim // COLORS)
    if COLORS * side * side != cfg.data_dim or side % 8:
        raise MinivaeError(f"--arch conv needs 3 x S x S colour images with S a multiple of 8 "
                           f"(CIFAR-10: 3072 = 3 x 32 x 32), not data_dim={cfg.data_dim}")
    return side


def _init_linear(rng, params, prefix, n_in, n_out, dtype, xp):
    limit = np.sqrt(6.0 / (n_in + n_out))
    params[prefix + ".W"] = xp.asarray(rng.uniform(-limit, limit, (n_in, n_out)).astype(dtype))
    params[prefix + ".b"] = xp.zeros(n_out, dtype=dtype)


def init_params(cfg, family, rng, xp=np):
    """Encoder and decoder parameters (Glorot-uniform, zero biases) in one flat dict."""
    dtype, side = np.dtype(cfg.dtype), image_side(cfg)
    top = CHANNELS[-1] * (side // 8) ** 2                           # 256 * 4 * 4 for CIFAR-10
    params = {}
    for i, (c_in, c_out) in enumerate(zip((COLORS,) + CHANNELS[:-1], CHANNELS)):
        init_conv(rng, params, f"enc.conv{i}", c_in, c_out, 4, dtype, xp=xp)
    _init_linear(rng, params, "enc.fc", top, family.n_out, dtype, xp)
    _init_linear(rng, params, "dec.fc", cfg.latent, top, dtype, xp)
    up = CHANNELS[::-1] + (COLORS,)                                 # 256 -> 128 -> 64 -> 3
    for i, (c_in, c_out) in enumerate(zip(up[:-1], up[1:])):
        init_conv(rng, params, f"dec.deconv{i}", c_in, c_out, 4, dtype, transpose=True, xp=xp)
    nn.init_mlp(rng, params, "dec.scale", (cfg.latent,) + SCALE_HIDDEN + (COLORS,), dtype, xp=xp)
    return params


def _reshape(x, shape):
    return x.reshape(shape), lambda dy: dy.reshape(x.shape)


def encode(params, cfg, x):
    """x: (B, D) -> h: (B, P). backward(dh) -> (None, encoder grads)."""
    side, backs = image_side(cfg), []
    h, back = _reshape(x, (len(x), COLORS, side, side))
    for i in range(len(CHANNELS)):
        h, back = conv2d(params, f"enc.conv{i}", h, need_dx=i > 0)   # no dx for the data
        backs.append(back)
        h, back = nn.elu(h)
        backs.append(back)
    h, back = _reshape(h, (len(x), -1))                              # (B, 256 (S/8)^2)
    backs.append(back)
    h, back = nn.linear(params, "enc.fc", h)
    backs.append(back)
    return h, nn.chain(backs)


def decode(params, cfg, z, need_grads=True):
    """z: (..., Z) -> ((mean (..., D) in (0, 1), log_scale (..., 3)), backward) with
    backward((dmean, dlog_scale)) -> (dz, decoder grads ({} if need_grads=False))."""
    lead, side = z.shape[:-1], image_side(cfg)
    z2 = z.reshape(-1, z.shape[-1])                                  # (R, Z)
    R, s0 = len(z2), side // 8
    h, back = nn.linear(params, "dec.fc", z2, need_grads=need_grads)
    backs = [back]
    h, back = nn.elu(h)
    backs.append(back)
    h, back = _reshape(h, (R, CHANNELS[-1], s0, s0))
    backs.append(back)
    for i in range(len(CHANNELS)):
        h, back = deconv2d(params, f"dec.deconv{i}", h, need_grads=need_grads)
        backs.append(back)
        h, back = nn.elu(h) if i < len(CHANNELS) - 1 else nn.sigmoid(h)
        backs.append(back)
    mean, back = _reshape(h, lead + (cfg.data_dim,))
    backs.append(back)
    back_mean = nn.chain(backs)
    log_scale, back_scale = nn.mlp(params, "dec.scale", z2, len(SCALE_HIDDEN) + 1, "elu",
                                   need_grads=need_grads)

    def backward(douts):
        dmean, dlog_scale = douts
        dz, grads = back_mean(dmean)
        dz2, gs = back_scale(dlog_scale.reshape(R, COLORS))
        return (dz + dz2).reshape(z.shape), nn.add_grads(grads, gs)

    return (mean, log_scale.reshape(lead + (COLORS,))), backward


def log_lik(params, cfg, x, z, need_grads=True):
    """log p(x|z), discretized logistic: x (B, D) in k/256, z (B, Z) or (B, K, Z) -> (B,) or (B, K).
    backward(dll) -> (dz, decoder grads); need_grads=False: dz only (grads {})."""
    xp = get_xp(z)
    (mean, log_scale), back = decode(params, cfg, z, need_grads)
    xb = x[:, None, :] if z.ndim == x.ndim + 1 else x
    pixels = cfg.data_dim // COLORS
    ll, dmean, dls = discretized_logistic(xb, mean, xp.repeat(log_scale, pixels, axis=-1))
    dlog_scale = dls.reshape(dls.shape[:-1] + (COLORS, pixels)).sum(-1)      # (..., 3)

    def backward(dll):
        return back((dmean * dll[..., None], dlog_scale * dll[..., None]))

    return ll, backward
