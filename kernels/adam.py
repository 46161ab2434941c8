"""Adam (ascent) elementwise, with the step size and eps_hat precomputed by the caller from
the step count t, exactly as minivae.model.optim does (module docstring there):

    step = lr sqrt(1 - b2^t) / (1 - b1^t);  eps_hat = eps sqrt(1 - b2^t)
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p += step m / (sqrt(v) + eps_hat)

  adam_dense  one t for every element (optim.adam_step: training), scalars in float64
  adam_rows   one t per row of (N, P) arrays (optim.batched_adam_step: q*), step and eps_hat
              (N,) in the arrays' dtype; rows with active == False are not touched

Each follows its NumPy reference's order of operations (adam_dense: (1 - b2) (g g) and
step (m / d); adam_rows: ((1 - b2) g) g and (step m) / d) with every product rounded on its
own (no FMA), and scalars rounded to the arrays' dtype as NumPy does with Python floats: the
CPU kernels give the references bit for bit. The bias corrections (step, eps_hat) are
computed once, by the caller, in NumPy: a float32 pow inside a kernel could differ in the last bit.
"""
import math

from numba import cuda, njit, prange

from . import _dispatch as dp


def adam_dense_ref(p, g, m, v, step, eps_hat, b1, b2):
    """One Adam update of p, m, v in place: the NumPy spec (optim.adam_step's impl="ref")."""
    xp = dp.get_xp(p)
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * (g * g)
    denom = xp.sqrt(v)
    denom += eps_hat
    p += step * (m / denom)


@njit(parallel=True, cache=True, error_model="numpy")
def _adam_dense_cpu(p, g, m, v, step, eps_hat, b1, b2):
    ft = p.dtype.type
    b1f, b2f, nb1, nb2 = ft(b1), ft(b2), ft(1.0 - b1), ft(1.0 - b2)
    stepf, ehf = ft(step), ft(eps_hat)
    for i in prange(p.shape[0]):
        gi = g[i]
        mi = b1f * m[i] + nb1 * gi
        vi = b2f * v[i] + nb2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] += stepf * (mi / (math.sqrt(vi) + ehf))


@cuda.jit
def _adam_dense_cuda(p, g, m, v, step, eps_hat, b1, b2):
    ft = p.dtype.type
    b1f, b2f, nb1, nb2 = ft(b1), ft(b2), ft(1.0 - b1), ft(1.0 - b2)
    stepf, ehf = ft(step), ft(eps_hat)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], stride):
        gi = g[i]
        mi = b1f * m[i] + nb1 * gi
        vi = b2f * v[i] + nb2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] += stepf * (mi / (math.sqrt(vi) + ehf))


def adam_rows_ref(p, g, m, v, step, eps_hat, active, b1, b2):
    """One Adam update per active row, in place: the NumPy spec (optim.batched_adam_step's
    impl="ref"). p, g, m, v: (N, ...) of any trailing shape; step, eps_hat, active: (N,)."""
    xp = dp.get_xp(p)
    col = (-1,) + (1,) * (p.ndim - 1)
    a, s, e = active.reshape(col), step.reshape(col), eps_hat.reshape(col)
    m[...] = xp.where(a, b1 * m + (1 - b1) * g, m)
    v[...] = xp.where(a, b2 * v + (1 - b2) * g * g, v)
    p[...] = xp.where(a, p + s * m / (xp.sqrt(v) + e), p)


@njit(parallel=True, cache=True, error_model="numpy")
def _adam_rows_cpu(p, g, m, v, step, eps_hat, active, b1, b2):
    ft = p.dtype.type
    b1f, b2f, nb1, nb2 = ft(b1), ft(b2), ft(1.0 - b1), ft(1.0 - b2)
    for r in prange(p.shape[0]):
        if not active[r]:
            continue
        s, e = step[r], eps_hat[r]
        for c in range(p.shape[1]):
            gc = g[r, c]
            mc = b1f * m[r, c] + nb1 * gc
            vc = b2f * v[r, c] + nb2 * gc * gc
            m[r, c] = mc
            v[r, c] = vc
            p[r, c] += s * mc / (math.sqrt(vc) + e)


@cuda.jit
def _adam_rows_cuda(p, g, m, v, step, eps_hat, active, b1, b2):
    ft = p.dtype.type
    b1f, b2f, nb1, nb2 = ft(b1), ft(b2), ft(1.0 - b1), ft(1.0 - b2)
    cols = p.shape[1]
    for i in range(cuda.grid(1), p.shape[0] * cols, cuda.gridsize(1)):
        r, c = i // cols, i % cols
        if active[r]:
            gc = g[r, c]
            mc = b1f * m[r, c] + nb1 * gc
            vc = b2f * v[r, c] + nb2 * gc * gc
            m[r, c] = mc
            v[r, c] = vc
            p[r, c] += step[r] * mc / (math.sqrt(vc) + eps_hat[r])


def adam_rows(p, g, m, v, step, eps_hat, active, b1=0.9, b2=0.999, impl="auto"):
    """One Adam ascent step per active row, in place. p, g, m, v: (N, P); step, eps_hat: (N,)
    in p's dtype; active: (N,) bool."""
    impl = dp.pick(impl, p)
    args = (p, g, m, v, step, eps_hat, active, float(b1), float(b2))
    if impl == "ref":
        adam_rows_ref(*args)
    elif impl == "cpu":
        dp.cpu(_adam_rows_cpu, p.size, *args)
    else:
        _adam_rows_cuda[dp.grid_elems(p.size, p)](*args)


def adam_dense(p, g, m, v, step, eps_hat, b1=0.9, b2=0.999, impl="auto"):
    """One Adam ascent step on p, in place (m, v too). p, g, m, v: C-contiguous, one shape."""
    impl = dp.pick(impl, p)
    if not (p.shape == g.shape == m.shape == v.shape):
        raise ValueError(f"shapes differ: p {p.shape}, g {g.shape}, m {m.shape}, v {v.shape}")
    args = (float(step), float(eps_hat), float(b1), float(b2))
    if impl == "ref":
        adam_dense_ref(p, g, m, v, *args)
        return
    if not all(a.flags.c_contiguous for a in (p, g, m, v)):
        raise ValueError("adam_dense needs C-contiguous arrays (it updates flat views of them)")
    flat = [a.reshape(-1) for a in (p, g, m, v)]
    if impl == "cpu":
        dp.cpu(_adam_dense_cpu, p.size, *flat, *args)
    else:
        _adam_dense_cuda[dp.grid_elems(p.size, p)](*flat, *args)
