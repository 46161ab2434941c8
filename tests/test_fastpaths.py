"""The fused fast paths (minivae.model.fastpath, localopt's q*_FFG, train.training_step) equal the
reference layer code, which the FD tests check: float64, tight tolerances, same noise."""
import numpy as np
import pytest

from minivae.model import fastpath, model, nn, objectives, optim
from minivae import io, train
from minivae.estimators import localopt
from minivae.model.config import Config
from minivae.model.flow import Flow
from minivae.testing.gradcheck import check_each, check_grads
from minivae.model.posteriors import get_family

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


def close(got, want, rtol=1e-10):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


@pytest.mark.parametrize("objective,lam,K", [("elbo", 1.0, 1), ("elbo", 0.3, 3), ("iwae", 1.0, 4)])
@pytest.mark.parametrize("layers", [(2, 2), (1, 0), (0, 1)])
@pytest.mark.parametrize("sparse", [False, True])
def test_train_step_is_bound_and_grads(objective, lam, K, layers, sparse):
    cfg, params, x, rng = small(*layers)
    eps = rng.standard_normal((6, K, 3))
    value, grads = objectives.bound_and_grads(params, cfg, get_family(cfg), x, eps, lam, objective)
    p = {k: v.copy() for k, v in params.items()}
    step = fastpath.TrainStep(p, optim.adam_init(p), cfg, 8, K, sparse_input=sparse)  # spare rows
    close(step(x, eps, lam, objective), value)
    assert set(step.grads) == set(grads)
    for k in grads:
        close(step.grads[k], grads[k])


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
        close(step.grads[k], grads[k])
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
    family = get_family(cfg)
    ref = {k: v.copy() for k, v in params.items()}
    fast_step = train.training_step(params, optim.adam_init(params), cfg, family, (), True)
    ref_step = train.training_step(ref, optim.adam_init(ref), cfg, family, (), True, impl="ref")
    for i in range(10):
        eps = rng.standard_normal((6, 2, 3))
        close(fast_step(x, eps, 0.5, 3e-3), ref_step(x, eps, 0.5, 3e-3), 1e-9)
    for k in ref:
        close(params[k], ref[k], 1e-8)


def test_train_uses_the_fast_path_and_ends_where_the_reference_does(tmp_path, monkeypatch):
    x = (np.random.default_rng(0).random((60, 30)) < 0.2).astype(np.uint8)
    cfg = Config(data_dim=30, latent=3, enc_hidden=8, dec_hidden=8, batch=20, schedule="plain",
                 epochs=2, lr=3e-3, warmup_epochs=1, dtype="float64", seed=2)
    fast = train.train(cfg, x, x[:20], tmp_path / "f.h5", progress=False)
    assert root(fast["params"]["enc.fc0.W"]) is root(fast["params"]["dec.fc2.b"])  # one buffer
    monkeypatch.setattr(fastpath, "supports", lambda cfg, family: False)
    ref = train.train(cfg, x, x[:20], tmp_path / "r.h5", progress=False)
    for k in ref["params"]:
        close(fast["params"][k], ref["params"][k], 1e-8)
    close(fast["curves"]["valid_elbo"], ref["curves"]["valid_elbo"], 1e-9)
    loaded = io.load_checkpoint(tmp_path / "f.h5")
    for k in loaded["params"]:
        np.testing.assert_array_equal(loaded["params"][k], fast["params"][k])


def test_sparse_input_is_decided_per_data_set():
    assert fastpath.mostly_zeros(np.eye(10, dtype=np.uint8))
    assert not fastpath.mostly_zeros(np.ones((10, 10), np.float32))
    assert not fastpath.mostly_zeros([[0, 0]])


# --- q*_FFG ------------------------------------------------------------------------------------

def test_qstar_ffg_step_is_log_weights_backward():
    cfg, params, x, rng = small()
    family = get_family(cfg)
    h = 0.5 * rng.standard_normal((6, 6))
    eps = rng.standard_normal((6, 5, 3))
    logw, back = objectives.log_weights(params, cfg, family, x, h, eps, decoder_grads=False)
    dh, _ = back(np.full(logw.shape, 1 / 5))
    step = fastpath.QStarFFG(params, 7, 5)
    dh2, logw2 = step(params, x, h, eps)
    close(logw2, logw)
    close(dh2, dh)


