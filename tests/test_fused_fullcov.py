"""The fused full-covariance Gaussian (minivae.model.fused_fullcov, kernels.tril) equals the
reference fullcov.py, which the FD tests check: float64, tight tolerances, same noise."""
import numpy as np
import pytest

from kernels import tril
from minivae import train
from minivae.estimators import localopt
from minivae.model import fastpath, fused_fullcov, model, objectives, optim
from minivae.model.fullcov import FullCov
from minivae.model.posteriors import get_family
from test_train_step import near as close
from test_train_step import small, steps_follow_the_reference

pytestmark = pytest.mark.skipif(fastpath.kernels() is None, reason="kernels/ cannot be loaded")


def fullcov_model(layers=(2, 2), n=6):
    cfg, _, x, rng = small(*layers, n=n)
    cfg = cfg.replace(q="fullcov")
    params = model.init_params(cfg, rng)
    params = {k: v + 0.2 * rng.standard_normal(v.shape) for k, v in params.items()}
    return cfg, get_family(cfg), params, x, rng


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tril_kernels_are_the_reference_and_fullcov_cholesky(dtype):
    r = np.random.default_rng(0)
    Z, B = 4, 3
    h = r.standard_normal((B, Z + Z * (Z + 1) // 2)).astype(dtype)
    dL, s = r.standard_normal((B, Z, Z)).astype(dtype), r.standard_normal(B).astype(dtype)
    dz, eps = (r.standard_normal((B, 2, Z)).astype(dtype) for _ in range(2))
    out = {}
    for impl in ("ref", "cpu"):
        L, dh, dh2 = np.full((B, Z, Z), 7.0, dtype), np.full_like(h, 7.0), np.full_like(h, 7.0)
        tril.tril_unpack(h, L, impl=impl)
        tril.tril_pack(dL, L, s, dh, impl=impl)
        tril.tril_pack_outer(dz, eps, L, s, dh2, impl=impl)
        out[impl] = (L, dh, dh2)
    tol = 1e-14 if dtype == np.float64 else 1e-6
    for got, want in zip(out["cpu"], out["ref"]):
        np.testing.assert_allclose(got, want, rtol=tol)
    np.testing.assert_allclose(out["ref"][0], FullCov(Z).cholesky(h), rtol=tol)
    assert (out["ref"][1][:, :Z] == 7).all()                        # mu's part left to the caller
    L, dh2 = out["ref"][0], np.full_like(h, 7.0)
    tril.tril_pack(np.einsum("bki,bkj->bij", dz, eps), L, s, dh2, impl="ref")
    np.testing.assert_allclose(out["ref"][2], dh2, rtol=tol)


@pytest.mark.parametrize("objective,lam,K", [("elbo", 1.0, 1), ("elbo", 0.3, 3), ("iwae", 1.0, 4)])
def test_fullcov_train_step_is_bound_and_grads(objective, lam, K):
    cfg, family, params, x, rng = fullcov_model()
    eps = rng.standard_normal((6, K, 3))
    value, grads = objectives.bound_and_grads(params, cfg, family, x, eps, lam, objective)
    p = {k: v.copy() for k, v in params.items()}
    step = fused_fullcov.FullCovTrainStep(p, optim.adam_init(p), cfg, 6, K, sparse_input=True)
    for _ in range(2):
        close(step(x, eps, lam, objective), value)
        assert set(step.grads) == set(grads)
        for k in grads:
            close(step.grads[k], grads[k])


def test_fullcov_training_steps_follow_the_reference():
    cfg, family, params, x, rng = fullcov_model()
    tanh = cfg.replace(act="tanh", dec_layers=0)                      # its decoder would do, not its encoder
    assert fused_fullcov.supports(tanh, family) and not fused_fullcov.supports(tanh, family, encoder=True)
    steps_follow_the_reference(params, cfg, family, x, rng, (6, 1, 3))


def test_qstar_fullcov_gradient_and_fit_local_follow_the_reference():
    cfg, family, params, x, rng = fullcov_model()
    h = 0.3 * rng.standard_normal((6, family.n_out))
    eps = rng.standard_normal((6, 4, 3))
    want, back = objectives.log_weights(params, cfg, family, x, h, eps, decoder_grads=False)
    dh, _ = back(np.full(want.shape, 0.25))
    step = localopt._fast_gradient(params, cfg, family, x, 4)
    assert isinstance(step, fused_fullcov.QStarFullCov)
    for _ in range(2):
        grads, logw = step({"h": h}, x, eps)
        close(logw, want)
        close(grads["h"], dh)
    settings = dict(max_steps=40, samples=3, lr=0.02, check_every=5, patience=1)
    fast = localopt.fit_local(params, cfg, family, x, np.random.default_rng(4), **settings)
    ref = localopt.fit_local(params, cfg, family, x, np.random.default_rng(4), impl="ref", **settings)
    np.testing.assert_array_equal(fast["steps"], ref["steps"])
    close(fast["local"]["h"], ref["local"]["h"], 1e-9)
