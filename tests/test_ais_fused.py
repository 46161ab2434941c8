"""AIS on the fused kernels (impl="auto") gives the NumPy reference's numbers (impl="ref").

Equal to rounding only over short runs: HMC on a peaked posterior is chaotic, so a 1-ulp change
anywhere (this path, a BLAS, a thread count) grows by orders of magnitude per transition after
~50 transitions near beta = 1 and single chains then decorrelate. Longer runs are checked as
estimators instead (quadrature)."""
import tracemalloc

import numpy as np
import pytest

from minivae.estimators import ais, bdmc, hmc
from minivae.testing import lingauss
from minivae.model import model
from minivae import stages
from minivae.model.config import Config

from test_ais import grid_log_px

pytestmark = pytest.mark.skipif(hmc.kernels() is None, reason="kernels/ not importable")


def elu_model(layers=2, latent=2, data_dim=20, hidden=16, seed=0, scale=1.5, dtype="float64"):
    cfg = Config(data_dim=data_dim, latent=latent, dec_hidden=hidden, dec_layers=layers, enc_hidden=8,
                 enc_layers=1, act="elu", likelihood="bernoulli", dtype=dtype)
    rng = np.random.default_rng(seed)
    params = model.init_params(cfg, rng)
    for k in params:
        if k.startswith("dec."):
            params[k] = (scale * (params[k] + 0.5 * rng.standard_normal(params[k].shape))).astype(dtype)
    x = (rng.random((5, data_dim)) < 0.5).astype(dtype)
    return cfg, params, x


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


# ---- the seam ---------------------------------------------------------------------------------

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


# ---- the decoder target -----------------------------------------------------------------------

