"""Bounds -> the inference-gap table (paper 3.1, Table 2).

Per datapoint i (all stages hold the same first N datapoints of one split):
  log p^(x)_i   = max(L_IWAE[q]_i, L_AIS_i)          (the max is taken per datapoint)
  Approximation = log p^(x)_i - L_VAE[q*]_i
  Amortization  = L_VAE[q*]_i - L_VAE[q]_i
  Inference     = log p^(x)_i - L_VAE[q]_i           (= Approximation + Amortization)
where q* is of the family the model was trained with (paper Table 2); for a model trained
with a full-covariance q, `gaps` also fits a local full-covariance q* and uses it (Table 10
shows bounds only; without that stage the gap rows are n/a). Each row is the mean over
datapoints with its standard error std_i / sqrt(N) (gaps: of the per-datapoint differences).
"""
import csv
import io as _io
import json
import math

import numpy as np

from .. import io, outputs
from ..errors import MinivaeError
from . import ais, iwae, localopt

LABELS = dict(logp="log p^(x)", qstar_flow="L_VAE[q*_Flow]", qstar_ffg="L_VAE[q*_FFG]",
              qstar_fullcov="L_VAE[q*_FullCov]", elbo="L_VAE[q]",
              approximation="Approximation", amortization="Amortization", inference="Inference",
              iwae="L_IWAE[q]", ais="L_AIS")
FORMATS = ("table", "markdown", "json", "csv")


def _row(key, values):
    if values is None:
        return dict(key=key, label=LABELS[key], mean=None, se=None, n=0)
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return dict(key=key, label=LABELS[key], mean=float(v.mean()), se=se, n=len(v))


def gap_table(results, trained_q):
    """Rows of the paper's Table 2 column for a model trained with family `trained_q`.

    results: per-datapoint bounds (N,) under any of "elbo" (L_VAE[q]), "iwae", "ais",
    "qstar_ffg", "qstar_flow", "qstar_fullcov"; a missing one gives rows with mean None.
    Returns a list of dict(key, label, mean, se, n): log p^(x), the q* bounds, L_VAE[q], the
    three gaps, then L_IWAE[q] and L_AIS (the parts of log p^(x)).
    """
    r = {k: np.asarray(v, dtype=np.float64) for k, v in results.items() if v is not None}
    sizes = {k: len(v) for k, v in r.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"bounds over different numbers of datapoints: {sizes}")
    tight = [r[k] for k in ("iwae", "ais") if k in r]
    logp = np.maximum.reduce(tight) if tight else None
    qstar = r.get(f"qstar_{trained_q}")
    elbo = r.get("elbo")

    def diff(a, b):
        return None if a is None or b is None else a - b

    qstar_keys = ["qstar_flow", "qstar_ffg"] + (["qstar_fullcov"] if trained_q == "fullcov"
                                                or "qstar_fullcov" in r else [])
    return ([_row("logp", logp)] + [_row(k, r.get(k)) for k in qstar_keys]
            + [_row("elbo", elbo), _row("approximation", diff(logp, qstar)),
               _row("amortization", diff(qstar, elbo)), _row("inference", diff(logp, elbo)),
               _row("iwae", r.get("iwae")), _row("ais", r.get("ais"))])


def _cell(row, digits=2):
    if row["mean"] is None:
        return "n/a"
    se = "" if math.isnan(row["se"]) else f" +- {row['se']:.{digits}f}"
    return f"{row['mean']:.{digits}f}{se}"


def format_rows(rows, fmt="table", trained_q="ffg", meta=None):
    """The table as text: an aligned plain table, markdown, JSON or CSV."""
    meta = dict(meta or {})
    n = max((r["n"] for r in rows), default=0)
    if fmt == "json":
        clean = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
                 for r in rows]
        return json.dumps(dict(trained_q=trained_q, n=n, **meta, rows=clean), indent=2)
    if fmt == "csv":
        buf = _io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["key", "label", "mean", "se", "n"])
        for r in rows:
            w.writerow([r["key"], r["label"], "" if r["mean"] is None else repr(r["mean"]),
                        "" if r["se"] is None else repr(r["se"]), r["n"]])
        return buf.getvalue().rstrip("\n")
    head = f"trained q_{trained_q.upper() if trained_q == 'ffg' else trained_q.capitalize()}"
    if fmt == "markdown":
        lines = [f"| nats (mean +- s.e., {n} datapoints) | {head} |", "| --- | ---: |"]
        lines += [f"| {r['label']} | {_cell(r)} |" for r in rows]
        return "\n".join(lines)
    if fmt == "table":
        width = max(len(r["label"]) for r in rows)
        lines = [f"{head}: mean +- standard error over {n} datapoints (nats)"]
        lines += [f"  {r['label']:<{width}}  {_cell(r):>18}" for r in rows]
        return "\n".join(lines)
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


