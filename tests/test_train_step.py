"""The training step's fused twin: the sparse-input product and FFG reparameterisation kernels
(CPU and CUDA equal to their references, the references equal to the library code), and
fastpath.TrainStep equal to objectives.bound_and_grads + optim.adam_step (float64, tight
tolerances, same noise), which the finite-difference tests check."""
import numpy as np
import pytest

from kernels import reparam, sparse_input
from minivae import io, train
from minivae.model import fastpath, model, objectives, optim
from minivae.model.config import Config
from minivae.model.posteriors import get_family
from minivae.testing.gradcheck import check_each
from minivae.testing.kernels import DTYPES, close, ref_and_cuda, rng

from conftest import cuda_twin

pytestmark = pytest.mark.skipif(fastpath.kernels() is None, reason="kernels/ cannot be loaded")


def small(enc_layers=2, dec_layers=2, seed=0, n=6, latent=3, data_dim=30, density=0.3):
    cfg = Config(data_dim=data_dim, latent=latent, enc_hidden=7, dec_hidden=6, enc_layers=enc_layers,
                 dec_layers=dec_layers, dtype="float64", batch=n)
    rng = np.random.default_rng(seed)
    params = model.init_params(cfg, rng)
    for k in params:
        params[k] = params[k] + 0.2 * rng.standard_normal(params[k].shape)
    x = (rng.random((n, data_dim)) < density).astype(np.float64)
    return cfg, params, x, rng


def root(a):
    while a.base is not None:
        a = a.base
    return a


def near(got, want, rtol=1e-10):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def steps_follow_the_reference(params, cfg, family, x, rng, noise, steps=8):
    """`steps` fused training steps (train.training_step) and as many reference steps
    (impl="ref") from the same params and noise (shape `noise`): the same bounds and the same
    parameters after, to float64 rounding."""
    ref = {k: v.copy() for k, v in params.items()}
    fast_step = train.training_step(params, optim.adam_init(params), cfg, family, (), True)
    ref_step = train.training_step(ref, optim.adam_init(ref), cfg, family, (), True, impl="ref")
    for _ in range(steps):
        eps = rng.standard_normal(noise)
        near(fast_step(x, eps, 0.5, 3e-3), ref_step(x, eps, 0.5, 3e-3), 1e-9)
    for k in ref:
        near(params[k], ref[k], 1e-8)


# --- sparse input products -------------------------------------------------------------------


def sparse_x(dtype, rows=23, cols=37, density=0.2):
    r = rng(5)
    x = (r.random((rows, cols)) < density).astype(dtype)
    x[3] = 0                                              # an empty row
    x[:, 20] = 0                                          # an empty column
    x[1, :9] = 1                                          # a row with more than four nonzeros
    if dtype != np.uint8:
        x[2, 7], x[4, 8] = 2.5, -0.75                     # not only ones
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xtype", ["same", "uint8"])
def test_sparse_matmul_is_the_product(dtype, xtype):
    x = sparse_x(np.uint8 if xtype == "uint8" else dtype)
    r = rng(5)
    W = r.standard_normal((37, 11)).astype(dtype)
    dy = r.standard_normal((23, 11)).astype(dtype)
    y, dW = np.full((23, 11), np.nan, dtype), np.full((37, 11), np.nan, dtype)
    sparse_input.sparse_matmul(x, W, y, impl="cpu")
    sparse_input.sparse_matmul_tn(x, dy, dW, impl="cpu")
    xf = x.astype(dtype)
    close(y, xf @ W, dtype, scaled=True)
    close(dW, xf.T @ dy, dtype, scaled=True)
    y0, dW0 = np.empty_like(y), np.empty_like(dW)
    sparse_input.sparse_matmul(x, W, y0, impl="ref")
    sparse_input.sparse_matmul_tn(x, dy, dW0, impl="ref")
    close(y, y0, dtype, scaled=True)
    close(dW, dW0, dtype, scaled=True)
    assert (y[3] == 0).all() and (dW[20] == 0).all()


def test_sparse_matmul_binary_input_sums_in_order():
    # 0/1 inputs: each output is a plain sum over the nonzeros in increasing index
    x = sparse_x(np.float32)[:, :30]
    x[x != 0] = 1
    W = rng(5).standard_normal((30, 6)).astype(np.float32)
    y = np.empty((23, 6), np.float32)
    sparse_input.sparse_matmul(x, W, y)
    want = np.zeros_like(y)
    for r_, k in zip(*np.nonzero(x)):
        want[r_] += W[k]
    np.testing.assert_array_equal(y, want)


def test_sparse_shapes_are_checked():
    x = sparse_x(np.float64)
    with pytest.raises(ValueError, match="does not fit"):
        sparse_input.sparse_matmul(x, np.zeros((36, 3)), np.zeros((23, 3)))
    with pytest.raises(ValueError, match="does not fit"):
        sparse_input.sparse_matmul_tn(x, np.zeros((23, 3)), np.zeros((37, 4)))


# --- FFG reparameterisation ------------------------------------------------------------------


