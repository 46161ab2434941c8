"""`minivae sample`: decode z ~ N(0, I) and save the decoder's means as an image grid (PNG).

Bernoulli models show sigmoid(logits), Gaussian ones their mean clipped to [0, 1], the conv
(CIFAR-10) model its per-pixel means in colour.
"""
import math

import numpy as np

from . import io, outputs
from .model import model
from .backend import device_xp, get_dtype, normal, to_numpy
from .errors import MinivaeError


def decoder_means(params, cfg, n, rng):
    """n images' worth of decoder means for z ~ N(0, I): (n, D) on the host, in [0, 1]."""
    some = next(iter(params.values()))
    z = normal(rng, (n, cfg.latent), some)                        # (n, Z)
    out, _ = model.decode(params, cfg, z)                         # (n, D)
    if cfg.likelihood == "logistic":                              # (mean, log-scale): the means
        return to_numpy(out[0]).astype(np.float64)
    out = to_numpy(out).astype(np.float64)
    if cfg.likelihood == "bernoulli":
        return 0.5 * (np.tanh(0.5 * out) + 1)
    return np.clip(out, 0, 1)


def image_side(data_dim, channels=1):
    side = math.isqrt(data_dim // channels)
    if channels * side * side != data_dim:
        raise MinivaeError(f"cannot show data_dim={data_dim} as square images: sample needs a model "
                           "of square images (e.g. 784 = 28 x 28)")
    return side


def grid(images, gap=1, channels=1):
    """(n, D) square images -> one (rows*(s+gap)-gap, cols*(s+gap)-gap) mosaic, white gaps;
    channels=3: rows of (3, s, s) colour images, mosaic (..., 3)."""
    n, s = len(images), image_side(images.shape[1], channels)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.ones((rows * (s + gap) - gap, cols * (s + gap) - gap) + ((channels,) if channels > 1 else ()))
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        tile = img.reshape(s, s) if channels == 1 else img.reshape(channels, s, s).transpose(1, 2, 0)
        out[r * (s + gap):r * (s + gap) + s, c * (s + gap):c * (s + gap) + s] = tile
    return out


def write_png(path, image, zoom=1):
    """Save a [0, 1] greyscale (H, W) or RGB (H, W, 3) array as a PNG, atomically (temp file in
    the same folder, rename)."""
    try:
        from matplotlib import image as mpimg
    except ImportError:
        raise MinivaeError("install the plot extra: pip install -e '.[plot]'")
    with io.atomic_path(path) as tmp:
        big = image.repeat(zoom, 0).repeat(zoom, 1)               # nearest-neighbour upscaling
        mpimg.imsave(tmp, big, cmap="gray", vmin=0, vmax=1, format="png")


def run(ckpt, n=64, out="samples.png", seed=0, device="cpu", dtype="float32", zoom=3):
    """Load checkpoint `ckpt`, decode n prior samples, write the grid to `out`; returns (n, D)."""
    if n <= 0:
        raise MinivaeError(f"--n must be positive, got {n}")
    xp = device_xp(device)
    with outputs.claim(out, "png"):                   # never over a checkpoint or another file
        ck = io.load_checkpoint(ckpt, xp)
        cfg = ck["config"]
        channels = 3 if cfg.arch == "conv" else 1
        image_side(cfg.data_dim, channels)
        params = {k: v.astype(get_dtype(dtype)) for k, v in ck["params"].items()}
        means = decoder_means(params, cfg, n, np.random.default_rng(seed))
        write_png(out, grid(means, channels=channels), zoom)
    return means
