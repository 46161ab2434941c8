"""Local q*: one approximate posterior per datapoint, fitted to its own ELBO (paper 6.4).

All datapoints of a block form ONE batched problem: h (N, P) and the family's per-datapoint
nets (leading axis N) take Adam steps together, one Adam state per datapoint; the decoder is
fixed. The parameters, gradients and moments are views of flat (N, P) buffers (_Rows), so the
Adam step is one kernel call. Stopping rule: every `check_every` steps the mean of the last
`check_every` ELBOs is compared with the best mean so far; a datapoint stops after `patience`
checks in a row without improvement (or at `max_steps`, rounded down to a multiple of
`check_every`), with the parameters of its best check. A stopped datapoint leaves the working set
(its rows are compacted away), so it costs nothing further and its parameters are never written
again. Blocks are saved as they finish, so a run resumes.

Why the best check, not the last step (the authors' scripts keep the last): a flow q* from
N(0, I) can, rarely, run away after thousands of sound steps. One tail sample's log w falls by
orders of magnitude (the coupling's contraction and r's precision are unbounded), Adam follows
its huge gradient, and the fit either leaves float32's range within tens of steps or ends,
finite, hundreds of nats below its best, where the stopping rule then stops it. Keeping the best
check returns the q* the fit had found; for a fit that did not run away, the best check and the
last step lie within the window means' noise. A datapoint whose log w or gradient turns
non-finite takes no step on it and stops at once (the initial parameters, if before its first
check): it is the row with converged False and steps below the last step (`diverged`).
(Until 2026-12-06 a stopped row kept its last step's parameters.)
"""
import numpy as np

from ..model import fastpath, fused_flow, fused_fullcov, model
from .. import stages
from ..backend import get_xp, to_numpy
from ..errors import MinivaeError
from ..model.objectives import log_weights
from ..model.optim import batched_adam_step
from ..model.posteriors import get_family

DEFAULTS = dict(init="prior", max_steps=20000, samples=100, lr=1e-3, check_every=100, patience=10,
                final_samples=5000, block=100, seed=0, impl="auto")
NOT_SETTINGS = ("block", "impl")   # how blocks are run: a resumed stage may change them


class _Rows:
    """Per-datapoint arrays (N, ...) as views of one C-contiguous (N, P) buffer `flat`, so that
    the batched Adam is one kernel call over all of them; take(keep) moves the kept rows to the
    front, in place, and the views follow (no reallocation as datapoints stop)."""

    def __init__(self, like, xp, copy=True):
        self.shapes = [(k, v.shape[1:]) for k, v in like.items()]
        n, dtype = len(like["h"]), like["h"].dtype
        self.buf = xp.zeros((n, sum(int(np.prod(s)) for _, s in self.shapes)), dtype)
        self._view(n)
        if copy:
            for k, v in like.items():
                self.views[k][...] = v

    def _view(self, n):
        self.flat, at, self.views = self.buf[:n], 0, {}
        for k, shape in self.shapes:
            size = int(np.prod(shape))
            self.views[k] = self.flat[:, at:at + size].reshape((n,) + shape)
            at += size

    def take(self, keep, values=True):
        """Keep rows `keep` (ascending NumPy indices), moved to the front."""
        if values:
            for i, j in enumerate(keep):
                if i != j:                      # j >= i: rows move forward, none is overwritten early
                    self.buf[i] = self.buf[j]
        self._view(len(keep))


