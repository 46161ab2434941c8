"""The HMC transition: the leapfrog, weight and accept kernels (CPU and CUDA equal to their
references, the references equal to minivae.estimators.hmc), and the fused transition
(hmc.Fused) equal to the reference transition."""
import importlib

import numpy as np
import pytest

from kernels import ais_weights, leapfrog
from minivae.estimators import hmc
from minivae.testing.kernels import DTYPES, both, close, ref_and_cuda, rng, run

from conftest import cuda_twin

hmc_accept = importlib.import_module("kernels.hmc_accept")  # kernels.hmc_accept is the function


# --- leapfrog and AIS weights ----------------------------------------------------------------


def hmc_rows(dtype, rows=13, z=7):
    r = rng()
    p, zz, g = (r.standard_normal((rows, z)).astype(dtype) for _ in range(3))
    step = r.uniform(0.01, 0.3, rows).astype(dtype)
    return p, zz, g, step


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_leapfrog_momentum(dtype, scale):
    p, _, g, step = hmc_rows(dtype)
    (p0, *_), (p1, *_) = both(leapfrog.leapfrog_momentum, p, g, step, scale)
    close(p1, p0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_leapfrog_position(dtype):
    p, z, _, step = hmc_rows(dtype)
    (z0, *_), (z1, *_) = both(leapfrog.leapfrog_position, z, p, step)
    close(z1, z0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_leapfrog_fused_is_momentum_then_position(dtype):
    p, z, g, step = hmc_rows(dtype)
    (p0, z0, *_), (p1, z1, *_) = both(leapfrog.leapfrog_momentum_position, p, z, g, step)
    close(p1, p0, dtype)
    close(z1, z0, dtype)
    p2, z2 = p.copy(), z.copy()
    leapfrog.leapfrog_momentum(p2, g, step, 1.0)
    leapfrog.leapfrog_position(z2, p2, step)
    close(p1, p2, dtype)
    close(z1, z2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ais_log_weight(dtype):
    r = rng()
    logw, ll = (r.standard_normal(29).astype(dtype) * 100 for _ in range(2))
    (w0, *_), (w1, *_) = both(ais_weights.ais_log_weight, logw, ll, 0.013)
    close(w1, w0, dtype)


def test_ais_log_weight_float64_weights_of_float32_states():
    r = rng()
    logw, ll = r.standard_normal(29) * 100, (r.standard_normal(29) * 100).astype(np.float32)
    (w0, *_), (w1, *_) = both(ais_weights.ais_log_weight, logw, ll, 0.013)
    np.testing.assert_array_equal(w1, w0)
    np.testing.assert_array_equal(w0, logw + 0.013 * ll.astype(np.float64))  # minivae.estimators.ais's update


# --- Metropolis accept and step adaptation ---------------------------------------------------


def accept_inputs(dtype, rows=40, z=6, beta=0.7):
    r = rng()
    zz, zn, g, gn, p0, pn = (r.standard_normal((rows, z)).astype(dtype) for _ in range(6))
    ll, lln = (r.standard_normal(rows).astype(dtype) - 50 for _ in range(2))
    # log u a clear margin away from the decision boundary, so float32 sums cannot flip it
    dh = ((hmc.log_f(zn, lln, beta) - 0.5 * (pn * pn).sum(1))
          - (hmc.log_f(zz, ll, beta) - 0.5 * (p0 * p0).sum(1)))
    log_u = (dh + r.choice([-1, 1], rows) * r.uniform(0.01, 1, rows)).astype(dtype)
    lln[0], gn[1, 2], zn[2, 0], pn[3, 1], lln[4] = np.nan, np.inf, -np.inf, np.nan, np.inf
    log_u[:5] = -1e30  # would accept anything finite
    step = r.uniform(0.05, 0.2, rows).astype(dtype)
    flags = np.full(rows, 9, np.int8), np.full(rows, 7, np.int8)   # accepted, nonfinite: overwritten
    return (zz, ll, g, zn, lln, gn, p0, pn, log_u, beta, step) + flags


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("adapt", [True, False])
@pytest.mark.parametrize("flags", [np.int8, bool])
def test_hmc_accept_matches_reference(dtype, adapt, flags):
    args = list(accept_inputs(dtype))
    args[11], args[12] = args[11].astype(flags), args[12].astype(flags)
    ref, cpu = both(hmc_accept.hmc_accept, *args, 0.65, adapt)
    for got, want in zip(cpu[:13], ref[:13]):
        np.testing.assert_array_equal(got, want)       # copies, decisions, step sizes: exact
    acc = ref[11].astype(bool)
    assert 5 < acc.sum() < 35
    assert not acc[:5].any()
    np.testing.assert_array_equal(ref[12], np.arange(40) < 5)  # non-finite flagged, not counted
    for k, kn in ((0, 3), (1, 4), (2, 5)):
        np.testing.assert_array_equal(ref[k][acc], args[kn][acc])
        np.testing.assert_array_equal(ref[k][~acc], args[k][~acc])
    up, down = hmc_accept._factors(0.65)
    want = args[10] * np.where(acc, dtype(up), dtype(down)) if adapt else args[10]
    np.testing.assert_array_equal(ref[10], want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hmc_accept_is_minivae_hmc(dtype):
    """Decisions and flags are hmc_transition's formulas; step sizes are adapt_step's, bit for bit."""
    zz, ll, g, zn, lln, gn, p0, pn, log_u, beta, step, _, _ = accept_inputs(dtype)
    log_u[5:10] = np.inf                                  # rejects anything
    R = len(zz)
    dh = (hmc.log_f(zn, lln, dtype(beta)) - 0.5 * (pn * pn).sum(-1)) - \
         (hmc.log_f(zz, ll, dtype(beta)) - 0.5 * (p0 * p0).sum(-1))
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(dh) & np.isfinite(gn).all(-1)
        want = finite & (log_u < np.where(finite, dh, 0))
    out = run(hmc_accept.hmc_accept, "cpu", zz, ll, g, zn, lln, gn, p0, pn, log_u, beta, step,
              np.empty(R, bool), np.empty(R, bool), 0.65, True)
    np.testing.assert_array_equal(out[11], want)
    np.testing.assert_array_equal(out[12], ~finite)
    np.testing.assert_array_equal(out[10], hmc.adapt_step(step, want, 0.65))


def test_hmc_adaptation_is_minivae_hmc_adapt_step():
    up, down = hmc_accept._factors(0.65)
    assert np.isclose(0.65 * np.log(up) + 0.35 * np.log(down), 0)  # drift 0 at the target rate
    step = rng().uniform(0.05, 0.2, 50)
    acc = rng().random(50) < 0.6
    np.testing.assert_array_equal(hmc.adapt_step(step, acc, 0.65), step * np.where(acc, up, down))


# --- the CUDA twins --------------------------------------------------------------------------


@cuda_twin
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_leapfrog_and_weights(dtype):
    r = rng(1)
    p, z, g = (r.standard_normal((5, 4)).astype(dtype) for _ in range(3))
    step = r.uniform(0.05, 0.2, 5).astype(dtype)
    (p0, *_), (p1, *_) = ref_and_cuda(leapfrog.leapfrog_momentum, p, g, step, 0.5)
    close(p1, p0, dtype)
    (z0, *_), (z1, *_) = ref_and_cuda(leapfrog.leapfrog_position, z, p, step)
    close(z1, z0, dtype)
    (p0, z0, *_), (p1, z1, *_) = ref_and_cuda(leapfrog.leapfrog_momentum_position, p, z, g, step)
    close(p1, p0, dtype)
    close(z1, z0, dtype)
    (w0, *_), (w1, *_) = ref_and_cuda(ais_weights.ais_log_weight, p[:, 0].copy(), z[:, 0].copy(), 0.1)
    close(w1, w0, dtype)


@cuda_twin
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_hmc_accept(dtype):
    r = rng(1)
    rows, zd, beta = 10, 3, 0.7
    zz, zn, g, gn, p0, pn = (r.standard_normal((rows, zd)).astype(dtype) for _ in range(6))
    ll, lln = (r.standard_normal(rows).astype(dtype) for _ in range(2))
    dh = ((-0.5 * (zn * zn).sum(1) + beta * lln - 0.5 * (pn * pn).sum(1))
          - (-0.5 * (zz * zz).sum(1) + beta * ll - 0.5 * (p0 * p0).sum(1)))
    log_u = (dh + r.choice([-1, 1], rows) * r.uniform(0.05, 1, rows)).astype(dtype)
    lln[0], gn[1, 1], zn[2, 2] = np.nan, np.inf, np.nan
    log_u[:3] = -1e30
    step = np.full(rows, 0.1, dtype)
    args = (zz, ll, g, zn, lln, gn, p0, pn, log_u, beta, step, np.zeros(rows, bool),
            np.zeros(rows, np.int8), 0.65, True)
    ref, dev = ref_and_cuda(hmc_accept.hmc_accept, *args)
    for got, want in zip(dev[:9], ref[:9]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(dev[10], ref[10])         # step sizes: the same two factors
    np.testing.assert_array_equal(dev[11], ref[11])
    np.testing.assert_array_equal(dev[12], [1, 1, 1] + [0] * 7)
    assert 0 < ref[11].sum() < 7


# --- the fused transition --------------------------------------------------------------------


def quadratic_fused(A, rows):
    """l(z) = -z^T A z / 2 as a plain target and in hmc.Fused form (new arrays each call)."""
    def target(z, need_value=True):
        Az = z @ A
        return -0.5 * (z * Az).sum(-1), -Az

    def grad_log_f(z, beta, need_value):
        ll, gll = target(z)
        return beta * gll - z, (ll if need_value else None), gll

    target.fused = hmc.Fused(grad_log_f, rows, len(A), np.float64, np)
    return target


def test_fused_transition_is_the_reference_transition():
    """hmc.Fused on a quadratic target: the same states, decisions, flags and adapted steps."""
    R, Z = 300, 4
    rng = np.random.default_rng(0)
    M = rng.standard_normal((Z, Z))
    target = quadratic_fused(M @ M.T + np.eye(Z), R)
    z = rng.standard_normal((R, Z))
    ll, gll = target(z)
    step = rng.uniform(0.05, 0.9, R)
    p0, log_u = rng.standard_normal((R, Z)), np.log(rng.random(R))
    ref = hmc.hmc_transition(z, ll, gll, target, 0.8, step, p0, log_u, 7, 0.65, impl="ref")
    args = [a.copy() for a in (z, ll, gll)]
    fused = hmc.hmc_transition(*args, target, 0.8, step.copy(), p0, log_u, 7, 0.65, impl="auto")
    assert fused[0] is args[0] and fused[1] is args[1]                  # in place
    for k in (0, 1, 2, 5):                                              # z, l, grad l, step
        np.testing.assert_allclose(fused[k], ref[k], rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(fused[3], ref[3])                     # accepted
    np.testing.assert_array_equal(fused[4], ref[4])                     # nonfinite
    assert 0.2 < ref[3].mean() < 0.95


def test_fused_transition_rejects_and_flags_nonfinite_proposals():
    R, Z = 8, 2
    bad = np.zeros(R, bool)
    bad[[1, 4]] = True
    clean = quadratic_fused(np.eye(Z), R)
    inner = clean.fused.grad_log_f

    def grad_log_f(z, beta, need_value):
        g, ll, gll = inner(z, beta, True)
        return g, np.where(bad, np.nan, ll), np.where(bad[:, None], np.inf, gll)

    clean.fused.grad_log_f = grad_log_f
    rng = np.random.default_rng(0)
    z = rng.standard_normal((R, Z))
    ll, gll = clean(z)
    out = hmc.hmc_transition(z.copy(), ll.copy(), gll.copy(), clean, 1.0, np.full(R, 0.1),
                             rng.standard_normal((R, Z)), np.full(R, -50.0), 3)
    np.testing.assert_array_equal(out[4], bad)
    np.testing.assert_array_equal(out[3], ~bad)
    np.testing.assert_array_equal(out[0][bad], z[bad])
    assert np.isfinite(out[1]).all() and np.isfinite(out[2]).all()


def test_impl_is_checked():
    with pytest.raises(ValueError, match="impl"):
        hmc.fused_of(None, "cuda")
