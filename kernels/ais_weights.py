"""The AIS weight update, one entry per row (datapoint x chain):

    logw += dbeta * ll,   ll = log p(x | z) at the current state, dbeta = beta_t - beta_{t-1}

Trivial, but it keeps the annealing loop free of NumPy temporaries and on the device. logw may
be wider than ll (float64 weights of a float32 run): the product is taken in logw's dtype.
"""
from numba import cuda, njit, prange

from . import _dispatch as dp


def ais_log_weight_ref(logw, ll, dbeta):
    logw += dbeta * ll.astype(logw.dtype, copy=False)


@njit(parallel=True, cache=True, error_model="numpy")
def _ais_log_weight_cpu(logw, ll, dbeta):
    dbeta = logw.dtype.type(dbeta)
    for r in prange(logw.shape[0]):
        logw[r] += dbeta * ll[r]


@cuda.jit
def _ais_log_weight_cuda(logw, ll, dbeta):
    dbeta = logw.dtype.type(dbeta)
    for r in range(cuda.grid(1), logw.shape[0], cuda.gridsize(1)):
        logw[r] += dbeta * ll[r]


def ais_log_weight(logw, ll, dbeta, impl="auto"):
    """logw += dbeta * ll, in place; logw, ll: (R,)."""
    impl, dbeta = dp.pick(impl, logw), float(dbeta)
    if impl == "ref":
        ais_log_weight_ref(logw, ll, dbeta)
    elif impl == "cpu":
        dp.cpu(_ais_log_weight_cpu, logw.size, logw, ll, dbeta)
    else:
        _ais_log_weight_cuda[dp.grid_elems(logw.shape[0], logw)](logw, ll, dbeta)
