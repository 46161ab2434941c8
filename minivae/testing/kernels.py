"""Kernel test support: a kernel run on copies of its inputs under each implementation, and the
tolerances every kernel test uses (float64 tight, float32 close)."""
import os

import numpy as np

DTYPES = [np.float64, np.float32]
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"   # the CUDA simulator (a process of its own)


def rng(seed=0):
    return np.random.default_rng(seed)


def close(got, want, dtype, rtol64=1e-12, scaled=False):
    """Equal to rounding: rtol64 in float64, 2e-5 in float32; scaled: atol relative to max |want|."""
    scale = np.abs(want).max() if scaled else 0.0
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=rtol64, atol=1e-13 * scale)
    else:
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6 * scale if scaled else 1e-6)


def run(fn, impl, *arrays, **kw):
    """Call kernel `fn` on copies of `arrays`; return the copies (the in-place results)."""
    out = [a.copy() if isinstance(a, np.ndarray) else a for a in arrays]
    fn(*out, impl=impl, **kw)
    return out


def both(fn, *arrays, **kw):
    """(reference results, CPU kernel results)."""
    return run(fn, "ref", *arrays, **kw), run(fn, "cpu", *arrays, **kw)


def ref_and_cuda(fn, *arrays, **kw):
    """(reference results, CUDA twin results): under the simulator, or on a GPU."""
    return run(fn, "ref", *arrays, **kw), run(fn, "cuda", *arrays, **kw)


def cuda_usable():
    """Whether the CUDA twins can run here: the simulator is on, or a GPU is there."""
    if SIM:
        return True
    from numba import cuda
    return cuda.is_available()


def nvvm_usable():
    """Whether libNVVM is there to compile the CUDA twins to PTX (no GPU needed)."""
    try:
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
        return True
    except Exception:
        return False