def collect(params, cfg, x, out, k=5000, chunk=10000, ais_settings=None, ais_block=10,
            qstar=("ffg", "flow"), localopt_settings=None, seed=0, meta=None, progress=True, runner=None):
    """Run, or reuse from results file `out`, every bound of the gap table for the rows of x:
    returns gap_table's input {elbo, iwae, ais (absent if ais_settings is None), qstar_<q>}.
    q* of the trained family runs first (the gaps need it; the others are extra rows), so a long
    run that is stopped early has its gaps first."""
    r = {}
    with outputs.claim(out, io.RESULTS_KIND):          # one writer for all the stages
        if cfg.encoder:                                  # an imported decoder alone has no L[q]
            r["elbo"], r["iwae"] = iwae.stage(params, cfg, x, out, k, seed, chunk, meta, progress,
                                              runner=runner)
        if ais_settings is not None:
            r["ais"] = ais.run(params, cfg, x, out, ais_settings, seed, ais_block, meta, progress,
                               runner=runner)["estimate"]
        families = ("ffg", "flow", "fullcov")
        base = {k: v for k, v in (localopt_settings or {}).items() if k not in families}
        for q in sorted(qstar, key=lambda q: q != cfg.q):     # the gaps' own q* first
            # per-family overrides, e.g. {"flow": {"samples": 20}}: the flow's q* costs far more
            s = {**base, **(localopt_settings or {}).get(q, {}), "seed": seed}
            r[f"qstar_{q}"] = localopt.run(params, cfg, x, q, out, s, meta, progress, runner=runner)["elbo"]
    return r


# a results file's stages -> gap_table's keys: (stage, its per-datapoint array, key)
_STORED = [("iwae", "elbo", "elbo"), ("iwae", "iwae", "iwae"), ("ais", "estimate", "ais")] + [
    (f"localopt_{q}", "elbo", f"qstar_{q}") for q in ("ffg", "flow", "fullcov")]


def stored(path, trained_q=None):
    """The bounds results file `path` holds so far, for a table while its run goes on (or after
    it stopped): over the datapoints that every stage there holds. Returns (gap_table's input,
    the trained family (the iwae stage's, unless trained_q), {stage: datapoints held},
    a note line for each q* stage whose rows did not all converge (localopt.stop_note), dict(split,
    dataset))."""
    if not io.stage_seconds(path):
        raise MinivaeError(f"{path} does not exist or holds no stage: pass the --out of a "
                           "gaps, iwae, ais or localopt run")
    found = {s: io.load_results(path, s) for s in dict.fromkeys(s for s, _, _ in _STORED)}
    found = {s: r for s, r in found.items() if r is not None and len(r[0].get("index", ()))}
    if not found:
        raise MinivaeError(f"{path} holds none of the stages iwae, ais, localopt_<q> yet")
    for what in ("checkpoint", "split", "dataset"):
        seen = {str(attrs.get(what)) for _, attrs in found.values()}
        if len(seen) > 1:
            raise MinivaeError(f"the stages of {path} were made from different {what}s "
                               f"({', '.join(sorted(seen))}): a table needs one")
    if trained_q is None:
        trained_q = found.get("iwae", ({}, {}))[1].get("q")
        if trained_q is None:
            raise MinivaeError(f"{path} has no iwae stage that says which family the model was "
                               "trained with: pass --trained")
        trained_q = str(trained_q)
    index = sorted(set.intersection(*(set(a["index"].tolist()) for a, _ in found.values())))
    if not index:
        raise MinivaeError(f"no datapoint of {path} is held by every stage yet")
    at = {s: {int(i): j for j, i in enumerate(a["index"])} for s, (a, _) in found.items()}
    rows = {s: [at[s][i] for i in index] for s in found}
    try:
        results = {key: found[s][0][name][rows[s]] for s, name, key in _STORED if s in found}
        stops = [localopt.stop_note(s[len("localopt_"):], found[s][0]["converged"][rows[s]],
                                    found[s][0]["steps"][rows[s]], found[s][1])
                 for s in found if s.startswith("localopt_")]
    except KeyError as e:
        raise MinivaeError(f"a stage of {path} lacks its {e} array (damaged, or not written by "
                           "minivae): rerun that stage into another --out")
    attrs = next(iter(found.values()))[1]
    return (results, trained_q, {s: len(a["index"]) for s, (a, _) in found.items()},
            [line for line in stops if line],
            dict(split=str(attrs.get("split")), dataset=str(attrs.get("dataset"))))
