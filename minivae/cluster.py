"""Blocks as Dask tasks: the stage engine's runner for `--workers N` and `--scheduler ADDRESS`.

The driver stays the only writer of the results file: workers compute blocks and return
arrays; stages.run saves each block as its task finishes, in any order. What every block
needs (parameters, data, settings) is scattered to the workers once per stage, not sent with
each task. A worker that dies mid-task is replaced and Dask reruns its block; since datapoint
i's noise comes from default_rng([seed, i, ...]) alone, the rerun gives the same numbers.
Only this module imports Dask, and only `--workers`/`--scheduler` import this module.
"""
import contextlib
from concurrent.futures import CancelledError
import logging
import os
import sys

import numpy as np

from dask.distributed import Client, LocalCluster, as_completed

from .errors import MinivaeError
from .threads import THREAD_VARS


@contextlib.contextmanager
def _single_threaded_children():
    """Worker processes inherit the environment: one BLAS/Numba thread each."""
    old = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: "1" for k in THREAD_VARS})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def connect(workers=None, scheduler=None, quiet=False):
    """A Client: to a LocalCluster of `workers` single-threaded processes, or to the scheduler
    at `scheduler`. Prints the dashboard link where there is one."""
    if workers is not None and scheduler is not None:
        raise MinivaeError("--workers and --scheduler exclude each other: pass one")
    cluster = None
    try:
        if scheduler is not None:
            client = Client(scheduler, timeout="20s")
        else:
            with _single_threaded_children():
                # errors only: a stopped run's cancelled tasks and killed workers are expected,
                # and Dask's warnings about them print its own source paths
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=":0",   # a free port: None means 8787
                                       silence_logs=logging.ERROR)
            client = Client(cluster)
    except (OSError, TimeoutError) as e:
        raise MinivaeError(f"cannot reach the Dask scheduler {scheduler or '(local)'}: {e}") from None
    try:
        n = len(client.scheduler_info().get("workers", {}))
        dashboard = "dashboard" in client.scheduler_info().get("services", {})
        if not quiet:
            print(f"dask: {n} workers" + (f", dashboard {client.dashboard_link}" if dashboard else ""),
                  file=sys.stderr)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _aligned(v):
    """Arrays as Dask hands them over may sit unaligned in a message buffer (seen: a float32
    weight at an odd address), which slows NumPy and BLAS by a fifth; copy those."""
    if isinstance(v, np.ndarray):
        return v if v.flags.aligned and v.flags.writeable else np.array(v)
    if isinstance(v, dict):
        return {k: _aligned(a) for k, a in v.items()}
    return v


def _scatter(client, shared):
    """The stage's shared inputs on every worker, under fresh keys: content-hashed or named keys
    would be shared with the next stage's scatter, and this stage's release could then drop that
    stage's data."""
    return dict(zip(shared, client.scatter(list(shared.values()), broadcast=True, hash=False)))


def _run(fn, index, shared):
    return fn(index, progress=None, **{k: _aligned(v) for k, v in shared.items()})


RETRIES = 3   # resubmissions of one block whose task the cluster cancelled (a worker died)


def runner(client):
    """A stages.run runner that sends each block to the cluster as one task and yields the
    blocks as they finish; each worker starts the blocks it holds in datapoint order, and
    an interrupt cancels what is still queued. A block whose task the scheduler cancels (its
    scattered inputs died with a worker) is sent again with the inputs scattered anew, up to
    RETRIES times: blocks are seeded per datapoint, so nothing changes."""
    def run_blocks(fn, shared, work, progress):
        if not work:
            return
        data = _scatter(client, shared)
        # Dask ties the priorities of tasks submitted within its fifo_timeout and runs those in
        # no set order; a priority falling with the block's first datapoint (`work` is sorted)
        # makes a stopped run leave the first datapoints done
        def send(index):
            return client.submit(_run, fn, index, data, pure=False, priority=-int(index[0]))

        futures = {send(index): index for index in work}
        tries = {}
        try:
            pending = as_completed(futures)
            for future in pending:
                index = futures.pop(future)
                try:
                    rows = future.result()
                except CancelledError:
                    key = int(index[0])
                    tries[key] = tries.get(key, 0) + 1
                    if tries[key] > RETRIES:
                        raise
                    data = _scatter(client, shared)
                    again = send(index)
                    futures[again] = index
                    pending.add(again)
                    continue
                yield index, rows
        finally:
            client.cancel(list(futures))
    run_blocks.client = client
    return run_blocks
