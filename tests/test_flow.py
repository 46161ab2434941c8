import numpy as np
import pytest

from minivae.testing import lingauss
from minivae.model import fastpath, nn, objectives, optim
from minivae.model.densities import log_diag_normal
from minivae.model.flow import Flow, positive_scale
from minivae.testing.gradcheck import check_grads


def perturbed(params, rng, scale=0.3):
    """Nonzero biases and larger weights, so every gradient path is exercised."""
    return {k: v + scale * rng.standard_normal(v.shape) for k, v in params.items()}


def flow_setup(Z=3, B=4, K=3, steps=2, hidden=5, local=False, act="elu", seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    flow = Flow(Z, steps, hidden, act)
    if local:
        _, params = flow.init_local(rng, B, np.float64, np)
    else:
        params = {}
        flow.init_global(rng, params, np.float64, np)
    params = perturbed(params, rng, scale)
    h = 0.5 * rng.standard_normal((B, 2 * Z))
    eps = rng.standard_normal((B, K, 2 * Z))
    return flow, params, h, eps, rng


def test_positive_scale_backward_and_range():
    rng = np.random.default_rng(0)
    a = 3 * rng.standard_normal((4, 5))
    u, w = rng.standard_normal((2, 4, 5))
    s, logs, back = positive_scale(a)
    np.testing.assert_allclose(np.log(s), logs, rtol=1e-12)
    check_grads(lambda p: float(np.sum(positive_scale(p["a"])[0] * u + positive_scale(p["a"])[1] * w)),
                {"a": a}, {"a": back(u, w)})
    s, logs, _ = positive_scale(np.array([-1e4, 0.0, 1e4], dtype=np.float32))
    assert np.all(np.isfinite(logs)) and s[1] == 1 and s[2] == 2


def jacobian(flow, params, z0, v0, step=1e-6):
    """Central-difference Jacobian of (z0, v0) -> (zT, vT) at one point: (2Z, 2Z)."""
    Z = z0.size
    x0 = np.concatenate([z0, v0])

    def T(x):
        zT, vT, _, _ = flow.transform(params, x[None, None, :Z], x[None, None, Z:])
        return np.concatenate([zT.ravel(), vT.ravel()])

    cols = [(T(x0 + step * e) - T(x0 - step * e)) / (2 * step) for e in np.eye(2 * Z)]
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("Z,local", [(2, False), (3, False), (3, True)])
def test_logdet_and_logq_match_a_numerical_jacobian(Z, local):
    # moderate weights keep J well conditioned, so its finite differences are accurate
    flow, params, h, eps, _ = flow_setup(Z=Z, B=2, K=2, steps=3, local=local, scale=0.1)
    zT, logq, _ = flow.sample(params, h, eps)
    for b in range(2):
        one = {k: v[b:b + 1] for k, v in params.items()} if local else params
        for k in range(2):
            z0 = h[b, :Z] + np.exp(0.5 * h[b, Z:]) * eps[b, k, :Z]
            qv, _ = flow._net(one, "q.qv", z0[None, None])
            v0 = qv[0, 0, :Z] + np.exp(0.5 * qv[0, 0, Z:]) * eps[b, k, Z:]
            _, vT, logdet, _ = flow.transform(one, z0[None, None], v0[None, None])
            sign, numeric = np.linalg.slogdet(jacobian(flow, one, z0, v0))
            assert sign != 0
            np.testing.assert_allclose(logdet[0, 0], numeric, rtol=0, atol=1e-7)
            # change of variables: log q(zT, vT) = log q(z0, v0) - log|det J|
            rv, _ = flow._net(one, "q.rv", zT[b:b + 1, k:k + 1])
            logr = log_diag_normal(vT[0, 0], rv[0, 0, :Z], rv[0, 0, Z:])
            log_q0 = (log_diag_normal(z0, h[b, :Z], h[b, Z:])
                      + log_diag_normal(v0, qv[0, 0, :Z], qv[0, 0, Z:]))
            np.testing.assert_allclose(logq[b, k] + logr, log_q0 - numeric, rtol=0, atol=1e-7)


def inverse(flow, params, zT, vT):
    """(zT, vT) -> (z0, v0) by undoing the steps (tests only)."""
    z, v = zT, vT
    for t in reversed(range(flow.steps)):
        p = f"q.s{t}"
        z = (z - flow._net(params, p + ".m2", v)[0]) / positive_scale(flow._net(params, p + ".s2", v)[0])[0]
        v = (v - flow._net(params, p + ".m1", z)[0]) / positive_scale(flow._net(params, p + ".s1", z)[0])[0]
    return z, v


def test_flow_density_integrates_to_one_for_one_latent():
    flow, params, h, eps, _ = flow_setup(Z=1, B=1, K=1, steps=2, hidden=4, scale=0.1)
    g = np.linspace(-20, 20, 401)  # wide: q(v0|z0) gives heavy-ish tails
    zT, vT = (a.reshape(1, -1, 1) for a in np.meshgrid(g, g, indexing="ij"))
    z0, v0 = inverse(flow, params, zT, vT)
    z, v, logdet, _ = flow.transform(params, z0, v0)
    np.testing.assert_allclose(z, zT, atol=1e-9)
    np.testing.assert_allclose(v, vT, atol=1e-9)
    qv, _ = flow._net(params, "q.qv", z0)
    with np.errstate(over="ignore"):  # far tails: exp(-logvar) overflows, the density is 0 there
        logq_T = (log_diag_normal(z0, h[:, None, :1], h[:, None, 1:])
                  + log_diag_normal(v0, qv[..., :1], qv[..., 1:]) - logdet)
    mass = np.exp(logq_T).sum() * (g[1] - g[0]) ** 2
    assert abs(mass - 1) < 5e-4


def test_local_flow_beats_the_optimal_ffg_on_a_correlated_posterior():
    cfg, model_params, x = lingauss.make(latent=2, data_dim=2, n=2, scale=2.0, seed=3)
    _, P = lingauss.posterior(model_params, cfg, x)
    elbo_ffg = lingauss.optimal_ffg(model_params, cfg, x)[2]
    exact = lingauss.log_px(model_params, cfg, x)
    assert np.all(exact - elbo_ffg > 0.2)          # a posterior FFG cannot fit well
    flow = Flow(2, steps=2, hidden=16, act="tanh")
    rng = np.random.default_rng(0)
    h, nets = flow.init_local(rng, 2, np.float64, np)
    q = {"h": h, **nets}
    state = optim.adam_init(q)
    for _ in range(600):
        eps = rng.standard_normal((2, 32, 4))
        logw, back = objectives.log_weights({**model_params, **q}, cfg, flow, x, q["h"], eps)
        dh, grads = back(np.full_like(logw, 1 / 32))
        optim.adam_step(q, {"h": dh, **{k: grads[k] for k in nets}}, state, lr=3e-3)
    eps = rng.standard_normal((2, 20000, 4))
    logw, _ = objectives.log_weights({**model_params, **q}, cfg, flow, x, q["h"], eps)
    se = logw.std(1) / np.sqrt(logw.shape[1])
    assert np.all(logw.mean(1) - 5 * se > elbo_ffg), (logw.mean(1), elbo_ffg, exact)
    assert np.all(logw.mean(1) < exact + 5 * se)


# --- the flow's nets on the fused ELU (fastpath.elu) equal the reference ---------------------

@pytest.mark.parametrize("shape", [(4, 5), (3, 4, 6)])
def test_fused_elu_is_nn_elu_and_its_backward_passes_the_fd_check(shape):
    r = np.random.default_rng(0)
    x = 2 * r.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5                                     # away from the kink
    x.flat[:2] = [-800.0, 1e4]
    u = r.standard_normal(shape)
    y, back = fastpath.elu(x)
    y0, back0 = nn.elu(x)
    near(y, y0, 1e-14)
    near(back(u), back0(u), 1e-14)
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
    near(z, z0, 1e-13)
    near(logq, logq0, 1e-13)
    (dh, g), (dh0, g0) = back(u, w), back0(u, w)
    near(dh, dh0, 1e-12)
    for k in g0:
        near(g[k], g0[k], 1e-12)


def near(got, want, rtol=1e-10):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())