def ffg_inputs(dtype, B=4, K=3, Z=5):
    r = rng(5)
    h = (0.7 * r.standard_normal((B, 2 * Z))).astype(dtype)
    eps = r.standard_normal((B, K, Z)).astype(dtype)
    g = r.standard_normal((B * K, Z)).astype(dtype)
    w = r.random((B, K)).astype(dtype)
    return h, np.exp(0.5 * h[:, Z:]), eps, g, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [True, False])
def test_ffg_kernels_match_reference(dtype, weighted):
    h, std, eps, g, w = ffg_inputs(dtype)
    out = {}
    for impl in ("ref", "cpu"):
        z, c, dh = np.empty((12, 5), dtype), np.empty((4, 3), dtype), np.empty((4, 10), dtype)
        reparam.ffg_forward(h, std, eps, 0.6, z, c, impl=impl)
        reparam.ffg_backward(h, std, eps, g, w, 0.6, weighted, dh, impl=impl)
        out[impl] = z, c, dh
    for got, want in zip(out["cpu"], out["ref"]):
        close(got, want, dtype, scaled=True)


def test_ffg_reference_is_the_library_log_weights():
    # log w = log p(x|z) + c, and dh from the decoder's weighted dz is log_weights' backward
    cfg = Config(data_dim=8, latent=5, enc_hidden=4, dec_hidden=6, dtype="float64")
    from minivae.model import model
    r = rng(5)
    params = model.init_params(cfg, r)
    family = get_family(cfg)
    h, std, eps, _, w = ffg_inputs(np.float64)
    x = (r.random((4, 8)) < 0.5).astype(np.float64)
    logw, back = objectives.log_weights(params, cfg, family, x, h, eps, lam=0.6)
    dh_want, _ = back(w)
    z, c, dh = np.empty((12, 5)), np.empty((4, 3)), np.empty((4, 10))
    reparam.ffg_forward(h, std, eps, 0.6, z, c, impl="ref")
    ll, back_ll = model.log_lik(params, cfg, x, z.reshape(4, 3, 5), False)
    np.testing.assert_allclose(ll + c, logw, rtol=1e-13)
    reparam.ffg_backward(h, std, eps, back_ll(w)[0].reshape(12, 5), w, 0.6, True, dh, impl="ref")
    np.testing.assert_allclose(dh, dh_want, rtol=1e-12, atol=1e-14)


def test_ffg_shapes_are_checked():
    h, std, eps, g, w = ffg_inputs(np.float64)
    with pytest.raises(ValueError, match="do not fit"):
        reparam.ffg_forward(h, std, eps[:, :2], 1.0, np.empty((12, 5)), np.empty((4, 3)))


@cuda_twin
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_sparse_and_ffg(dtype):
    x = sparse_x(dtype, rows=6, cols=21)
    r = rng(5)
    W, dy = r.standard_normal((21, 4)).astype(dtype), r.standard_normal((6, 4)).astype(dtype)
    ref, dev = ref_and_cuda(sparse_input.sparse_matmul, x, W, np.empty((6, 4), dtype))
    close(dev[2], ref[2], dtype, scaled=True)
    ref, dev = ref_and_cuda(sparse_input.sparse_matmul_tn, x, dy, np.empty((21, 4), dtype))
    close(dev[2], ref[2], dtype, scaled=True)
    h, std, eps, g, w = ffg_inputs(dtype)
    ref, dev = ref_and_cuda(reparam.ffg_forward, h, std, eps, 0.6, np.empty((12, 5), dtype),
                            np.empty((4, 3), dtype))
    close(dev[4], ref[4], dtype, scaled=True)
    close(dev[5], ref[5], dtype, scaled=True)
    for weighted in (True, False):
        ref, dev = ref_and_cuda(reparam.ffg_backward, h, std, eps, g, w, 0.6, weighted,
                                np.empty((4, 10), dtype))
        close(dev[7], ref[7], dtype, scaled=True)


# --- TrainStep -------------------------------------------------------------------------------


@pytest.mark.parametrize("objective,lam,K", [("elbo", 1.0, 1), ("elbo", 0.3, 3), ("iwae", 1.0, 4)])
@pytest.mark.parametrize("layers", [(2, 2), (1, 0), (0, 1)])
@pytest.mark.parametrize("sparse", [False, True])
def test_train_step_is_bound_and_grads(objective, lam, K, layers, sparse):
    cfg, params, x, rng = small(*layers)
    eps = rng.standard_normal((6, K, 3))
    value, grads = objectives.bound_and_grads(params, cfg, get_family(cfg), x, eps, lam, objective)
    p = {k: v.copy() for k, v in params.items()}
    step = fastpath.TrainStep(p, optim.adam_init(p), cfg, 8, K, sparse_input=sparse)  # spare rows
    near(step(x, eps, lam, objective), value)
    assert set(step.grads) == set(grads)
    for k in grads:
        near(step.grads[k], grads[k])


