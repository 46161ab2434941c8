"""L_VAE[q] and L_IWAE[q] of the model's own q from k samples, chunked so memory stays bounded.

log w_j = log p(x, z_j) - log q(z_j|x), z_j ~ q(z|x), j = 1..k:
  L_VAE  = mean_j log w_j          L_IWAE = logsumexp_j log w_j - log k
One decoder call covers at most `chunk` rows (datapoints x samples); the sums over samples are
accumulated on the host in float64 (a running max and a rescaled sum of exponentials).
Datapoint i draws its noise from default_rng([seed, i]) one chunk after another, so the
numbers do not depend on the chunk size or on which datapoints share a call.
"""
import math

import numpy as np

from ..model import model
from .. import stages
from ..backend import get_xp, to_numpy
from ..model.objectives import log_weights
from ..model.posteriors import get_family


def lse_update(m, s, a):
    """Streaming logsumexp: fold a (B, K) float64 into the running max m (B,) and
    s = sum exp(. - m) (B,); start from m = -inf, s = 0. Exact for any magnitude."""
    m_new = np.maximum(m, a.max(1))
    shift = np.where(np.isfinite(m_new), m_new, 0.0)                  # all -inf so far: keep 0
    s = s * np.exp(m - shift) + np.exp(a - shift[:, None]).sum(1)
    return m_new, s


def bounds(params, cfg, x, index, k, seed=0, chunk=10000):
    """Per-datapoint (L_VAE (B,), L_IWAE (B,)) in float64 for x: (B, D) with split indices index."""
    family = get_family(cfg)
    B, E = len(x), family.noise_dim
    kc = min(k, chunk)                                              # samples per call
    bc = max(1, chunk // kc)                                        # datapoints per call
    elbo, iwae = np.empty(B), np.empty(B)
    for lo in range(0, B, bc):
        rows = slice(lo, min(lo + bc, B))
        xb = x[rows]
        h, _ = model.encode(params, cfg, xb)                        # (b, P)
        rngs = stages.streams(seed, index[rows])
        m, s, total = np.full(len(rngs), -np.inf), np.zeros(len(rngs)), np.zeros(len(rngs))
        for j in range(0, k, kc):
            kk = min(kc, k - j)
            eps = np.stack([r.standard_normal((kk, E), dtype=xb.dtype) for r in rngs])  # (b, kk, E)
            logw, _ = log_weights(params, cfg, family, xb, h, get_xp(xb).asarray(eps))
            lw = to_numpy(logw).astype(np.float64)                  # (b, kk)
            total += lw.sum(1)
            m, s = lse_update(m, s, lw)
        elbo[rows] = total / k
        iwae[rows] = m + np.log(s) - math.log(k)
    return elbo, iwae


def compute(index, params, cfg, x, k, seed, chunk, progress=None):
    """The stage's block function (see stages.run): bounds of the datapoints `index` of x."""
    elbo, iw = bounds(params, cfg, x[index], index, k, seed, chunk)
    return dict(elbo=elbo, iwae=iw)


def stage(params, cfg, x, out, k=5000, seed=0, chunk=10000, meta=None, progress=True, block=None,
          runner=None):
    """Stage "iwae" of results file `out`: per-datapoint L_VAE[q] and L_IWAE[q] for the rows of
    x, saved after every block of datapoints; a rerun resumes (stages.run).
    Returns (elbo, iwae), float64 (N,)."""
    meta = dict(meta or {})
    settings = dict(k=k, seed=seed, split=meta.get("split", ""), q=cfg.q, dtype=cfg.dtype,
                    dataset=meta.get("dataset", cfg.dataset), checkpoint=meta.get("checkpoint", ""))
    per_call = max(1, chunk // min(k, chunk))
    block = block or per_call * -(-BLOCK_DATAPOINTS // per_call)      # whole decoder calls
    shared = dict(params=params, cfg=cfg, x=x, k=k, seed=seed, chunk=chunk)
    r = stages.run(out, "iwae", settings, len(x), block, compute, shared,
                   finite=("elbo", "iwae"), progress=progress, runner=runner)
    return r["elbo"], r["iwae"]


# Datapoints per saved block: at k = 5000 on one core a block is a few seconds of work, so an
# interrupted run loses little and the results file is rewritten rarely.
BLOCK_DATAPOINTS = 50
