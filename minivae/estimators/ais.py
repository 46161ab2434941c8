"""Annealed importance sampling from the prior to the posterior: log p^(x), encoder-free.

f_t(z) = p(z) p(x|z)^beta_t, beta_0 = 0 < ... < beta_T = 1. Each chain starts at z ~ p(z) with
log w = 0; for t = 1..T:  log w += (beta_t - beta_{t-1}) log p(x|z),  then (t < T) one HMC
transition leaving f_t invariant (the transition after the last update cannot change w).
log p^(x) = log mean_c w_c is a stochastic lower bound (E w = p(x)).

Datapoints x chains are the rows of one matrix (row = b * C + c), so every leapfrog step is one
decoder forward and backward over all of them. Datapoint i draws all its noise from
default_rng([seed, i, stream]): numbers do not depend on --block, --n or on a resume.
"""
from dataclasses import asdict, dataclass

import numpy as np

from . import evaluate, hmc
from ..model import fastpath, model
from .. import stages
from ..backend import get_xp, kernels, to_numpy
from ..errors import MinivaeError

FINAL, TUNE, REVERSE, SIMULATE = 0, 1, 2, 3   # noise streams per datapoint


@dataclass
class Settings:
    chains: int = 100
    steps: int = 500          # T annealing distributions after the prior
    leapfrog: int = 10
    schedule: str = "sigmoid"
    adapt: str = "per-chain"  # per-chain | tune-then-freeze
    target_accept: float = 0.65
    step0: float = 0.1        # first step size of every chain


def schedule(T, kind="sigmoid", delta=4.0):
    """beta_0..beta_T (T + 1,) float64 from 0 to 1. sigmoid: sigma(delta (2t/T - 1)) rescaled
    to [0, 1] (Grosse et al. 2015; Wu et al. 2017): small steps near both ends; linear: t/T."""
    t = np.arange(T + 1) / T
    if kind == "linear":
        return t
    if kind == "sigmoid":
        s = 1 / (1 + np.exp(-delta * (2 * t - 1)))
        return (s - s[0]) / (s[-1] - s[0])
    raise MinivaeError(f"unknown schedule {kind!r}: choose sigmoid or linear")


def likelihood_target(params, cfg, x, chains=1, impl="auto"):
    """target(z, need_value) -> (log p(x|z) (R,) or None, d/dz (R, Z)) for rows z: (R, Z).

    x: (N, D), once per datapoint; row r of z belongs to datapoint r // chains (datapoint-major).
    Calling it runs the reference, model.log_lik(need_grads=False) and its backward to z. Its
    `fused` is the hmc.Fused form on fastpath.Decoder with buffers for exactly N * chains rows,
    or None (impl="ref", or a model Decoder does not cover: conv, tanh, Gaussian).
    """
    if impl not in ("auto", "ref"):
        raise ValueError(f"impl must be auto or ref, not {impl!r}")
    if cfg.arch == "mlp" and cfg.likelihood not in ("bernoulli", "gaussian"):
        raise MinivaeError(f"AIS supports bernoulli and gaussian likelihoods, not {cfg.likelihood!r}")
    return LikelihoodTarget(params, cfg, x, chains, impl)


class LikelihoodTarget:
    """See likelihood_target."""

    def __init__(self, params, cfg, x, chains, impl):
        xp = get_xp(x)
        self.params, self.cfg = params, cfg
        self.x = xp.repeat(x, chains, axis=0) if chains > 1 else x      # (R, D)
        self.fused = None
        if impl == "auto" and fastpath.decoder_supported(cfg):
            x1, dec = xp.ascontiguousarray(x), fastpath.Decoder(params, len(x) * chains, x.dtype)

            def grad_log_f(z, beta, need_value):
                g, ll = dec(params, x1, z, chains, beta, need_value)
                return g, ll, dec.grad_ll

            self.fused = hmc.Fused(grad_log_f, dec.rows, cfg.latent, x.dtype, xp)

    def __call__(self, z, need_value=True):
        ll, back = model.log_lik(self.params, self.cfg, self.x, z, need_grads=False, need_value=need_value)
        dz, _ = back(get_xp(z).ones(z.shape[:-1], z.dtype))
        return ll, dz


