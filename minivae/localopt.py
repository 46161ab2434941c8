"""Local q*: one approximate posterior per datapoint, fitted to its own ELBO (paper 6.4).

All datapoints of a block form ONE batched problem: h (N, P) and the family's per-datapoint
nets (leading axis N) take Adam steps together, one Adam state per datapoint; the decoder is
fixed. Stopping rule: every `check_every` steps the mean of the last `check_every` ELBOs is
compared with the best mean so far; a datapoint stops after `patience` checks in a row without
improvement (or at `max_steps`, rounded down to a multiple of `check_every`). A stopped
datapoint leaves the working set (its rows are compacted away), so it costs nothing further
and its parameters are never written again. Blocks are saved as they finish, so a run resumes.
"""
import numpy as np

from . import fastpath, io
from .backend import get_xp, normal, to_numpy
from .errors import MinivaeError
from .objectives import log_weights
from .optim import batched_adam_init, batched_adam_step
from .posteriors import get_family
from .progress import Progress

DEFAULTS = dict(init="prior", max_steps=20000, samples=100, lr=1e-3, check_every=100, patience=10,
                final_samples=5000, block=100, seed=0)


def _take(d, sel):
    return {k: v[sel] for k, v in d.items()}


def fit_local(params, cfg, family, x, rng, max_steps=20000, samples=100, lr=1e-3,
              check_every=100, patience=10, on_check=None, h0=None, impl="auto"):
    """Maximise each row's ELBO over its own q: x (N, D) -> dict(local params (N, ...) under
    "h" and the family's `q.*` keys, steps (N,), converged (N,), trace (N, max_steps // check_every)
    of the window-mean ELBO at each check, NaN after the stop). on_check(step, rows, local).
    h0: starting h (N, P) instead of the family's N(0, I) (see `encoder_init`).
    impl="auto": the fused paths where they apply (fastpath.QStarFFG for an FFG with an
    ELU/Bernoulli decoder, the dz-only decoder for other families, the Adam kernel); "ref":
    objectives.log_weights and NumPy Adam throughout. Same numbers up to float rounding."""
    xp = get_xp(x)
    n = x.shape[0]
    n_checks = max_steps // check_every
    h, nets = family.init_local(rng, n, x.dtype, xp)
    if h0 is not None:
        h = h0.astype(x.dtype, copy=True)
    local = {"h": h, **nets}
    trace = np.full((n, n_checks), np.nan)
    steps, converged = np.zeros(n, np.int64), np.zeros(n, bool)
    best, bad = np.full(n, -np.inf), np.zeros(n, np.int64)

    rows = np.arange(n)                                   # datapoints still running
    work = {k: v.copy() for k, v in local.items()}        # their parameters, compacted
    adam = batched_adam_init(work, n)
    xa, on = x, xp.ones(n, dtype=bool)
    window = xp.zeros((n, check_every))                   # ELBOs since the last check
    gradient = ((impl != "ref" and _fast_gradient(params, cfg, family, x, samples))
                or _gradient(params, cfg, family, impl))
    for step in range(1, n_checks * check_every + 1):
        eps = normal(rng, (len(rows), samples, family.noise_dim), xa)
        grads, logw = gradient(work, xa, eps)
        batched_adam_step(work, grads, adam, lr, on, impl=impl)
        window[:, (step - 1) % check_every] = logw.mean(1)
        if step % check_every:
            continue
        mean = to_numpy(window.mean(1))
        trace[rows, step // check_every - 1] = mean
        better = mean > best[rows]
        best[rows] = np.where(better, mean, best[rows])
        bad[rows] = np.where(better, 0, bad[rows] + 1)
        stop = bad[rows] >= patience
        converged[rows[stop]] = True
        if step == n_checks * check_every:
            stop[:] = True
        if stop.any():
            steps[rows[stop]] = step
            sel, keep = xp.asarray(np.flatnonzero(stop)), xp.asarray(np.flatnonzero(~stop))
            for k in local:
                local[k][xp.asarray(rows[stop])] = work[k][sel]
            rows = rows[~stop]
            work, xa, on, window = _take(work, keep), xa[keep], on[keep], window[keep]
            adam = dict(m=_take(adam["m"], keep), v=_take(adam["v"], keep), t=adam["t"][keep])
        if on_check is not None:
            on_check(step, rows, local)
        if not len(rows):
            break
    return dict(local=local, steps=steps, converged=converged, trace=trace)


def _gradient(params, cfg, family, impl):
    """(work, x, eps) -> (d mean_s log w / d work, log w (N, S)) by objectives.log_weights:
    any family (impl="ref": the reference; else the decoder part fused where it can be)."""
    dlogw, workspace = [], (None if impl == "ref" else {})

    def gradient(work, x, eps):
        logw, back = log_weights({**params, **work}, cfg, family, x, work["h"], eps,
                                 decoder_grads=False, workspace=workspace)
        if not dlogw or dlogw[0].shape != logw.shape:
            dlogw[:] = [get_xp(x).full(logw.shape, 1.0 / eps.shape[1], dtype=logw.dtype)]
        dh, grads = back(dlogw[0])
        return {"h": dh, **{k: grads[k] for k in work if k != "h"}}, logw

    return gradient


def _fast_gradient(params, cfg, family, x, samples):
    """The same by fastpath.QStarFFG where it applies (FFG, ELU, Bernoulli), else None."""
    if not fastpath.supports(cfg, family) or x.dtype != params["dec.fc0.W"].dtype:
        return None
    step = fastpath.QStarFFG(params, x.shape[0], samples)

    def gradient(work, x, eps):
        dh, logw = step(params, x, work["h"], eps)
        return {"h": dh}, logw

    return gradient


def encoder_init(params, cfg, q, x):
    """h of q* started at the trained encoder's q(z|x) (q(z0|x) for a flow), instead of the
    paper's N(0, I): a warm start that reaches the same optimum in far fewer steps."""
    if cfg.q == "fullcov" or q == "fullcov":
        raise MinivaeError("--init encoder needs an FFG or flow encoder and q*; use --init prior")
    from .model import encode
    return encode(params, cfg, x)[0][:, :2 * cfg.latent]


def local_elbo(params, cfg, family, x, local, rng, samples=5000, budget=2 ** 22):
    """L_VAE[q*] per row with `samples` samples, in chunks of about `budget` decoder outputs:
    (mean (N,), its Monte Carlo standard error (N,)), float64."""
    xp = get_xp(x)
    n = x.shape[0]
    chunk = max(1, min(samples, budget // max(1, n * x.shape[1])))
    p = {**params, **local}
    s1, s2 = xp.zeros(n), xp.zeros(n)
    for start in range(0, samples, chunk):
        eps = normal(rng, (n, min(chunk, samples - start), family.noise_dim), x)
        logw = log_weights(p, cfg, family, x, local["h"], eps)[0].astype(xp.float64)
        s1 += logw.sum(1)
        s2 += (logw * logw).sum(1)
    mean = s1 / samples
    var = xp.maximum(s2 / samples - mean * mean, 0) / max(samples - 1, 1)
    return to_numpy(mean), to_numpy(xp.sqrt(var))


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def check_settings(out, stage, prev_attrs, attrs):
    """A clear error when a stage in `out` was made with other settings than `attrs`. A setting
    the stage does not record (written before it existed) counts as its default."""
    def old(k):
        return _plain(prev_attrs[k]) if k in prev_attrs else DEFAULTS.get(k)

    diff = [f"{k}: {old(k)!r} there vs {v!r} now" for k, v in attrs.items() if old(k) != v]
    if diff:
        raise MinivaeError(f"{out} already holds stage {stage} made with other settings "
                           f"({'; '.join(diff)}): pass the same settings to resume, or another --out")


def run(params, cfg, x, q, out, settings=None, meta=None, progress=True, stop_after=None):
    """Fit q* of family `q` on every row of x (N, D) block by block, saving stage
    `localopt_{q}` of results file `out` after each block and resuming after the last saved
    one. Returns the stage's arrays. stop_after: end after this many new blocks (tests)."""
    s = {**DEFAULTS, **(settings or {})}
    for name in ("max_steps", "samples", "check_every", "patience", "final_samples", "block"):
        if s[name] < 1:
            raise MinivaeError(f"--{name.replace('_', '-')} must be at least 1 (got {s[name]})")
    if s["init"] not in ("prior", "encoder"):
        raise MinivaeError(f"unknown --init {s['init']!r}: choose prior or encoder")
    if s["init"] == "encoder":
        from .model import require_encoder
        require_encoder(cfg, "--init encoder")
    if s["max_steps"] < s["check_every"]:
        raise MinivaeError(f"--max-steps ({s['max_steps']}) must be at least --check-every "
                           f"({s['check_every']})")
    family = get_family(cfg.replace(q=q))
    xp = get_xp(next(iter(params.values())))
    n, stage = len(x), f"localopt_{q}"
    attrs = dict(q=q, n=n, dtype=cfg.dtype, **s, **(meta or {}))
    n_blocks = -(-n // s["block"])
    prev = io.load_results(out, stage)
    if prev is not None:
        check_settings(out, stage, prev[1], attrs)
        arrays, done = prev[0], int(prev[1]["blocks_done"])
    else:
        arrays = dict(elbo=np.full(n, np.nan), elbo_se=np.full(n, np.nan),
                      steps=np.zeros(n, np.int64), converged=np.zeros(n, bool),
                      trace=np.full((n, s["max_steps"] // s["check_every"]), np.nan))
        done = 0
    bar = Progress(n - min(n, done * s["block"]), f"localopt {q}", enabled=progress)
    for b in range(done, n_blocks if stop_after is None else min(n_blocks, done + stop_after)):
        rng = np.random.default_rng([s["seed"], b])
        lo, hi = b * s["block"], min(n, (b + 1) * s["block"])
        xb = xp.asarray(x[lo:hi], dtype=np.dtype(cfg.dtype))

        def report(step, rows, local):
            bar.update(0, block=f"{b + 1}/{n_blocks}", step=step, running=len(rows))

        h0 = encoder_init(params, cfg, q, xb) if s["init"] == "encoder" else None
        fit = fit_local(params, cfg, family, xb, rng, s["max_steps"], s["samples"], s["lr"],
                        s["check_every"], s["patience"], on_check=report, h0=h0)
        elbo, se = local_elbo(params, cfg, family, xb, fit["local"], rng, s["final_samples"])
        arrays["elbo"][lo:hi], arrays["elbo_se"][lo:hi] = elbo, se
        for k in ("steps", "converged", "trace"):
            arrays[k][lo:hi] = fit[k]
        io.save_results(out, stage, arrays, {**attrs, "blocks_done": b + 1})
        bar.update(hi - lo, block=f"{b + 1}/{n_blocks}", running=0)
    bar.close()
    return arrays


def settings_from_options(opts):
    return {k: opts[k] for k in DEFAULTS}


def run_from_cli(opts):
    from . import evaluate
    evaluate.check_options(n=opts["n"])
    params, cfg, xp = evaluate.load_model(opts["ckpt"], opts["device"], opts["dtype"])
    get_family(cfg.replace(q=opts["q"]))  # fail early on an unsupported family
    x = evaluate.load_data(cfg, opts["split"], opts["n"], opts["data_dir"], xp)
    meta = dict(checkpoint=evaluate.file_digest(opts["ckpt"]), split=opts["split"], dataset=cfg.dataset)
    e = run(params, cfg, x, opts["q"], opts["out"], settings_from_options(opts), meta)
    se = e["elbo"].std(ddof=1) / np.sqrt(len(e["elbo"])) if len(e["elbo"]) > 1 else float("nan")
    print(f"localopt {opts['q']}: n={len(e['elbo'])}  mean L_VAE[q*_{opts['q']}]={e['elbo'].mean():.4f} "
          f"+- {se:.4f}  converged {int(e['converged'].sum())}/{len(e['elbo'])}, median "
          f"{int(np.median(e['steps']))} steps -> {opts['out']} [localopt_{opts['q']}]")
