"""The CUDA twins equal the references: under the simulator with a small block and grid (so
the grid-stride loops and block reductions wrap), or on a real GPU.

The simulator must be switched on before numba.cuda is first imported, so run this file in
its own process:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cuda tests/test_kernels_cuda.py -q
"""
import importlib
import os

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
if not SIM:
    from numba import cuda
    if not cuda.is_available():
        pytest.skip("no CUDA GPU; run under NUMBA_ENABLE_CUDASIM=1 in its own process",
                    allow_module_level=True)

from kernels import _dispatch, adam, ais_weights, bernoulli, decoder, elu, leapfrog  # noqa: E402
from minivae.model import densities, model  # noqa: E402
from minivae.model.config import Config  # noqa: E402

hmc_accept = importlib.import_module("kernels.hmc_accept")

pytestmark = pytest.mark.cuda
DTYPES = [np.float64, np.float32]


@pytest.fixture(autouse=True)
def small_launch(monkeypatch):
    monkeypatch.setattr(_dispatch, "BLOCK", 8)
    monkeypatch.setattr(_dispatch, "MAX_GRID", 3)


def rng():
    return np.random.default_rng(1)


def close(got, want, dtype):
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
    else:
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def both(fn, *arrays, **kw):
    out = []
    for impl in ("ref", "cuda"):
        copies = [a.copy() if isinstance(a, np.ndarray) else a for a in arrays]
        fn(*copies, impl=impl, **kw)
        out.append(copies)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_elu_and_backward(dtype):
    a = (3 * rng().standard_normal((5, 7))).astype(dtype)
    a[0, :3] = [1e4, -1e4, 0]
    b = rng().standard_normal(7).astype(dtype)
    (_, _, y0, d0), (_, _, y1, d1) = both(elu.bias_elu, a, b, np.empty_like(a), np.empty_like(a))
    close(y1, y0, dtype)
    close(d1, d0, dtype)
    (_, _, o0), (_, _, o1) = both(elu.elu_backward, a, b[None, :] + a, np.empty_like(a))
    close(o1, o0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("want_ll", [True, False])
def test_bernoulli_grad(dtype, want_ll):
    r = rng()
    chains, d = 3, 19
    a = (6 * r.standard_normal((2 * chains, d))).astype(dtype)
    a[0, :2] = [1e4, -1e4]
    b = r.standard_normal(d).astype(dtype)
    x = (r.random((2, d)) < 0.4).astype(dtype)
    args = (a, b, x, chains, np.empty_like(a), np.zeros(2 * chains, dtype), want_ll)
    (*_, g0, l0, _), (*_, g1, l1, _) = both(bernoulli.bernoulli_grad, *args)
    close(g1, g0, dtype)
    close(l1, l0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_leapfrog_and_weights(dtype):
    r = rng()
    p, z, g = (r.standard_normal((5, 4)).astype(dtype) for _ in range(3))
    step = r.uniform(0.05, 0.2, 5).astype(dtype)
    (p0, *_), (p1, *_) = both(leapfrog.leapfrog_momentum, p, g, step, 0.5)
    close(p1, p0, dtype)
    (z0, *_), (z1, *_) = both(leapfrog.leapfrog_position, z, p, step)
    close(z1, z0, dtype)
    (p0, z0, *_), (p1, z1, *_) = both(leapfrog.leapfrog_momentum_position, p, z, g, step)
    close(p1, p0, dtype)
    close(z1, z0, dtype)
    (w0, *_), (w1, *_) = both(ais_weights.ais_log_weight, p[:, 0].copy(), z[:, 0].copy(), 0.1)
    close(w1, w0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hmc_accept(dtype):
    r = rng()
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
    ref, dev = both(hmc_accept.hmc_accept, *args)
    for got, want in zip(dev[:9], ref[:9]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(dev[10], ref[10])         # step sizes: the same two factors
    np.testing.assert_array_equal(dev[11], ref[11])
    np.testing.assert_array_equal(dev[12], [1, 1, 1] + [0] * 7)
    assert 0 < ref[11].sum() < 7


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam(dtype):
    r = rng()
    p, g = (r.standard_normal((5, 11)).astype(dtype) for _ in range(2))
    m = (0.1 * r.standard_normal((5, 11))).astype(dtype)
    v = (0.01 * r.random((5, 11))).astype(dtype)
    t = np.array([0, 3, 1, 7, 2])
    active = np.array([True, False, True, True, False])
    ref, dev = both(adam.adam_batched, p, g, m, v, t, active, 1e-2)
    for got, want in zip(dev[:4], ref[:4]):
        close(got, want, dtype)
    np.testing.assert_array_equal(dev[4], t + active)
    assert dev[0][~active].tobytes() == p[~active].tobytes()


def test_decoder_grad():
    cfg = Config(latent=3, dec_hidden=6, dec_layers=2, data_dim=10, dtype="float64")
    r = rng()
    params = model.init_params(cfg, r)
    x = (r.random((2, 10)) < 0.5).astype(np.float64)
    z = r.standard_normal((2, 2, 3))
    logf, dz = model.log_joint(params, cfg, x, z, 0.5)
    buf = decoder.decoder_buffers(params, 4)
    gz, ll = decoder.decoder_grad(params, x, z.reshape(-1, 3), 2, 0.5, True, buf, impl="cuda")
    np.testing.assert_allclose(gz, dz.reshape(-1, 3), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(densities.log_std_normal(z.reshape(-1, 3)) + 0.5 * ll,
                               logf.ravel(), rtol=1e-12)


@pytest.mark.gpu
def test_auto_runs_cuda_on_cupy_arrays():
    cp = pytest.importorskip("cupy")
    if SIM:
        pytest.skip("needs real CUDA hardware")
    a = cp.asarray(rng().standard_normal((300, 700)))
    b = cp.asarray(rng().standard_normal(700))
    assert _dispatch.pick("auto", a) == "cuda"
    y, d = cp.empty_like(a), cp.empty_like(a)
    elu.bias_elu(a, b, y, d)
    y0, d0 = cp.empty_like(a), cp.empty_like(a)
    elu.bias_elu(a, b, y0, d0, impl="ref")
    cp.testing.assert_allclose(y, y0, rtol=1e-12)
    cp.testing.assert_allclose(d, d0, rtol=1e-12)


# --- the fused flow's coupling and the full-covariance factor (issue 14) -----------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_coupling_forward_and_backward(dtype):
    from kernels import coupling
    r = rng()
    x, a, m, dy = (r.standard_normal((5, 7)).astype(dtype) for _ in range(4))
    a[0, :2] = [-60, 60]
    dl = r.standard_normal(5).astype(dtype)
    e = np.empty_like(x)
    (_, _, _, y0, s0, l0), (_, _, _, y1, s1, l1) = both(coupling.coupling_forward, x, a, m, e, e,
                                                        np.ones(5, dtype))
    for got, want in ((y1, y0), (s1, s0), (l1, l0)):
        close(got, want, dtype)
    outs = both(coupling.coupling_backward, dy, x, s0, dl, e, e, e)
    for got, want in zip(outs[1][4:], outs[0][4:]):
        close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tril_unpack_and_pack(dtype):
    from kernels import tril
    r, Z, B = rng(), 4, 3
    h = r.standard_normal((B, Z + Z * (Z + 1) // 2)).astype(dtype)
    dL, s = r.standard_normal((B, Z, Z)).astype(dtype), r.standard_normal(B).astype(dtype)
    dz, eps = (r.standard_normal((B, 2, Z)).astype(dtype) for _ in range(2))
    (_, L0), (_, L1) = both(tril.tril_unpack, h, np.full((B, Z, Z), 7, dtype))
    close(L1, L0, dtype)
    (*_, d0), (*_, d1) = both(tril.tril_pack, dL, L0, s, np.zeros_like(h))
    close(d1, d0, dtype)
    (*_, d0), (*_, d1) = both(tril.tril_pack_outer, dz, eps, L0, s, np.zeros_like(h))
    close(d1, d0, dtype)
