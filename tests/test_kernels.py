"""Every CPU kernel equals its vectorised reference (float64 tight, float32 close), and the
references agree with the library code they replace."""
import importlib

import numpy as np
import pytest
from numba import njit

from kernels import _dispatch, adam, ais_weights, bernoulli, decoder, elu, leapfrog
from kernels._math import exp_nonpos, expm1_exp_nonpos, log1p_unit
from minivae.model import densities, model, nn, optim
from minivae.estimators import hmc as hmc_ref
from minivae.model.config import Config

hmc_accept = importlib.import_module("kernels.hmc_accept")  # kernels.hmc_accept is the function

DTYPES = [np.float64, np.float32]


def rng():
    return np.random.default_rng(0)


def close(got, want, dtype, rtol64=1e-12):
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=rtol64, atol=0)
    else:
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def run(fn, impl, *arrays, **kw):
    """Call kernel `fn` on copies of `arrays`; return the copies (the in-place results)."""
    out = [a.copy() if isinstance(a, np.ndarray) else a for a in arrays]
    fn(*out, impl=impl, **kw)
    return out


def both(fn, *arrays, **kw):
    return run(fn, "ref", *arrays, **kw), run(fn, "cpu", *arrays, **kw)


# --- the vectorisable exp / expm1 / log1p ------------------------------------------------------

@njit
def _apply(x, e, em1, l1p):
    for i in range(x.size):
        em1[i], e[i] = expm1_exp_nonpos(x[i])
        l1p[i] = log1p_unit(-x[i] / (1 - x[i]))  # a spread over [0, 1)


@njit
def _apply_exp(x, e):
    for i in range(x.size):
        e[i] = exp_nonpos(x[i])