def test_train_step_gradient_by_finite_differences():
    cfg, params, x, rng = small()
    eps = rng.standard_normal((6, 2, 3))
    p = {k: v.copy() for k, v in params.items()}
    step = fastpath.TrainStep(p, optim.adam_init(p), cfg, 6, 2, sparse_input=True)
    step(x, eps, 0.7, "elbo")
    grads = {k: g.copy() for k, g in step.grads.items()}
    family = get_family(cfg)
    check_each(lambda q: float(objectives.bound_and_grads(q, cfg, family, x, eps, 0.7)[0].mean()),
               params, grads)


@pytest.mark.parametrize("frozen", ["dec.", "enc."])
def test_frozen_keys_get_no_gradient_and_no_update(frozen):
    cfg, params, x, rng = small()
    adam = optim.adam_init(params)
    before = {k: v.copy() for k, v in params.items()}
    step = fastpath.TrainStep(params, adam, cfg, 6, 1, frozen=(frozen,))
    assert not any(k.startswith(frozen) for k in step.grads)
    ref = {k: v.copy() for k, v in params.items()}
    eps = rng.standard_normal((6, 1, 3))
    _, grads = objectives.bound_and_grads(ref, cfg, get_family(cfg), x, eps)
    step(x, eps)
    for k in step.grads:
        near(step.grads[k], grads[k])
    for _ in range(2):
        step.update(1e-2)
        step(x, rng.standard_normal((6, 1, 3)))
    for k in params:
        assert np.array_equal(params[k], before[k]) == k.startswith(frozen)


def test_adopted_parameters_keep_their_values_and_are_updated_in_place():
    cfg, params, x, rng = small()
    adam = optim.adam_init(params)
    adam["m"]["enc.fc0.W"] += 0.5
    want = {k: v.copy() for k, v in params.items()}
    step = fastpath.TrainStep(params, adam, cfg, 6)
    for k in want:
        np.testing.assert_array_equal(params[k], want[k])
        assert np.shares_memory(params[k], step.p)
    assert (adam["m"]["enc.fc0.W"] == 0.5).all() and np.shares_memory(adam["v"]["dec.fc1.b"], step.v)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_training_steps_follow_the_reference(objective):
    cfg, params, x, rng = small()
    cfg = cfg.replace(objective=objective, k=2)
    steps_follow_the_reference(params, cfg, get_family(cfg), x, rng, (6, 2, 3), steps=10)


@pytest.mark.parametrize("impl", ["auto", "ref"])
def test_the_configs_adam_eps_reaches_adam(impl):
    """cfg.adam_eps is the epsilon of the step's Adam on both paths: one step is optim.adam_step
    with that eps, and eps 1e-4 (the authors' code) moves small-gradient parameters less."""
    cfg, params, x, rng = small()
    eps = rng.standard_normal((6, 1, 3))
    moved = {}
    for adam_eps in (1e-8, 1e-4):
        c = cfg.replace(adam_eps=adam_eps)
        p = {k: v.copy() for k, v in params.items()}
        want = {k: v.copy() for k, v in params.items()}
        train.training_step(p, optim.adam_init(p), c, get_family(c), (), True, impl=impl)(x, eps, 0.5, 3e-3)
        _, grads = objectives.bound_and_grads(want, c, get_family(c), x, eps, 0.5, "elbo")
        optim.adam_step(want, grads, optim.adam_init(want), 3e-3, eps=adam_eps, impl="ref")
        for k in want:
            near(p[k], want[k], 1e-9)
        moved[adam_eps] = sum(np.abs(p[k] - params[k]).sum() for k in p)
    assert moved[1e-4] < moved[1e-8] * 0.999


def test_train_uses_the_fast_path_and_ends_where_the_reference_does(tmp_path, monkeypatch):
    x = (np.random.default_rng(0).random((60, 30)) < 0.2).astype(np.uint8)
    cfg = Config(data_dim=30, latent=3, enc_hidden=8, dec_hidden=8, batch=20, schedule="plain",
                 epochs=2, lr=3e-3, warmup_epochs=1, dtype="float64", seed=2)
    fast = train.train(cfg, x, x[:20], tmp_path / "f.h5", progress=False)
    assert root(fast["params"]["enc.fc0.W"]) is root(fast["params"]["dec.fc2.b"])  # one buffer
    monkeypatch.setattr(fastpath, "supports", lambda cfg, family: False)
    ref = train.train(cfg, x, x[:20], tmp_path / "r.h5", progress=False)
    for k in ref["params"]:
        near(fast["params"][k], ref["params"][k], 1e-8)
    near(fast["curves"]["valid_elbo"], ref["curves"]["valid_elbo"], 1e-9)
    loaded = io.load_checkpoint(tmp_path / "f.h5")
    for k in loaded["params"]:
        np.testing.assert_array_equal(loaded["params"][k], fast["params"][k])


def test_sparse_input_is_decided_per_data_set():
    assert fastpath.mostly_zeros(np.eye(10, dtype=np.uint8))
    assert not fastpath.mostly_zeros(np.ones((10, 10), np.float32))
    assert not fastpath.mostly_zeros([[0, 0]])
