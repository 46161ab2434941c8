"""The one place that picks the array module (`xp`: numpy or cupy), dtypes and RNGs, and that
loads the fused kernels (`kernels()`).

Library code asks `get_xp(x)` for the module of the data it is handed, so the same code
runs on NumPy and CuPy arrays. Noise is always drawn by a NumPy Generator on the host and
moved to the device: the same seed then gives the same numbers on every device, and the
generator's state fits in a checkpoint.
"""
import functools
import warnings

import numpy as np

import kernels as _kernels_package
from kernels._dispatch import get_xp  # defined beside the kernels, which sit below the library
from .errors import MinivaeError

DTYPES = {"float32": np.float32, "float64": np.float64}


def _cupy():
    try:
        import cupy
        return cupy
    except Exception:  # ImportError, or a CUDA driver that fails to load
        return None


def device_xp(device):
    """The array module for `--device cpu|gpu`; a clear error when no GPU can be used."""
    if device == "cpu":
        return np
    if device == "gpu":
        cp = _cupy()
        if cp is None:
            raise MinivaeError("--device gpu needs CuPy and a CUDA GPU: install with "
                               "`pip install -e '.[gpu]'` on a machine with a GPU, or use --device cpu")
        try:
            cp.cuda.runtime.getDeviceCount()
        except Exception as e:
            raise MinivaeError(f"--device gpu: no usable CUDA device ({e}); use --device cpu")
        return cp
    raise MinivaeError(f"unknown device {device!r}: choose cpu or gpu")


def get_dtype(name):
    if name not in DTYPES:
        raise MinivaeError(f"unknown dtype {name!r}: choose float32 or float64")
    return DTYPES[name]


def to_numpy(a):
    """A host copy of `a` (no copy for NumPy input)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def matmul(a, b):
    """a @ b, with a single-row `a` (1, K) computed as a two-row product: NumPy sends a one-row
    product to BLAS gemv, whose rounding differs from gemm's, and a datapoint's numbers must not
    depend on how many rows share its call (a block of one datapoint, one chain)."""
    if a.ndim == 2 and a.shape[0] == 1:
        xp = get_xp(a)
        return (xp.concatenate([a, a]) @ b)[:1]
    return a @ b


def normal(rng, shape, like):
    """Standard-normal noise of `shape` on the device and dtype of array `like`."""
    xp = get_xp(like)
    return xp.asarray(rng.standard_normal(shape, dtype=like.dtype))


def uniform(rng, shape, like):
    xp = get_xp(like)
    return xp.asarray(rng.random(shape, dtype=like.dtype))


def rng_state(rng):
    """The generator's state as a JSON-able dict (for checkpoints)."""
    return rng.bit_generator.state


def rng_from_state(state):
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    return rng


@functools.lru_cache(maxsize=None)
def kernels():
    """The fused kernels package (kernels/: every dispatcher by name), or None where it imports
    as an empty namespace package (an editable install older than kernels/__init__.py): the
    NumPy references then run."""
    k = _kernels_package
    if not hasattr(k, "hmc_accept"):
        warnings.warn("kernels/ imports as an empty namespace package: run `pip install -e .` again; "
                      "the NumPy references run instead of the fused kernels", RuntimeWarning, stacklevel=2)
        return None
    return k
