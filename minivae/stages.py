"""The stage engine: every per-datapoint command (iwae, ais, bdmc, localopt, gaps) runs here.

A stage is one group of a results file (`/iwae`, `/ais`, `/localopt_ffg`, ...), one row per
datapoint, keyed by the datapoint's index. The engine
- holds the output file (outputs.claim: location checked before any compute, one writer,
  a killed run's leftovers removed);
- refuses a stage made with other settings, naming the setting;
- splits the datapoints the stage does not hold yet into blocks of `block`;
- hands the blocks to a runner ("run these blocks": in process here, Dask tasks in
  `minivae.cluster`), which yields each finished block, in any order;
- checks each block's estimates are finite, then saves it ("save this block"): the results
  file is rewritten atomically, so a disk that fills or an interrupt loses no finished block.
A block function `fn(index, progress=None, **shared) -> {name: (len(index), ...) array}` must
draw datapoint i's noise from its own generator, `streams(seed, index, ...)`, so the numbers
depend on neither `--block`, `--n`, resuming, nor where the block ran.
"""
import contextlib
import json
import time

import numpy as np

from . import io, outputs
from .backend import to_numpy
from .errors import CheckpointError, MinivaeError, check_interrupt
from .progress import Progress


def streams(seed, index, *stream):
    """One Generator per datapoint index: default_rng([seed, i, *stream])."""
    return [np.random.default_rng([int(seed), int(i), *stream]) for i in index]


def finished(out, stage, settings):
    """The rows stage `stage` of `out` holds ({} if none), provided it was made with the same
    settings; otherwise one line naming the settings that differ."""
    prev = io.load_results(out, stage)
    if prev is None:
        return {}
    arrays, attrs = prev
    key = json.dumps(settings, sort_keys=True)
    if attrs.get("settings") != key or "index" not in arrays:
        old = json.loads(attrs.get("settings", "{}"))
        diff = ", ".join(f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in settings.items()
                         if old.get(k) != v) or "written by an older minivae"
        raise CheckpointError(f"{out} already holds stage {stage!r} made with other settings ({diff}): "
                              "pass the same settings to resume, or another --out")
    return arrays


def blocks(todo, block):
    """Split the sorted indices `todo` into blocks of at most `block` (runs of the fixed grid
    [b * block, (b + 1) * block), so a resumed run works on the blocks an uninterrupted one would)."""
    if not len(todo):
        return []
    cut = np.flatnonzero(np.diff(todo // block)) + 1
    return np.split(todo, cut)


def in_process(fn, shared, work, progress=None):
    """The default runner: the blocks one after another in this process."""
    for index in work:
        yield index, fn(index, progress=progress, **shared)


@contextlib.contextmanager
def executor(workers=None, scheduler=None, quiet=False):
    """The runner for stages.run: None (in process) when neither is given, else Dask tasks on a
    LocalCluster of `workers` processes or the cluster at `scheduler` (minivae.cluster). Dask is
    imported only here, so the in-process path loads nothing of it."""
    if workers is None and scheduler is None:
        yield None
        return
    from . import cluster
    with cluster.connect(workers, scheduler, quiet) as client:
        yield cluster.runner(client)


def _check_finite(out, stage, index, rows, finite, saved):
    for name in finite:
        v = np.asarray(rows[name], np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(index[np.flatnonzero(bad.reshape(len(index), -1).any(1))[0]])
            raise MinivaeError(f"stage {stage}: datapoint {i} gave a non-finite {name} ({v.ravel()[bad.ravel()][0]}); "
                               f"nothing of it was saved ({saved} datapoints are, in {out}): check the "
                               "model's parameters and this stage's settings (e.g. a smaller step size)")


def _merge(done, index, rows):
    rows = dict(rows, index=np.asarray(index))
    if not done:
        return rows
    merged = {k: np.concatenate([done[k], rows[k]]) for k in rows}
    order = np.argsort(merged["index"], kind="stable")
    return {k: v[order] for k, v in merged.items()}


def run(out, stage, settings, n, block, fn, shared, finite=(), progress=True, runner=None, what=None):
    """Stage `stage` of results file `out` for datapoints 0..n-1: run fn over the blocks not yet
    saved, save each as it finishes, and return the arrays of rows 0..n-1 (rows a larger earlier
    run saved beyond n are kept in the file and left out here). finite: names of arrays that
    must be finite. runner(fn, shared, blocks, progress) yields (index, rows); in_process when None."""
    if block < 1 or n < 0:
        raise MinivaeError(f"block size must be positive (got {block}) and n non-negative (got {n})")
    with outputs.claim(out, io.RESULTS_KIND):
        done = finished(out, stage, settings)
        spent = float(io.load_results(out, stage)[1].get("seconds", 0.0)) if done else 0.0
        have = np.asarray(done.get("index", np.zeros(0, np.int64)))
        todo = np.setdiff1d(np.arange(n), have)
        work = blocks(todo, block)
        bar = Progress(len(todo), what or f"{stage} datapoints", enabled=progress and len(todo) > 0)
        run_blocks = runner or in_process
        t0 = time.perf_counter()
        try:
            for index, rows in run_blocks(fn, shared, work, bar):
                rows = {k: to_numpy(v) for k, v in rows.items()}
                _check_finite(out, stage, index, rows, finite, len(done.get("index", ())))
                done = _merge(done, index, rows)
                attrs = dict(settings, settings=json.dumps(settings, sort_keys=True), n=len(done["index"]),
                             seconds=spent + float(time.perf_counter() - t0))     # over every run
                try:
                    io.save_results(out, stage, done, attrs)
                except OSError as e:
                    raise MinivaeError(f"could not save stage {stage} to {out} ({e.strerror or e}); the "
                                       "blocks finished before are in it: free space and rerun to resume") from None
                bar.update(len(index))
                check_interrupt()                          # after the save: the block is kept
        finally:
            bar.close()
    keep = done["index"] < n if done else slice(0)
    return {k: v[keep] for k, v in done.items()} if done else {}