@pytest.mark.parametrize("layers", [0, 1, 2])
def test_fused_target_is_the_numpy_target(layers):
    """x once per datapoint, rows datapoint-major (row r is datapoint r // chains)."""
    cfg, params, x = elu_model(layers)
    chains = 3
    target = ais.likelihood_target(params, cfg, x, chains)
    assert target.fused is not None
    z = np.random.default_rng(1).standard_normal((len(x) * chains, 2))
    ll, gll = target(z)
    np.testing.assert_allclose(ll, ais.likelihood_target(params, cfg, np.repeat(x, chains, axis=0))(z)[0])
    g, ll2, gll2 = target.fused.grad_log_f(z, 0.3, True)
    np.testing.assert_allclose(ll2, ll, rtol=1e-13)
    np.testing.assert_allclose(gll2, gll, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g, 0.3 * gll - z, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("case", ["tanh", "gaussian", "ref"])
def test_models_the_kernels_do_not_cover_run_the_reference(case):
    if case == "gaussian":
        cfg, params, x = lingauss.make(n=4)
    else:
        cfg, params, x = elu_model(1)
        cfg = cfg.replace(act=case) if case == "tanh" else cfg
    target = ais.likelihood_target(params, cfg, x, 3, impl="ref" if case == "ref" else "auto")
    assert target.fused is None
    s = ais.Settings(chains=3, steps=15, leapfrog=3)
    a = ais.forward(params, cfg, x, range(len(x)), 0, s, impl="auto")
    r = ais.forward(params, cfg, x, range(len(x)), 0, s, impl="ref")
    if case != "ref":
        np.testing.assert_array_equal(a[1], r[1])


# ---- whole runs -------------------------------------------------------------------------------

@pytest.mark.parametrize("adapt", ["per-chain", "tune-then-freeze"])
@pytest.mark.parametrize("layers", [0, 2])
def test_a_whole_ais_run_fused_equals_reference(adapt, layers):
    cfg, params, x = elu_model(layers)
    s = ais.Settings(chains=8, steps=40, leapfrog=5, adapt=adapt)
    fs, fw, fsched = ais.forward(params, cfg, x, range(5), 0, s, impl="auto")
    rs, rw, rsched = ais.forward(params, cfg, x, range(5), 0, s, impl="ref")
    np.testing.assert_allclose(fw, rw, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fsched, rsched, rtol=1e-12)
    for k in ("accept", "nan"):
        np.testing.assert_array_equal(fs[k], rs[k])
    assert 0.3 < fs["accept"].mean() < 1                               # some rejects


def test_bdmc_fused_equals_reference():
    cfg, params, _ = elu_model(1)
    x, z = bdmc.simulate(params, cfg, range(4), seed=0)
    s = ais.Settings(chains=6, steps=30, leapfrog=4)
    f = bdmc.sandwich(params, cfg, x, z, range(4), 0, s, impl="auto")
    r = bdmc.sandwich(params, cfg, x, z, range(4), 0, s, impl="ref")
    for k in ("lower", "upper"):
        np.testing.assert_allclose(f[k], r[k], rtol=0, atol=1e-10)
    np.testing.assert_array_equal(f["accept_rev"], r["accept_rev"])


def test_fused_anneal_leaves_the_callers_arrays_alone():
    cfg, params, x = elu_model(1)
    target = ais.likelihood_target(params, cfg, x, 4)
    rngs = stages.streams(0, range(5), 0)
    z0, step0 = np.random.default_rng(0).standard_normal((20, 2)), np.full(20, 0.1)
    z_copy = z0.copy()
    ais.anneal(target, z0, ais.schedule(10), rngs, ais.Settings(chains=4), step0)
    np.testing.assert_array_equal(z0, z_copy)
    assert (step0 == 0.1).all()


def test_fused_ais_on_a_2d_elu_decoder_matches_quadrature():
    cfg, params, _ = elu_model(1, data_dim=20)
    rng = np.random.default_rng(2)
    z = rng.standard_normal((24, 2))
    logits, _ = model.decode(params, cfg, z)
    x = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(float)
    exact = grid_log_px(params, cfg, x)
    stats, _, _ = ais.forward(params, cfg, x, range(24), 0, ais.Settings(chains=50, steps=200, leapfrog=10))
    assert abs((stats["estimate"] - exact).mean()) < 0.05, stats["estimate"] - exact


def test_float32_fused_is_close_to_reference_over_a_short_run():
    cfg, params, x = elu_model(2, dtype="float32")
    s = ais.Settings(chains=8, steps=20, leapfrog=5)
    f = ais.forward(params, cfg, x, range(5), 0, s, impl="auto")
    r = ais.forward(params, cfg, x, range(5), 0, s, impl="ref")
    np.testing.assert_allclose(f[1], r[1], rtol=0, atol=1e-3)


# ---- the hot loop -----------------------------------------------------------------------------

def test_the_fused_loop_asks_for_the_likelihood_once_per_transition_and_allocates_no_rows():
    Z, C, L = 8, 100, 6
    cfg, params, x = elu_model(2, latent=Z, data_dim=400, hidden=64)
    target = ais.likelihood_target(params, cfg, x, C)
    calls = []
    inner = target.fused.grad_log_f

    def counting(z, beta, need_value):
        calls.append(need_value)
        return inner(z, beta, need_value)

    target.fused.grad_log_f = counting
    R = len(x) * C
    rng = np.random.default_rng(0)
    z, step = rng.standard_normal((R, Z)), np.full(R, 0.1)
    ll, gll = target.fused.start(z, 0.5)
    p0, log_u = rng.standard_normal((R, Z)), np.log(rng.random(R))
    hmc.hmc_transition(z, ll, gll, target, 0.5, step, p0, log_u, L, 0.65)   # warm-up (JIT)
    calls.clear()
    tracemalloc.start()
    hmc.hmc_transition(z, ll, gll, target, 0.5, step, p0, log_u, L, 0.65)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert calls == [False] * (L - 1) + [True]
    assert peak < R * Z * 8, peak                       # less than one (R, Z) array


# ---- real GPU ---------------------------------------------------------------------------------

def _cupy():
    cp = pytest.importorskip("cupy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        pytest.skip(f"no CUDA device: {e}")
    return cp


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["auto", "ref"])
def test_ais_on_cupy_arrays_matches_the_cpu(impl):
    cp = _cupy()
    cfg, params, x = elu_model(2)
    s = ais.Settings(chains=8, steps=30, leapfrog=5, adapt="tune-then-freeze")
    want = ais.forward(params, cfg, x, range(5), 0, s, impl="ref")
    dparams = {k: cp.asarray(v) for k, v in params.items()}
    target = ais.likelihood_target(dparams, cfg, cp.asarray(x), 8, impl)
    assert (target.fused is None) == (impl == "ref")
    got = ais.forward(dparams, cfg, cp.asarray(x), range(5), 0, s, impl=impl)
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-8)
    np.testing.assert_array_equal(got[0]["accept"], want[0]["accept"])


@pytest.mark.gpu
def test_bdmc_on_cupy_arrays_matches_the_cpu():
    cp = _cupy()
    cfg, params, _ = elu_model(1)
    s = ais.Settings(chains=6, steps=20, leapfrog=4)
    x, z = bdmc.simulate(params, cfg, range(3), seed=0)
    want = bdmc.sandwich(params, cfg, x, z, range(3), 0, s)
    dparams = {k: cp.asarray(v) for k, v in params.items()}
    dx, dz = bdmc.simulate(dparams, cfg, range(3), seed=0, xp=cp)
    np.testing.assert_array_equal(cp.asnumpy(dx), x)
    got = bdmc.sandwich(dparams, cfg, dx, dz, range(3), 0, s)
    for k in ("lower", "upper"):
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-8)
