"""The decoder's fused twin: the vectorisable math helpers, the ELU and Bernoulli kernels (CPU
and CUDA equal to their references, the references equal to the layer code), and
fastpath.Decoder and log_lik_dz equal to the reference model.log_lik."""
import numpy as np
import pytest
from numba import njit

from kernels import bernoulli, elu
from kernels._math import exp_nonpos, expm1_exp_nonpos, log1p_unit
from minivae.estimators import ais
from minivae.model import densities, fastpath, model, nn, objectives
from minivae.model.config import Config
from minivae.model.posteriors import get_family
from minivae.testing.kernels import DTYPES, both, close, ref_and_cuda, rng, run

from conftest import cuda_twin
from test_train_step import near, small


# --- the vectorisable exp / expm1 / log1p ----------------------------------------------------


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


# --- ELU -------------------------------------------------------------------------------------


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


# --- Bernoulli output layer ------------------------------------------------------------------


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


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_grad_on_grey_levels(dtype):
    """mnist-gray feeds targets k/256: the @njit kernel against the reference and densities."""
    a, b, _ = bern_inputs(dtype)
    x = (np.floor(256 * rng(3).random((5, a.shape[1]))) / 256).astype(dtype)
    args = (a, b, x, 3, np.empty_like(a), np.empty(a.shape[0], dtype), True)
    (*_, g0, l0, _), (*_, g1, l1, _) = both(bernoulli.bernoulli_grad, *args)
    close(g1, g0, dtype)
    close(l1, l0, dtype)
    ll, grad = densities.bernoulli_logits(np.repeat(x.astype(np.float64), 3, axis=0), (a + b).astype(np.float64))
    close(g0, grad.astype(dtype), dtype)
    close(l0, ll.astype(dtype), dtype)


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


# --- the CUDA twins --------------------------------------------------------------------------


@cuda_twin
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_bias_elu_and_backward(dtype):
    a = (3 * rng(1).standard_normal((5, 7))).astype(dtype)
    a[0, :3] = [1e4, -1e4, 0]
    b = rng(1).standard_normal(7).astype(dtype)
    (_, _, y0, d0), (_, _, y1, d1) = ref_and_cuda(elu.bias_elu, a, b, np.empty_like(a), np.empty_like(a))
    close(y1, y0, dtype)
    close(d1, d0, dtype)
    (_, _, o0), (_, _, o1) = ref_and_cuda(elu.elu_backward, a, b[None, :] + a, np.empty_like(a))
    close(o1, o0, dtype)


@cuda_twin
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("want_ll", [True, False])
def test_cuda_bernoulli_grad(dtype, want_ll):
    r = rng(1)
    chains, d = 3, 19
    a = (6 * r.standard_normal((2 * chains, d))).astype(dtype)
    a[0, :2] = [1e4, -1e4]
    b = r.standard_normal(d).astype(dtype)
    x = (r.random((2, d)) < 0.4).astype(dtype)
    args = (a, b, x, chains, np.empty_like(a), np.zeros(2 * chains, dtype), want_ll)
    (*_, g0, l0, _), (*_, g1, l1, _) = ref_and_cuda(bernoulli.bernoulli_grad, *args)
    close(g1, g0, dtype)
    close(l1, l0, dtype)


# --- fastpath.Decoder: the one fused decoder -------------------------------------------------