@pytest.mark.parametrize("dec_layers", [2, 0])
def test_fit_local_fast_path_follows_the_reference(monkeypatch, dec_layers):
    cfg, params, x, _ = small(dec_layers=dec_layers, n=5)
    family = get_family(cfg)
    settings = dict(max_steps=120, samples=4, lr=0.05, check_every=10, patience=2)
    calls = []
    monkeypatch.setattr(fastpath.QStarFFG, "__call__", lambda self, *a, _f=fastpath.QStarFFG.__call__:
                        calls.append(1) or _f(self, *a))
    fast = localopt.fit_local(params, cfg, family, x, np.random.default_rng(3), **settings)
    assert calls
    ref = localopt.fit_local(params, cfg, family, x, np.random.default_rng(3), impl="ref", **settings)
    np.testing.assert_array_equal(fast["steps"], ref["steps"])
    np.testing.assert_array_equal(fast["converged"], ref["converged"])
    assert len(set(fast["steps"])) > 1                                   # rows were compacted
    close(fast["local"]["h"], ref["local"]["h"], 1e-9)
    close(np.nan_to_num(fast["trace"]), np.nan_to_num(ref["trace"]), 1e-10)


def test_flow_fit_local_fused_decoder_and_adam_follow_the_reference():
    cfg, params, x, _ = small(n=4)
    cfg = cfg.replace(q="flow", flow_hidden=5)
    family = get_family(cfg)
    settings = dict(max_steps=40, samples=3, lr=0.02, check_every=10, patience=1)
    fast = localopt.fit_local(params, cfg, family, x, np.random.default_rng(4), **settings)
    ref = localopt.fit_local(params, cfg, family, x, np.random.default_rng(4), impl="ref", **settings)
    np.testing.assert_array_equal(fast["steps"], ref["steps"])
    for k in ref["local"]:
        close(fast["local"][k], ref["local"][k], 1e-9)


def test_fit_local_keeps_the_reference_for_other_models():
    cfg, params, x, _ = small()
    for c in (cfg.replace(act="tanh"), cfg.replace(q="flow", flow_hidden=4)):
        assert not fastpath.supports(c, get_family(c))
    assert fastpath.supports(cfg, get_family(cfg))


# --- the fused ELU (the flow's nets) and the dz-only decoder (q* of any family) ----------------

@pytest.mark.parametrize("shape", [(4, 5), (3, 4, 6)])
def test_fused_elu_is_nn_elu_and_its_backward_passes_the_fd_check(shape):
    r = np.random.default_rng(0)
    x = 2 * r.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5                                     # away from the kink
    x.flat[:2] = [-800.0, 1e4]
    u = r.standard_normal(shape)
    y, back = fastpath.elu(x)
    y0, back0 = nn.elu(x)
    close(y, y0, 1e-14)
    close(back(u), back0(u), 1e-14)
    check_grads(lambda p: float(np.sum(fastpath.elu(p["x"])[0] * u[:2])), {"x": x[:2]},
                {"x": back(u)[:2]})


@pytest.mark.parametrize("local", [False, True])
def test_flow_with_the_fused_elu_is_the_reference_flow(local):
    r = np.random.default_rng(1)
    fused = Flow(3, 2, 5, "elu")
    assert fused._act is fastpath.elu
    ref = Flow(3, 2, 5, "elu")
    ref._act = "elu"
    params = fused.init_local(r, 4, np.float64, np)[1] if local else {}
    if not local:
        fused.init_global(r, params, np.float64, np)
    params = {k: v + 0.3 * r.standard_normal(v.shape) for k, v in params.items()}
    h, eps = 0.5 * r.standard_normal((4, 6)), r.standard_normal((4, 3, 6))
    u, w = r.standard_normal((4, 3, 3)), r.standard_normal((4, 3))
    (z, logq, back), (z0, logq0, back0) = fused.sample(params, h, eps), ref.sample(params, h, eps)
    close(z, z0, 1e-13)
    close(logq, logq0, 1e-13)
    (dh, g), (dh0, g0) = back(u, w), back0(u, w)
    close(dh, dh0, 1e-12)
    for k in g0:
        close(g[k], g0[k], 1e-12)


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
        close(logw, logw0)
        (dh, g), (dh0, g0) = back(w), back0(w)
        close(dh, dh0)
        assert set(g) == set(g0)
    assert "decoder" in workspace
    fewer = {k: v[:3] if q == "flow" and k.startswith("q.") else v for k, v in params.items()}
    logw_small, _ = objectives.log_weights(fewer, cfg, family, x[:3], h[:3], eps[:3],
                                           decoder_grads=False, workspace=workspace)
    close(logw_small, logw0[:3])