def fit_local(params, cfg, family, x, rngs, max_steps=20000, samples=100, lr=1e-3,
              check_every=100, patience=10, on_check=None, h0=None, impl="auto"):
    """Maximise each row's ELBO over its own q: x (N, D) -> dict(local params (N, ...) under
    "h" and the family's `q.*` keys, each row's at its best check), steps (N,), converged (N,),
    trace (N, max_steps // check_every) of the window-mean ELBO at each check, NaN after the
    stop). on_check(step, rows, local).
    h0: starting h (N, P) instead of the family's N(0, I) (see `encoder_init`).
    impl="auto": the fused paths where they apply (with an ELU/Bernoulli decoder:
    fastpath.QStarFFG, fused_flow.QStarFlow, fused_fullcov.QStarFullCov; else the dz-only
    decoder; the Adam kernel); "ref":
    objectives.log_weights and NumPy Adam throughout. Same numbers up to float rounding.
    rngs: one Generator per row (stages.streams), so a row's numbers do not depend on the
    others; or one Generator, split into one per row."""
    xp = get_xp(x)
    n = x.shape[0]
    rngs = per_row(rngs, n)
    n_checks = max_steps // check_every
    h, nets = init_rows(family, rngs, x.dtype, xp)
    if h0 is not None:
        h = h0.astype(x.dtype, copy=True)
    local = {"h": h, **nets}
    trace = np.full((n, n_checks), np.nan)
    steps, converged = np.zeros(n, np.int64), np.zeros(n, bool)
    best, bad = np.full(n, -np.inf), np.zeros(n, np.int64)

    rows = np.arange(n)                                   # datapoints still running
    work = _Rows(local, xp)                               # their parameters, compacted
    kept = _Rows(local, xp)                               # ... at their best check
    g, m, v = (_Rows(local, xp, copy=False) for _ in range(3))    # gradients, Adam moments
    t = xp.zeros(n, dtype=xp.int64)                       # Adam step counts
    xa, on = x, xp.ones(n, dtype=bool)
    window = xp.zeros((n, check_every))                   # ELBOs since the last check
    gradient = ((impl != "ref" and _fast_gradient(params, cfg, family, x, samples))
                or _gradient(params, cfg, family, impl))
    last = n_checks * check_every
    for step in range(1, last + 1):
        eps = normal_rows([rngs[i] for i in rows], (samples, family.noise_dim), xa)
        with np.errstate(over="ignore", invalid="ignore"):     # caught just below
            _, logw = gradient(work.views, xa, eps, out=g.views)
        blown = ~to_numpy(xp.isfinite(logw).all(1) & xp.isfinite(g.flat).all(1))
        if blown.any():
            on[xp.asarray(np.flatnonzero(blown))] = False  # no step on it: it stops below
        adam = dict(m={"rows": m.flat}, v={"rows": v.flat}, t=t)
        batched_adam_step({"rows": work.flat}, {"rows": g.flat}, adam, lr, on, impl=impl)
        window[:, (step - 1) % check_every] = logw.mean(1)
        stop = blown
        if step % check_every == 0:
            mean = to_numpy(window.mean(1))
            trace[rows[~blown], step // check_every - 1] = mean[~blown]
            better = ~blown & (mean > best[rows])
            if better.any():
                sel = xp.asarray(np.flatnonzero(better))
                kept.flat[sel] = work.flat[sel]
                best[rows[better]] = mean[better]
            bad[rows] = np.where(better, 0, bad[rows] + 1)
            done = ~blown & (bad[rows] >= patience)
            converged[rows[done]] = True
            stop = blown | done | (step == last)
        if stop.any():
            steps[rows[stop]] = step
            sel, keep_at = xp.asarray(np.flatnonzero(stop)), np.flatnonzero(~stop)
            for k in local:                                # the best check's parameters
                local[k][xp.asarray(rows[stop])] = kept.views[k][sel]
            rows, keep = rows[~stop], xp.asarray(keep_at)
            for r in (work, kept, m, v):
                r.take(keep_at)
            g.take(keep_at, values=False)
            xa, on, window, t = xa[keep], on[keep], window[keep], t[keep]
        if step % check_every == 0 and on_check is not None:
            on_check(step, rows, local)
        if not len(rows):
            break
    return dict(local=local, steps=steps, converged=converged, trace=trace)


def per_row(rngs, n):
    """One Generator per row: rngs itself if it is a sequence, else rngs.spawn(n)."""
    return list(rngs) if isinstance(rngs, (list, tuple)) else rngs.spawn(n)


def init_rows(family, rngs, dtype, xp):
    """The family's q* initialisation, row i drawn from rngs[i]: (h (N, P), nets (N, ...))."""
    parts = [family.init_local(r, 1, dtype, xp) for r in rngs]
    h = xp.concatenate([p[0] for p in parts])
    return h, {k: xp.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}


def normal_rows(rngs, shape, like):
    """Standard normals (N, *shape) on like's device and dtype, row i from rngs[i]."""
    xp = get_xp(like)
    return xp.asarray(np.stack([r.standard_normal(shape, dtype=like.dtype) for r in rngs]))


def _gradient(params, cfg, family, impl):
    """(work, x, eps) -> (d mean_s log w / d work, log w (N, S)) by objectives.log_weights:
    any family (impl="ref": the reference; else the decoder part fused where it can be)."""
    dlogw, workspace = [], (None if impl == "ref" else {})

    def gradient(work, x, eps, out=None):
        logw, back = log_weights({**params, **work}, cfg, family, x, work["h"], eps,
                                 decoder_grads=False, workspace=workspace)
        if not dlogw or dlogw[0].shape != logw.shape:
            dlogw[:] = [get_xp(x).full(logw.shape, 1.0 / eps.shape[1], dtype=logw.dtype)]
        dh, grads = back(dlogw[0])
        return _into(out, {"h": dh, **{k: grads[k] for k in work if k != "h"}}), logw

    return gradient


def _fast_gradient(params, cfg, family, x, samples):
    """The same by fastpath.QStarFFG, fused_flow.QStarFlow or fused_fullcov.QStarFullCov where
    they apply (ELU, Bernoulli decoder), else None."""
    if not fastpath.decoder_supported(cfg) or x.dtype != params["dec.fc0.W"].dtype:
        return None                                   # (a conv model has no dec.fc0.W)
    if fused_flow.supports(cfg, family):
        return fused_flow.QStarFlow(params, family, samples)
    if fused_fullcov.supports(cfg, family):
        return fused_fullcov.QStarFullCov(params, family.Z, samples)
    if not fastpath.supports(cfg, family):
        return None
    step = fastpath.QStarFFG(params, x.shape[0], samples)

    def gradient(work, x, eps, out=None):
        dh, logw = step(params, x, work["h"], eps)
        return _into(out, {"h": dh}), logw

    return gradient


def _into(out, grads):
    """grads, copied into the arrays of `out` if given (the gradient's out= convention)."""
    if out is None:
        return grads
    for k, a in grads.items():
        out[k][...] = a
    return out


def encoder_init(params, cfg, q, x):
    """h of q* started at the trained encoder's q(z|x) (q(z0|x) for a flow), instead of the
    paper's N(0, I): a warm start that reaches the same optimum in far fewer steps."""
    if cfg.q == "fullcov" or q == "fullcov":
        raise MinivaeError("--init encoder needs an FFG or flow encoder and q*; use --init prior")
    return model.encode(params, cfg, x)[0][:, :2 * cfg.latent]


def local_elbo(params, cfg, family, x, local, rngs, samples=5000, chunk=100):
    """L_VAE[q*] per row with `samples` samples drawn `chunk` at a time from the row's own
    generator (a fixed chunk, so the float64 sums do not depend on the rows beside it):
    (mean (N,), its Monte Carlo standard error (N,)), float64."""
    xp = get_xp(x)
    n = x.shape[0]
    rngs = per_row(rngs, n)
    p = {**params, **local}
    s1, s2 = xp.zeros(n), xp.zeros(n)
    for start in range(0, samples, chunk):
        eps = normal_rows(rngs, (min(chunk, samples - start), family.noise_dim), x)
        logw = log_weights(p, cfg, family, x, local["h"], eps)[0].astype(xp.float64)
        s1 += logw.sum(1)
        s2 += (logw * logw).sum(1)
    mean = s1 / samples
    var = xp.maximum(s2 / samples - mean * mean, 0) / max(samples - 1, 1)
    return to_numpy(mean), to_numpy(xp.sqrt(var))


def check_settings(s, cfg):
    """One line for settings that cannot work (the CLI's types catch them earlier)."""
    for name in ("max_steps", "samples", "check_every", "patience", "final_samples", "block"):
        if s[name] < 1:
            raise MinivaeError(f"--{name.replace('_', '-')} must be at least 1 (got {s[name]})")
    if s["init"] not in ("prior", "encoder"):
        raise MinivaeError(f"unknown --init {s['init']!r}: choose prior or encoder")
    if s["init"] == "encoder":
        model.require_encoder(cfg, "--init encoder")
    if s["max_steps"] < s["check_every"]:
        raise MinivaeError(f"--max-steps ({s['max_steps']}) must be at least --check-every "
                           f"({s['check_every']})")


def compute(index, params, cfg, x, q, s, progress=None):
    """The stage's block function (see stages.run): fit q* of family q on datapoints `index`
    and estimate L_VAE[q*]. Datapoint i's noise (its init, every step, the final estimate)
    comes from default_rng([seed, i]) alone."""
    family = get_family(cfg.replace(q=q))
    xp = get_xp(next(iter(params.values())))
    xb = xp.asarray(x[index], dtype=np.dtype(cfg.dtype))
    rngs = stages.streams(s["seed"], index)

    def report(step, rows, local):
        if progress is not None:
            progress.update(0, step=step, running=len(rows))

    h0 = encoder_init(params, cfg, q, xb) if s["init"] == "encoder" else None
    fit = fit_local(params, cfg, family, xb, rngs, s["max_steps"], s["samples"], s["lr"],
                    s["check_every"], s["patience"], on_check=report, h0=h0, impl=s["impl"])
    elbo, se = local_elbo(params, cfg, family, xb, fit["local"], rngs, s["final_samples"])
    return dict(elbo=elbo, elbo_se=se, steps=fit["steps"], converged=fit["converged"], trace=fit["trace"])


def run(params, cfg, x, q, out, settings=None, meta=None, progress=True, runner=None):
    """Fit q* of family `q` on every row of x (N, D), saving stage `localopt_{q}` of results
    file `out` after each block; a rerun resumes (stages.run). Returns the stage's arrays."""
    s = {**DEFAULTS, **(settings or {})}
    check_settings(s, cfg)
    get_family(cfg.replace(q=q))
    settings = dict(q=q, dtype=cfg.dtype, **{k: v for k, v in s.items() if k not in NOT_SETTINGS},
                    **(meta or {}))
    shared = dict(params=params, cfg=cfg, x=x, q=q, s=s)
    return stages.run(out, f"localopt_{q}", settings, len(x), s["block"], compute, shared,
                      finite=("elbo",), progress=progress, runner=runner, what=f"localopt {q} datapoints")


def diverged(steps, converged, max_steps, check_every):
    """The rows that stopped at a non-finite step (see the module docstring): not converged, and
    stopped before the last step."""
    return ~np.asarray(converged, bool) & (np.asarray(steps) < max_steps // check_every * check_every)


def stop_note(q, converged, steps, settings):
    """One line on how the rows of stage localopt_<q> stopped, or None when all converged by
    the stopping rule. settings: the stage's (max_steps, check_every)."""
    conv = np.asarray(converged, bool)
    if conv.all():
        return None
    div = diverged(steps, conv, int(settings["max_steps"]), int(settings["check_every"]))
    parts = []
    if (~conv & ~div).any():
        parts.append(f"{int((~conv & ~div).sum())} stopped at --max-steps {int(settings['max_steps'])}")
    if div.any():
        parts.append(f"{int(div.sum())} stopped early where log w or its gradient turned non-finite")
    return (f"note: q*_{q} converged by the stopping rule for {int(conv.sum())}/{len(conv)} "
            f"datapoints; of the others, {', '.join(parts)}")