@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_decoder_is_log_joint(layers, impl):
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
    dec = fastpath.Decoder(params, rows=n * chains + 5, impl=impl)  # spare rows: slices are used
    gz, ll = dec(params, x, z.reshape(-1, 4), chains, beta, True)
    np.testing.assert_allclose(gz, dz.reshape(-1, 4), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(beta * dec.grad_ll[:n * chains], gz + z.reshape(-1, 4), rtol=1e-12, atol=1e-13)
    got = densities.log_std_normal(z.reshape(-1, 4)) + beta * ll
    np.testing.assert_allclose(got, logf.reshape(-1), rtol=1e-12)
    gz2, none = dec(params, x, z.reshape(-1, 4), chains, beta, False)
    assert none is None
    np.testing.assert_allclose(gz2, dz.reshape(-1, 4), rtol=1e-12, atol=1e-13)


def test_decoder_is_the_ais_target():
    # ais's target(z) -> (log p(x|z), its gradient): the reference, with x repeated over chains
    cfg = Config(latent=5, dec_hidden=8, dec_layers=2, data_dim=12, dtype="float64")
    r = rng()
    params = model.init_params(cfg, r)
    x = (r.random((3, 12)) < 0.5).astype(np.float64)
    z = r.standard_normal((6, 5))
    ll, gll = ais.likelihood_target(params, cfg, np.repeat(x, 2, axis=0), impl="ref")(z, need_value=True)
    dec = fastpath.Decoder(params, 6)
    _, ll2 = dec(params, x, z, 2)
    np.testing.assert_allclose(ll2, ll, rtol=1e-12)
    np.testing.assert_allclose(dec.grad_ll, gll, rtol=1e-12, atol=1e-14)


def test_decoder_float32_close():
    cfg = Config(dtype="float32")
    r = rng()
    params = model.init_params(cfg, r)
    x = (r.random((4, 784)) < 0.3).astype(np.float32)
    z = r.standard_normal((4, 5, 50)).astype(np.float32)
    logf, dz = model.log_joint(params, cfg, x, z, 1.0)
    dec = fastpath.Decoder(params, 20)
    gz, ll = dec(params, x, z.reshape(-1, 50), 5)
    assert gz.dtype == np.float32
    np.testing.assert_allclose(gz, dz.reshape(-1, 50), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(densities.log_std_normal(z.reshape(-1, 50)) + ll, logf.ravel(), rtol=1e-5)


def test_shape_mismatches_are_errors():
    a, b, x = bern_inputs(np.float64)
    with pytest.raises(ValueError, match="chains"):
        bernoulli.bernoulli_grad(a, b, x, 2, np.empty_like(a), None, False)
    params = model.init_params(Config(latent=2, dec_hidden=3, data_dim=4, dtype="float64"), rng())
    with pytest.raises(ValueError, match="rows"):
        fastpath.Decoder(params, 2)(params, np.zeros((3, 4)), np.zeros((3, 2)), 1, 1.0, False)


@cuda_twin
def test_cuda_decoder():
    cfg = Config(latent=3, dec_hidden=6, dec_layers=2, data_dim=10, dtype="float64")
    r = rng(1)
    params = model.init_params(cfg, r)
    x = (r.random((2, 10)) < 0.5).astype(np.float64)
    z = r.standard_normal((2, 2, 3))
    logf, dz = model.log_joint(params, cfg, x, z, 0.5)
    gz, ll = fastpath.Decoder(params, 4, impl="cuda")(params, x, z.reshape(-1, 3), 2, 0.5, True)
    np.testing.assert_allclose(gz, dz.reshape(-1, 3), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(densities.log_std_normal(z.reshape(-1, 3)) + 0.5 * ll,
                               logf.ravel(), rtol=1e-12)


@pytest.mark.parametrize("q", ["flow", "fullcov"])
def test_log_weights_dz_only_decoder_is_the_reference(q):
    cfg, params, x, r = small()
    cfg = cfg.replace(q=q, flow_hidden=5)
    family = get_family(cfg)
    if q == "flow":
        params.update(family.init_local(r, 6, np.float64, np)[1])
    else:
        family.init_global(r, params, np.float64, np)
    h = 0.3 * r.standard_normal((6, family.n_out))
    eps = r.standard_normal((6, 4, family.noise_dim))
    w = r.random((6, 4))
    logw0, back0 = objectives.log_weights(params, cfg, family, x, h, eps, decoder_grads=False)
    workspace = {}
    for _ in range(2):                                            # buffers reused on the second call
        logw, back = objectives.log_weights(params, cfg, family, x, h, eps, decoder_grads=False,
                                            workspace=workspace)
        near(logw, logw0)
        (dh, g), (dh0, g0) = back(w), back0(w)
        near(dh, dh0)
        assert set(g) == set(g0)
    assert "decoder" in workspace
    fewer = {k: v[:3] if q == "flow" and k.startswith("q.") else v for k, v in params.items()}
    logw_small, _ = objectives.log_weights(fewer, cfg, family, x[:3], h[:3], eps[:3],
                                           decoder_grads=False, workspace=workspace)
    near(logw_small, logw0[:3])