class Noise:
    """Each transition's momenta (R, Z) and log-uniforms (R,), datapoint i's rows from rngs[i],
    drawn into buffers on the host (the same numbers on every device) and moved to x's device."""

    def __init__(self, rngs, C, Z, dtype, xp):
        self.rngs, self.C, self.xp, self.dtype = rngs, C, xp, dtype
        self.p0 = np.empty((len(rngs) * C, Z), dtype)
        self.log_u = np.empty(len(rngs) * C, dtype)

    def draw(self):
        C, dt = self.C, self.dtype
        for i, r in enumerate(self.rngs):
            r.standard_normal(dtype=dt, out=self.p0[i * C:(i + 1) * C])
        for i, r in enumerate(self.rngs):
            r.random(dtype=dt, out=self.log_u[i * C:(i + 1) * C])  # [0, 1)
        np.subtract(1, self.log_u, out=self.log_u)                 # (0, 1]: the log is finite
        np.log(self.log_u, out=self.log_u)
        if self.xp is np:
            return self.p0, self.log_u
        return self.xp.asarray(self.p0), self.xp.asarray(self.log_u)


def anneal(target, z, betas, rngs, s, step, frozen=False, progress=None, impl="auto"):
    """Run chains along betas (increasing: forward AIS; decreasing: reverse AIS).

    z: (B*C, Z) start states, rngs: one Generator per datapoint. step: (R,) first step sizes
    adapted per chain, or with frozen=True a (T-1, R) schedule used as is. impl="auto" runs the
    fused kernels when the target has them (hmc.hmc_transition), "ref" the NumPy reference.
    Returns log w (B, C) float64 and per-row statistics (accepts, NaN rejects, step sizes used).
    """
    xp, dt = get_xp(z), z.dtype
    R, Z = z.shape
    C = R // len(rngs)
    T = len(betas) - 1
    fused = hmc.fused_of(target, impl)
    if fused is None:
        ll, gll = target(z, need_value=True)
    else:                                                        # updated in place from here on
        z, step = z.copy(), step if frozen else step.copy()
        ll, gll = fused.start(z, dt.type(betas[0]))
    logw = xp.zeros(R, np.float64)                               # on the device: no sync per step
    acc, nan = xp.zeros(R, np.int64), xp.zeros(R, np.int64)
    steps = step if frozen else xp.empty((max(T - 1, 0), R), dt)  # (T-1, R) step sizes used
    noise = Noise(rngs, C, Z, dt, xp)
    tune = None if frozen else s.target_accept
    for t in range(1, T + 1):
        if fused is None:
            logw += (betas[t] - betas[t - 1]) * ll.astype(np.float64)
        else:
            kernels().ais_log_weight(logw, ll, betas[t] - betas[t - 1])
        if t == T:
            break
        p0, log_u = noise.draw()
        if frozen:
            step = steps[t - 1]
        else:
            steps[t - 1] = step
        z, ll, gll, a, bad, step = hmc.hmc_transition(z, ll, gll, target, dt.type(betas[t]), step, p0,
                                                      log_u, s.leapfrog, tune, impl)
        acc += a
        nan += bad
        if progress is not None and t % 20 == 1:                 # now and then: it syncs
            progress.update(0, transition=f"{t}/{T - 1}", accept=float(acc.sum() / (R * t)))
    return to_numpy(logw).reshape(-1, C), dict(accept=acc, nan=nan, steps=steps)


