"""Shared plumbing of the kernels: which implementation runs, CUDA launch shapes, threads.

`impl="auto"` runs the Numba CPU kernel on NumPy arrays and the CUDA twin on CuPy arrays
(Numba takes them through `__cuda_array_interface__`); CuPy without a usable Numba CUDA
falls back to the vectorised reference. Tests patch `BLOCK` and `MAX_GRID` small so that the
simulator covers the grid-stride loops and the block reductions.
"""
import functools
import os

import numba
import numpy as np

BLOCK = 128        # CUDA threads per block; a power of two (block reductions halve it)
MAX_GRID = 2048    # most blocks per launch; grid-stride loops cover larger arrays
MAX_BLOCK = 1024   # size of the shared scratch of block reductions (BLOCK <= MAX_BLOCK)
GRAIN = 1 << 16    # elements per CPU thread below which waking another thread costs more
IMPLS = ("ref", "cpu", "cuda")


def is_cupy(a):
    return type(a).__module__.startswith("cupy")


def get_xp(a):
    """numpy or cupy, whichever owns array `a` (minivae.backend re-exports this one)."""
    if is_cupy(a):
        import cupy
        return cupy
    return np


@functools.lru_cache(maxsize=None)
def _cuda_ok():
    from numba import cuda
    return cuda.is_available()


def pick(impl, a):
    """The implementation to run on array `a`: "ref", "cpu" or "cuda"."""
    if impl == "auto":
        if is_cupy(a):
            return "cuda" if _cuda_ok() else "ref"
        return "cpu"
    if impl not in IMPLS:
        raise ValueError(f"impl must be auto, ref, cpu or cuda, not {impl!r}")
    return impl


def _stream(a):
    """CuPy's current stream for a CuPy array (so kernels queue behind CuPy's matmuls), else 0."""
    if not is_cupy(a):
        return 0
    import cupy
    from numba import cuda
    ptr = cupy.cuda.get_current_stream().ptr
    return cuda.external_stream(ptr) if ptr else 0


def grid_elems(n, like):
    """Launch configuration (blocks, threads, stream) of a grid-stride loop over n elements."""
    return max(1, min(MAX_GRID, -(-n // BLOCK))), BLOCK, _stream(like)


def grid_rows(rows, like):
    """Launch configuration (blocks, threads, stream): one block per row, grid-stride over rows."""
    if BLOCK & (BLOCK - 1) or BLOCK > MAX_BLOCK:
        raise ValueError(f"BLOCK must be a power of two <= {MAX_BLOCK}, not {BLOCK}")
    return max(1, min(MAX_GRID, rows)), BLOCK, _stream(like)


def setup_threads():
    """Prefer Numba's OpenMP layer with sleeping (not spinning) idle threads, unless the
    environment already says otherwise. Must run before the first parallel kernel.

    Measured on a busy 2-core box (benchmarks/kernels.py): spinning OpenMP threads (the default
    policy) stall a 2-thread region ~20 ms while the other thread is descheduled; passive
    waiting costs ~0.2 ms; the workqueue layer is not thread-safe and costs ~0.1 ms even for a
    region that runs on one thread, where OpenMP runs it inline (~9 us). OpenBLAS's own
    threads spin too: on such a box set OPENBLAS_NUM_THREADS=1 (a 2-thread matmul was 5x slower).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    if not {"NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"} & set(os.environ):
        os.environ["NUMBA_THREADING_LAYER_PRIORITY"] = "omp workqueue tbb"
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]


def cpu(kernel, n, *args):
    """Run a parallel CPU kernel over n elements on at most n // GRAIN threads (at least one):
    small calls then run inline instead of waking the pool. Costs ~5 us when it limits.
    With NUMBA_NUM_THREADS=1 there is nothing to limit: no get_num_threads() (a lock, ~1.5 us).
    (A serial twin compiled without parallel=True was tried and was 10x slower where outputs
    alias inputs: only the parallel build tells LLVM the arrays do not alias, so it vectorises.)"""
    if numba.config.NUMBA_NUM_THREADS == 1:
        return kernel(*args)
    old = numba.get_num_threads()
    use = max(1, min(old, n // GRAIN))
    if use == old:
        return kernel(*args)
    numba.set_num_threads(use)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(old)
