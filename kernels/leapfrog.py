"""Leapfrog updates of HMC, one row (datapoint x chain) per step size.

For the target log f (gradient grad = d log f / dz) and kinetic energy |p|^2 / 2:

    leapfrog_momentum:           p += scale * step[r] * grad     (scale 1/2 at the ends, 1 inside)
    leapfrog_position:           z += step[r] * p
    leapfrog_momentum_position:  p += step[r] * grad;  z += step[r] * p   (the inner steps)

A trajectory of L steps: half momentum step, position, then L - 1 times (gradient, fused
momentum + position), gradient, half momentum step. Arrays are (R, Z), step (R,).
"""
from numba import cuda, njit, prange

from . import _dispatch as dp


def leapfrog_momentum_ref(p, grad, step, scale):
    p += (scale * step)[:, None] * grad


def leapfrog_position_ref(z, p, step):
    z += step[:, None] * p


def leapfrog_momentum_position_ref(p, z, grad, step):
    s = step[:, None]
    p += s * grad
    z += s * p


@njit(parallel=True, cache=True, error_model="numpy")
def _leapfrog_momentum_cpu(p, grad, step, scale):
    scale = p.dtype.type(scale)
    for r in prange(p.shape[0]):
        s = scale * step[r]
        for c in range(p.shape[1]):
            p[r, c] += s * grad[r, c]


@njit(parallel=True, cache=True, error_model="numpy")
def _leapfrog_position_cpu(z, p, step):
    for r in prange(z.shape[0]):
        s = step[r]
        for c in range(z.shape[1]):
            z[r, c] += s * p[r, c]


@njit(parallel=True, cache=True, error_model="numpy")
def _leapfrog_momentum_position_cpu(p, z, grad, step):
    for r in prange(p.shape[0]):
        s = step[r]
        for c in range(p.shape[1]):
            pc = p[r, c] + s * grad[r, c]
            p[r, c] = pc
            z[r, c] += s * pc


@cuda.jit
def _leapfrog_momentum_cuda(p, grad, step, scale):
    scale = p.dtype.type(scale)
    cols = p.shape[1]
    for i in range(cuda.grid(1), p.shape[0] * cols, cuda.gridsize(1)):
        r, c = i // cols, i % cols
        p[r, c] += (scale * step[r]) * grad[r, c]


@cuda.jit
def _leapfrog_position_cuda(z, p, step):
    cols = z.shape[1]
    for i in range(cuda.grid(1), z.shape[0] * cols, cuda.gridsize(1)):
        r, c = i // cols, i % cols
        z[r, c] += step[r] * p[r, c]


@cuda.jit
def _leapfrog_momentum_position_cuda(p, z, grad, step):
    cols = p.shape[1]
    for i in range(cuda.grid(1), p.shape[0] * cols, cuda.gridsize(1)):
        r, c = i // cols, i % cols
        s = step[r]
        pc = p[r, c] + s * grad[r, c]
        p[r, c] = pc
        z[r, c] += s * pc


def leapfrog_momentum(p, grad, step, scale, impl="auto"):
    """p += scale * step[:, None] * grad, in place. p, grad: (R, Z); step: (R,)."""
    impl, scale = dp.pick(impl, p), float(scale)
    if impl == "ref":
        leapfrog_momentum_ref(p, grad, step, scale)
    elif impl == "cpu":
        dp.cpu(_leapfrog_momentum_cpu, p.size, p, grad, step, scale)
    else:
        _leapfrog_momentum_cuda[dp.grid_elems(p.size, p)](p, grad, step, scale)


def leapfrog_position(z, p, step, impl="auto"):
    """z += step[:, None] * p, in place."""
    impl = dp.pick(impl, z)
    if impl == "ref":
        leapfrog_position_ref(z, p, step)
    elif impl == "cpu":
        dp.cpu(_leapfrog_position_cpu, z.size, z, p, step)
    else:
        _leapfrog_position_cuda[dp.grid_elems(z.size, z)](z, p, step)


def leapfrog_momentum_position(p, z, grad, step, impl="auto"):
    """A full momentum step then a position step: p += step * grad; z += step * p."""
    impl = dp.pick(impl, p)
    if impl == "ref":
        leapfrog_momentum_position_ref(p, z, grad, step)
    elif impl == "cpu":
        dp.cpu(_leapfrog_momentum_position_cpu, p.size, p, z, grad, step)
    else:
        _leapfrog_momentum_position_cuda[dp.grid_elems(p.size, p)](p, z, grad, step)
