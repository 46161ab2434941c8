"""`run_cpu`: _dispatch.cpu without its thread-count query where Numba has only one thread.

_dispatch.cpu asks numba.get_num_threads() on every call (it takes a lock: ~3 us), which is
a few percent of a small training step; with NUMBA_NUM_THREADS=1 there is nothing to limit.
"""
import numba

from . import _dispatch as dp


def run_cpu(kernel, n, *args):
    """Run a parallel CPU kernel over n elements (see _dispatch.cpu)."""
    if numba.config.NUMBA_NUM_THREADS == 1:
        return kernel(*args)
    return dp.cpu(kernel, n, *args)
