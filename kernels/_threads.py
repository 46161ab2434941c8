"""`run_cpu`: the name some kernels import for _dispatch.cpu (which now skips its thread-count
query itself where Numba has only one thread).
"""
from . import _dispatch as dp


def run_cpu(kernel, n, *args):
    """Run a parallel CPU kernel over n elements (see _dispatch.cpu)."""
    return dp.cpu(kernel, n, *args)