@pytest.mark.parametrize("dtype", DTYPES)
def test_math_helpers_within_a_few_ulp(dtype):
    lo = -700 if dtype == np.float64 else -80
    x = np.concatenate([-rng().exponential(5, 20000), -rng().uniform(0, 1e-6, 100),
                        [0.0, -1e-30, lo]]).astype(dtype)
    x = np.maximum(x, lo)
    e, em1, l1p, e2 = (np.empty_like(x) for _ in range(4))
    _apply(x, e, em1, l1p)
    _apply_exp(x, e2)
    x64 = x.astype(np.float64)
    tol = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(e, np.exp(x64), rtol=tol, atol=0)
    np.testing.assert_array_equal(e2, e)
    np.testing.assert_allclose(em1, np.expm1(x64), rtol=tol, atol=0)
    u = (-x / (1 - x)).astype(dtype).astype(np.float64)
    np.testing.assert_allclose(l1p, np.log1p(u), rtol=tol, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_math_helpers_edges(dtype):
    x = np.array([-1e4, -np.inf, np.nan, 0.0], dtype)
    e, em1, l1p = (np.empty_like(x) for _ in range(3))
    _apply(x[:2], e[:2], em1[:2], l1p[:2])
    assert list(e[:2]) == [0, 0] and list(em1[:2]) == [-1, -1]
    _apply_exp(x[2:], e[2:])
    assert np.isnan(e[2]) and e[3] == 1


# --- ELU ----------------------------------------------------------------------------------------

def elu_inputs(dtype, rows=37, cols=23):
    a = (3 * rng().standard_normal((rows, cols))).astype(dtype)
    a[0, :6] = [1e4, -1e4, -800, 0.0, 1e-30, -1e-30]
    b = rng().standard_normal(cols).astype(dtype)
    b[:6] = 0
    return a, b


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_elu_matches_reference(dtype):
    a, b = elu_inputs(dtype)
    (_, _, y0, d0), (_, _, y1, d1) = both(elu.bias_elu, a, b, np.empty_like(a), np.empty_like(a))
    close(y1, y0, dtype)
    close(d1, d0, dtype)
    assert np.isfinite(y1).all() and y1[0, 1] == -1 and d1[0, 1] == 0


def test_bias_elu_reference_is_nn_elu():
    a, b = elu_inputs(np.float64)
    y, back = nn.elu(a + b)
    (_, _, y0, d0), = [run(elu.bias_elu, "ref", a, b, np.empty_like(a), np.empty_like(a))]
    np.testing.assert_allclose(y0, y, rtol=1e-15, atol=0)
    np.testing.assert_allclose(d0, back(np.ones_like(a)), rtol=0, atol=1e-15)  # exp(s) vs y + 1


def test_bias_elu_in_place():
    a, b = elu_inputs(np.float64)
    y, d = np.empty_like(a), np.empty_like(a)
    elu.bias_elu(a, b, y, d)
    a2 = a.copy()
    elu.bias_elu(a2, b, a2, d)
    np.testing.assert_array_equal(a2, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_elu_backward_matches_reference(dtype):
    dy = rng().standard_normal((31, 17)).astype(dtype)
    dd = rng().random((31, 17)).astype(dtype)
    (_, _, o0), (_, _, o1) = both(elu.elu_backward, dy, dd, np.empty_like(dy))
    np.testing.assert_array_equal(o1, o0)


# --- Bernoulli ----------------------------------------------------------------------------------

def bern_inputs(dtype, n=5, chains=3, d=41):
    r = rng()
    a = (6 * r.standard_normal((n * chains, d))).astype(dtype)
    a[0, :6] = [1e4, -1e4, 1e4, -1e4, 40.0, -40.0]
    b = r.standard_normal(d).astype(dtype)
    b[:6] = 0
    x = (r.random((n, d)) < 0.4).astype(dtype)
    x[0, :6] = [1, 0, 0, 1, 1, 0]
    return a, b, x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chains", [1, 3])
@pytest.mark.parametrize("want_ll", [True, False])
def test_bernoulli_grad_matches_reference(dtype, chains, want_ll):
    a, b, x = bern_inputs(dtype, chains=chains)
    rows = a.shape[0]
    args = (a, b, x, chains, np.empty_like(a), np.full(rows, 7, dtype), want_ll)
    (*_, g0, l0, _), (*_, g1, l1, _) = both(bernoulli.bernoulli_grad, *args)
    close(g1, g0, dtype)
    assert np.isfinite(g1).all() and np.isfinite(l1).all()
    if want_ll:
        close(l1, l0, dtype)
    else:
        assert (l1 == 7).all()


def test_bernoulli_reference_is_densities():
    a, b, x = bern_inputs(np.float64)
    xr = np.repeat(x, 3, axis=0)
    ll, grad = densities.bernoulli_logits(xr, a + b)
    g0, l0 = np.empty_like(a), np.empty(a.shape[0])
    bernoulli.bernoulli_grad(a, b, x, 3, g0, l0, True, impl="ref")
    np.testing.assert_allclose(l0, ll, rtol=1e-13)
    np.testing.assert_allclose(g0, grad, rtol=1e-12, atol=1e-16)  # densities' x - s cancels


def test_bernoulli_grad_in_place_and_no_ll():
    a, b, x = bern_inputs(np.float64)
    g = np.empty_like(a)
    bernoulli.bernoulli_grad(a, b, x, 3, g, None, False)
    bernoulli.bernoulli_grad(a, b, x, 3, a, None, False)
    np.testing.assert_array_equal(a, g)


# --- leapfrog and AIS weights -------------------------------------------------------------------

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


# --- HMC accept ---------------------------------------------------------------------------------

def accept_inputs(dtype, rows=40, z=6, beta=0.7):
    r = rng()
    zz, zn, g, gn, p0, pn = (r.standard_normal((rows, z)).astype(dtype) for _ in range(6))
    ll, lln = (r.standard_normal(rows).astype(dtype) - 50 for _ in range(2))
    # log u a clear margin away from the decision boundary, so float32 sums cannot flip it
    dh = ((hmc_ref.log_f(zn, lln, beta) - 0.5 * (pn * pn).sum(1))
          - (hmc_ref.log_f(zz, ll, beta) - 0.5 * (p0 * p0).sum(1)))
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
    dh = (hmc_ref.log_f(zn, lln, dtype(beta)) - 0.5 * (pn * pn).sum(-1)) - \
         (hmc_ref.log_f(zz, ll, dtype(beta)) - 0.5 * (p0 * p0).sum(-1))
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(dh) & np.isfinite(gn).all(-1)
        want = finite & (log_u < np.where(finite, dh, 0))
    out = run(hmc_accept.hmc_accept, "cpu", zz, ll, g, zn, lln, gn, p0, pn, log_u, beta, step,
              np.empty(R, bool), np.empty(R, bool), 0.65, True)
    np.testing.assert_array_equal(out[11], want)
    np.testing.assert_array_equal(out[12], ~finite)
    np.testing.assert_array_equal(out[10], hmc_ref.adapt_step(step, want, 0.65))


def test_hmc_adaptation_is_minivae_hmc_adapt_step():
    up, down = hmc_accept._factors(0.65)
    assert np.isclose(0.65 * np.log(up) + 0.35 * np.log(down), 0)  # drift 0 at the target rate
    step = rng().uniform(0.05, 0.2, 50)
    acc = rng().random(50) < 0.6
    np.testing.assert_array_equal(hmc_ref.adapt_step(step, acc, 0.65), step * np.where(acc, up, down))


# --- batched Adam -------------------------------------------------------------------------------

def adam_inputs(dtype, n=9, p=23):
    r = rng()
    pp, g = (r.standard_normal((n, p)).astype(dtype) for _ in range(2))
    m = (0.1 * r.standard_normal((n, p))).astype(dtype)
    v = (0.01 * r.random((n, p))).astype(dtype)
    t = r.integers(0, 5, n)
    active = r.random(n) < 0.6
    active[:2] = [True, False]
    return pp, g, m, v, t, active


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_matches_reference_and_freezes_rows(dtype):
    args = adam_inputs(dtype)
    ref, cpu = both(adam.adam_batched, *args, 1e-2)
    for got, want in zip(cpu[:5], ref[:5]):
        close(got, want, dtype)
    np.testing.assert_array_equal(cpu[4], args[4] + args[5])
    frozen = ~args[5]
    for k in range(4):  # p, g, m, v of frozen rows: bit for bit
        assert cpu[k][frozen].tobytes() == args[k][frozen].tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_reference_is_optim(dtype):
    p, g, m, v, t, active = adam_inputs(dtype)
    state = {"m": {"w": m.copy()}, "v": {"w": v.copy()}, "t": t.copy()}
    params = {"w": p.copy()}
    for _ in range(3):
        optim.batched_adam_step(params, {"w": g}, state, 1e-2, active)
        adam.adam_batched(p, g, m, v, t, active, 1e-2, impl="ref")
    np.testing.assert_array_equal(params["w"], p)
    np.testing.assert_array_equal(state["m"]["w"], m)
    np.testing.assert_array_equal(state["t"], t)


# --- decoder gradient ---------------------------------------------------------------------------

@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_decoder_grad_is_log_joint(layers, impl):
    cfg = Config(latent=4, dec_hidden=9, dec_layers=layers, data_dim=30, dtype="float64")
    r = rng()
    params = model.init_params(cfg, r)
    for k in params:
        params[k] = params[k] + 0.3 * r.standard_normal(params[k].shape)
    n, chains = 3, 4
    x = (r.random((n, 30)) < 0.5).astype(np.float64)
    z = r.standard_normal((n, chains, 4))
    beta = 0.37
    logf, dz = model.log_joint(params, cfg, x, z, beta)
    buf = decoder.decoder_buffers(params, rows=n * chains + 5)  # spare rows: slices are used
    gz, ll = decoder.decoder_grad(params, x, z.reshape(-1, 4), chains, beta, True, buf, impl=impl)
    np.testing.assert_allclose(gz, dz.reshape(-1, 4), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(beta * buf.grad_ll[:n * chains], gz + z.reshape(-1, 4), rtol=1e-12, atol=1e-13)
    got = densities.log_std_normal(z.reshape(-1, 4)) + beta * ll
    np.testing.assert_allclose(got, logf.reshape(-1), rtol=1e-12)
    gz2, none = decoder.decoder_grad(params, x, z.reshape(-1, 4), chains, beta, False, buf, impl=impl)
    assert none is None
    np.testing.assert_allclose(gz2, dz.reshape(-1, 4), rtol=1e-12, atol=1e-13)


def test_decoder_grad_is_the_ais_target():
    # minivae.estimators.ais's target(z) -> (log p(x|z), its gradient), with x repeated over chains
    ais = pytest.importorskip("minivae.estimators.ais")
    if not hasattr(ais, "likelihood_target"):
        pytest.skip("minivae.estimators.ais has no likelihood_target")
    cfg = Config(latent=5, dec_hidden=8, dec_layers=2, data_dim=12, dtype="float64")
    r = rng()
    params = model.init_params(cfg, r)
    x = (r.random((3, 12)) < 0.5).astype(np.float64)
    z = r.standard_normal((6, 5))
    ll, gll = ais.likelihood_target(params, cfg, np.repeat(x, 2, axis=0))(z, need_value=True)
    buf = decoder.decoder_buffers(params, 6)
    _, ll2 = decoder.decoder_grad(params, x, z, 2, 1.0, True, buf)
    np.testing.assert_allclose(ll2, ll, rtol=1e-12)
    np.testing.assert_allclose(buf.grad_ll, gll, rtol=1e-12, atol=1e-14)


def test_decoder_grad_float32_close():
    cfg = Config(dtype="float32")
    r = rng()
    params = model.init_params(cfg, r)
    x = (r.random((4, 784)) < 0.3).astype(np.float32)
    z = r.standard_normal((4, 5, 50)).astype(np.float32)
    logf, dz = model.log_joint(params, cfg, x, z, 1.0)
    buf = decoder.decoder_buffers(params, 20)
    gz, ll = decoder.decoder_grad(params, x, z.reshape(-1, 50), 5, 1.0, True, buf)
    assert gz.dtype == np.float32
    np.testing.assert_allclose(gz, dz.reshape(-1, 50), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(densities.log_std_normal(z.reshape(-1, 50)) + ll, logf.ravel(), rtol=1e-5)


# --- dispatch -----------------------------------------------------------------------------------

@pytest.mark.parametrize("grain", [1, 1 << 40])
def test_cpu_thread_limit_keeps_results_and_restores_the_pool(monkeypatch, grain):
    import numba
    monkeypatch.setattr(_dispatch, "GRAIN", grain)  # every thread / one thread
    before = numba.get_num_threads()
    a, b, x = bern_inputs(np.float64, n=40)
    g0, g1, l0, l1 = np.empty_like(a), np.empty_like(a), np.empty(120), np.empty(120)
    bernoulli.bernoulli_grad(a, b, x, 3, g0, l0, True, impl="ref")
    bernoulli.bernoulli_grad(a, b, x, 3, g1, l1, True, impl="cpu")
    close(g1, g0, np.float64)
    close(l1, l0, np.float64)
    assert numba.get_num_threads() == before


def test_shape_mismatches_are_errors():
    a, b, x = bern_inputs(np.float64)
    with pytest.raises(ValueError, match="chains"):
        bernoulli.bernoulli_grad(a, b, x, 2, np.empty_like(a), None, False)
    params = model.init_params(Config(latent=2, dec_hidden=3, data_dim=4, dtype="float64"), rng())
    with pytest.raises(ValueError, match="buffers"):
        decoder.decoder_grad(params, np.zeros((3, 4)), np.zeros((3, 2)), 1, 1.0, False,
                             decoder.decoder_buffers(params, 2))


def test_dispatch():
    a = np.zeros((2, 2))
    assert _dispatch.pick("auto", a) == "cpu"
    assert _dispatch.pick("ref", a) == "ref"
    with pytest.raises(ValueError, match="impl"):
        _dispatch.pick("gpu", a)


# --- the CUDA twins compile for real hardware (PTX through NVVM; no GPU needed) -----------------

def _nvvm():
    try:
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _nvvm(), reason="libNVVM (CUDA toolkit) not found")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernels_compile_to_ptx(dtype):
    import numba
    from numba import cuda
    a, v, b = np.zeros((3, 4), dtype), np.zeros(3, dtype), np.zeros(4, dtype)
    i8, i64, flags = np.zeros(3, np.int8), np.zeros(3, np.int64), np.zeros(3, bool)
    cases = [
        (elu._bias_elu_cuda, (a, b, a, a)), (elu._elu_backward_cuda, (a, a, a)),
        (bernoulli._bernoulli_grad_cuda, (a, b, a, 1, a, v, True)),
        (leapfrog._leapfrog_momentum_cuda, (a, a, v, 0.5)),
        (leapfrog._leapfrog_position_cuda, (a, a, v)),
        (leapfrog._leapfrog_momentum_position_cuda, (a, a, a, v)),
        (ais_weights._ais_log_weight_cuda, (v, v, 0.1)),
        (hmc_accept._hmc_accept_cuda, (a, v, a, a, v, a, a, a, v, 0.7, v, i8, flags, 1.01, 0.98, True)),
        (adam._adam_batched_cuda, (a, a, a, a, i64, flags, 0.1, 0.9, 0.999, 1e-8)),
    ]
    for kernel, args in cases:
        ptx, _ = cuda.compile_ptx(kernel.py_func, tuple(numba.typeof(x) for x in args), cc=(8, 0))
        assert ".entry" in ptx
