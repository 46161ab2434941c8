"""Bidirectional Monte Carlo (Grosse et al. 2015): sandwich log p(x) on simulated data.

For x simulated from the model (z ~ p(z), x ~ p(x|z)) the z that made x is an exact sample of
p(z|x). Forward AIS (prior -> posterior) gives log mean_c w_c, a stochastic lower bound;
reverse AIS from that z (beta 1 -> 0) has E w' = 1 / p(x), so -log mean_c w'_c is a stochastic
upper bound. The width upper - lower bounds the error of forward AIS with these settings on data
like this. Datapoint i is simulated from default_rng([seed, i, 3]).
"""
from dataclasses import asdict

import numpy as np

from . import evaluate
from ..model import model
from .. import stages
from .ais import (REVERSE, SIMULATE, anneal, check_settings, forward, likelihood_target, schedule,
                  summarize)
from ..stages import streams
from ..backend import get_xp
from ..errors import MinivaeError


def simulate(params, cfg, index, seed=0, xp=np):
    """(x (N, D), z (N, Z)) in cfg.dtype: z ~ N(0, I), x ~ p(x|z) (Bernoulli, Gaussian or
    discretized logistic: pixel clip(floor((mean + s logit(u)) 256), 0, 255) / 256, u ~ U(0, 1))."""
    rngs = streams(seed, index, SIMULATE)
    z = np.stack([r.standard_normal(cfg.latent) for r in rngs])
    noise = np.stack([r.standard_normal(cfg.data_dim) if cfg.likelihood == "gaussian"
                      else r.random(cfg.data_dim) for r in rngs])
    z = xp.asarray(z.astype(cfg.dtype))
    out, _ = model.decode(params, cfg, z)                              # (N, D)
    if cfg.likelihood == "logistic":
        return _simulate_logistic(out, xp.asarray(noise)).astype(cfg.dtype), z
    out = get_xp(out).asarray(out, np.float64)
    if cfg.likelihood == "bernoulli":
        x = (xp.asarray(noise) < 0.5 * (xp.tanh(0.5 * out) + 1))
    elif cfg.likelihood == "gaussian":
        x = out + cfg.obs_std * xp.asarray(noise)
    else:
        raise MinivaeError(f"BDMC cannot simulate a {cfg.likelihood!r} likelihood")
    return x.astype(cfg.dtype), z


def _simulate_logistic(out, u):
    """Pixels k/256 from the conv decoder's (mean (N, D), log-scale per channel (N, 3)) and
    uniforms u (N, D) in [0, 1): the bin of a logistic sample, edge bins taking the tails."""
    xp = get_xp(u)
    mean, log_scale = (xp.asarray(a, np.float64) for a in out)
    s = xp.repeat(xp.exp(log_scale), mean.shape[1] // log_scale.shape[1], axis=1)
    u = xp.clip(u, 1e-300, None)                                       # u = 0 would give logit -inf
    y = mean + s * (xp.log(u) - xp.log1p(-u))                          # logistic(mean, s) sample
    return xp.clip(xp.floor(y * 256), 0, 255) / 256


def reverse(params, cfg, x, z, index, seed, s, sched, progress=None, impl="auto"):
    """Reverse AIS from exact posterior samples z (B, Z) with a frozen step schedule sched
    (T-1, R) of a forward run, used backwards. Per-datapoint stats; `estimate` = log mean_c w'_c
    (E w' = 1 / p(x)). Frozen steps keep the reverse chains valid and spare them the lag of
    re-adapting while beta falls."""
    xp, C = get_xp(x), s.chains
    target = likelihood_target(params, cfg, x, C, impl)
    logw, info = anneal(target, xp.repeat(z, C, axis=0), schedule(s.steps, s.schedule)[::-1],
                        streams(seed, index, REVERSE), s, sched[::-1], frozen=True, progress=progress,
                        impl=impl)
    return summarize(logw, info, s)


def sandwich(params, cfg, x, z, index, seed, s, progress=None, impl="auto"):
    """Forward and reverse AIS on simulated (x, z): dict of per-datapoint arrays."""
    fwd, _, sched = forward(params, cfg, x, index, seed, s, progress, impl)
    rev = reverse(params, cfg, x, z, index, seed, s, sched, progress, impl)
    lower, upper = fwd["estimate"], -rev["estimate"]
    return dict(lower=lower, upper=upper, width=upper - lower, ess_fwd=fwd["ess"], ess_rev=rev["ess"],
                accept_fwd=fwd["accept"], accept_rev=rev["accept"], nan=fwd["nan"] + rev["nan"],
                z=z, x=x)


def compute(index, params, cfg, s, seed, impl="auto", progress=None):
    """The stage's block function (see stages.run): simulate datapoints `index`, then their
    BDMC sandwich."""
    x, z = simulate(params, cfg, index, seed, get_xp(next(iter(params.values()))))
    return sandwich(params, cfg, x, z, index, seed, s, progress, impl)


def run(params, cfg, n, out, s, seed=0, block=10, meta=None, progress=True, impl="auto", runner=None):
    """BDMC on n datapoints simulated from the model, saved to stage "bdmc" after each block
    (a stopped run resumes, stages.run). Returns the per-datapoint arrays."""
    check_settings(s)
    evaluate.check_options(n=n)
    settings = dict(asdict(s), seed=seed, dtype=cfg.dtype, **(meta or {}))
    shared = dict(params=params, cfg=cfg, s=s, seed=seed, impl=impl)
    return stages.run(out, "bdmc", settings, n, block, compute, shared, finite=("lower", "upper"),
                      progress=progress, runner=runner)
