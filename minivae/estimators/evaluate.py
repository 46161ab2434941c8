"""What the evaluation commands share: a checkpoint's model, the first n rows of a split,
option checks, AIS weight statistics (the block loop is stages.run)."""
import hashlib

import numpy as np

from .. import data, io, pretrained
from ..backend import device_xp, get_dtype
from ..errors import CheckpointError, MinivaeError


def load_model(path, device="cpu", dtype="float32"):
    """(params, cfg, xp) from checkpoint `path`, cast to the compute dtype `dtype`."""
    xp = device_xp(device)
    dt = get_dtype(dtype)
    ck = io.load_checkpoint(path, xp)
    params = {k: v.astype(dt) for k, v in ck["params"].items()}
    return params, ck["config"].replace(dtype=dtype), xp


def load_data(cfg, split, n, data_dir=None, xp=np):
    """The first n datapoints of `split` of the checkpoint's dataset: (n, D) in cfg.dtype."""
    x = data.load(cfg.dataset, split, data_dir)
    if n > len(x):
        raise MinivaeError(f"--n {n} is larger than the {cfg.dataset} {split} split ({len(x)} rows): "
                           f"use --n {len(x)} or less")
    if x.shape[1] != cfg.data_dim:
        raise CheckpointError(f"the checkpoint's model has data_dim {cfg.data_dim} but {cfg.dataset} "
                              f"rows have {x.shape[1]} values: wrong checkpoint for this dataset")
    return data.to_float(x[:n], cfg.likelihood, cfg.dtype, xp)


def decoder_chunk(chunk, cfg):
    """Rows (datapoints x samples) per decoder call for the bounds: `chunk` if given, else a
    size whose buffers stay near 200 MB: a conv decoder call holds about 65 000 values per row
    (its transposed convolutions' patches), an MLP's about 6 x data_dim."""
    if chunk is None:
        return 1000 if cfg.arch == "conv" else 10000
    check_options(chunk=chunk)
    return chunk


def check_options(**values):
    """Every named option must be a positive number; a clear one-line error otherwise."""
    for name, v in values.items():
        if v is None or v <= 0:
            raise MinivaeError(f"--{name.replace('_', '-')} must be positive, got {v}")


def file_digest(path):
    """sha256 of a file: ties a results stage to the exact checkpoint that made it."""
    h = hashlib.sha256()
    with open(pretrained.locate(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def logmeanexp(a, axis=-1):
    """log mean exp over `axis`, float64 (host arrays)."""
    a = np.asarray(a, np.float64)
    m = a.max(axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.exp(a - m).mean(axis, keepdims=True))).squeeze(axis)


def weight_stats(logw):
    """Per-datapoint estimate log mean_c w, effective sample size of the normalised weights,
    and the std of log w across chains, from log w (B, C)."""
    logw = np.asarray(logw, np.float64)
    w = np.exp(logw - logw.max(1, keepdims=True))
    return dict(estimate=logmeanexp(logw, 1), ess=w.sum(1) ** 2 / (w * w).sum(1), logw_std=logw.std(1))