def chain_mean_steps(steps, C):
    """Step sizes (T-1, R) of a run -> each datapoint's geometric mean over its chains, (T-1, R):
    the frozen schedule of tune-then-freeze and of BDMC's reverse chains."""
    xp = get_xp(steps)
    T1, R = steps.shape
    g = xp.exp(xp.log(steps).reshape(T1, R // C, C).mean(2))     # (T-1, B)
    return xp.repeat(g, C, axis=1)                               # (T-1, R)


def summarize(logw, info, s):
    """Per-datapoint summary: weight statistics, acceptance rate, NaN rejects, last step size."""
    def per(a):                                                  # (R,) -> (B, C)
        return to_numpy(a).reshape(-1, s.chains)

    out = evaluate.weight_stats(logw)
    accept, nan = per(info["accept"]), per(info["nan"])
    last = info["steps"][-1] if len(info["steps"]) else np.full(accept.size, np.nan)
    out.update(accept=accept.sum(1) / (s.chains * max(s.steps - 1, 1)), nan=nan.sum(1),
               step=per(last).mean(1))
    return out


def forward(params, cfg, x, index, seed, s, progress=None, impl="auto"):
    """Forward AIS for datapoints x: (B, D) with split indices `index`; impl as in anneal.

    Returns (per-datapoint stats dict, log w (B, C), the step sizes of its transitions as a
    frozen schedule (T-1, R): each datapoint's geometric mean over its chains)."""
    xp = get_xp(x)
    C = s.chains
    target = likelihood_target(params, cfg, x, C, impl)
    betas = schedule(s.steps, s.schedule)

    def start(stream):
        rngs = stages.streams(seed, index, stream)
        z = xp.asarray(np.concatenate([r.standard_normal((C, cfg.latent), dtype=x.dtype) for r in rngs]))
        return z, rngs

    step0 = xp.full(len(index) * C, s.step0, x.dtype)
    if s.adapt == "tune-then-freeze":
        z, rngs = start(TUNE)
        _, tuned = anneal(target, z, betas, rngs, s, step0, progress=progress, impl=impl)
        z, rngs = start(FINAL)
        logw, info = anneal(target, z, betas, rngs, s, chain_mean_steps(tuned["steps"], C), frozen=True,
                            progress=progress, impl=impl)
    elif s.adapt == "per-chain":
        z, rngs = start(FINAL)
        logw, info = anneal(target, z, betas, rngs, s, step0, progress=progress, impl=impl)
    else:
        raise MinivaeError(f"unknown --adapt {s.adapt!r}: choose per-chain or tune-then-freeze")
    return summarize(logw, info, s), logw, chain_mean_steps(info["steps"], C)


def check_settings(s):
    evaluate.check_options(chains=s.chains, steps=s.steps, leapfrog=s.leapfrog, step0=s.step0)
    if not 0 < s.target_accept < 1:
        raise MinivaeError(f"--target-accept must lie in (0, 1), got {s.target_accept}")
    schedule(1, s.schedule)
    if s.adapt not in ("per-chain", "tune-then-freeze"):
        raise MinivaeError(f"unknown --adapt {s.adapt!r}: choose per-chain or tune-then-freeze")


def compute(index, params, cfg, x, s, seed, impl="auto", progress=None):
    """The stage's block function (see stages.run): forward AIS statistics of datapoints `index`."""
    return forward(params, cfg, x[index], index, seed, s, progress=progress, impl=impl)[0]


def run(params, cfg, x, out, s, seed=0, block=10, meta=None, progress=True, impl="auto", runner=None):
    """AIS for every row of x (N, D), saved to stage "ais" of `out` after each block; a run
    stopped part way continues after its last saved block (stages.run). Returns the
    per-datapoint arrays. impl="auto": the fused kernels where they cover the model, "ref":
    NumPy (same numbers to rounding; not part of the saved settings)."""
    check_settings(s)
    settings = dict(asdict(s), seed=seed, dtype=cfg.dtype, **(meta or {}))
    shared = dict(params=params, cfg=cfg, x=x, s=s, seed=seed, impl=impl)
    return stages.run(out, "ais", settings, len(x), block, compute, shared, finite=("estimate",),
                      progress=progress, runner=runner)
