import numpy as np
import pytest

from minivae.model import densities, nn
from minivae.testing.gradcheck import check_each, check_grads


def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("act", ["elu", "tanh", "sigmoid", "linear"])
def test_activation_backward(act):
    x = rng().standard_normal((4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from ELU's kink
    u = rng().standard_normal((4, 5))
    y, back = nn.ACTIVATIONS[act](x)
    check_grads(lambda p: float(np.sum(nn.ACTIVATIONS[act](p["x"])[0] * u)), {"x": x}, {"x": back(u)})


def test_sigmoid_is_stable_for_huge_inputs():
    y, _ = nn.sigmoid(np.array([-1e4, 0.0, 1e4]))
    assert np.all(np.isfinite(y)) and y[0] == 0 and y[1] == 0.5 and y[2] == 1


@pytest.mark.parametrize("batched", [False, True])
def test_mlp_backward(batched):
    r = rng()
    params = nn.init_mlp(r, {}, "net", [3, 6, 4, 2], np.float64, batch=5 if batched else None)
    for k in params:  # nonzero biases so their gradients are exercised
        params[k] = params[k] + 0.1 * r.standard_normal(params[k].shape)
    x = r.standard_normal((5, 7, 3))
    u = r.standard_normal((5, 7, 2))
    y, back = nn.mlp(params, "net", x, 3)
    dx, grads = back(u)
    assert set(grads) == set(params)

    def f(p):
        return float(np.sum(nn.mlp({**params, **p}, "net", p["x"], 3)[0] * u))

    check_each(f, {"x": x, **params}, {"x": dx, **grads})


def test_linear_weights_shared_by_two_calls_get_both_gradients():
    r = rng()
    params = nn.init_mlp(r, {}, "l", [3, 3], np.float64)
    x = r.standard_normal((2, 3))
    y1, b1 = nn.linear(params, "l.fc0", x)
    y2, b2 = nn.linear(params, "l.fc0", y1)
    dy1, g2 = b2(np.ones_like(y2))
    _, g1 = b1(dy1)
    grads = nn.add_grads(dict(g2), g1)

    def f(p):
        y, _ = nn.linear(p, "l.fc0", x)
        return float(nn.linear(p, "l.fc0", y)[0].sum())

    check_each(f, params, grads)


def test_bernoulli_logits_value_gradient_and_stability():
    r = rng()
    x = (r.random((3, 6)) < 0.5).astype(float)
    a = 3 * r.standard_normal((3, 6))
    ll, g = densities.bernoulli_logits(x, a)
    p = 1 / (1 + np.exp(-a))
    np.testing.assert_allclose(ll, (x * np.log(p) + (1 - x) * np.log(1 - p)).sum(-1), rtol=1e-12)
    check_grads(lambda q: float(densities.bernoulli_logits(x, q["a"])[0].sum()), {"a": a}, {"a": g})
    ll, g = densities.bernoulli_logits(np.array([[1.0, 0.0]]), np.array([[1e4, 1e4]]))
    assert np.isfinite(ll).all() and np.isclose(ll[0], -1e4)


def test_bernoulli_logits_on_grey_levels():
    """mnist-gray: targets in [0, 1), the log-likelihood a cross-entropy; value and FD gradient."""
    r = rng()
    x = np.floor(256 * r.random((3, 6))) / 256
    a = 3 * r.standard_normal((3, 6))
    ll, g = densities.bernoulli_logits(x, a)
    p = 1 / (1 + np.exp(-a))
    np.testing.assert_allclose(ll, (x * np.log(p) + (1 - x) * np.log(1 - p)).sum(-1), rtol=1e-12)
    check_grads(lambda q: float(densities.bernoulli_logits(x, q["a"])[0].sum()), {"a": a}, {"a": g})


def test_gaussian_lik_and_diag_normal():
    r = rng()
    x, m = r.standard_normal((2, 4)), r.standard_normal((2, 4))
    ll, g = densities.gaussian_lik(x, m, 0.7)
    ref = -0.5 * (((x - m) / 0.7) ** 2 + np.log(2 * np.pi * 0.49)).sum(-1)
    np.testing.assert_allclose(ll, ref, rtol=1e-12)
    check_grads(lambda q: float(densities.gaussian_lik(x, q["m"], 0.7)[0].sum()), {"m": m}, {"m": g})
    lv = r.standard_normal((2, 4))
    np.testing.assert_allclose(densities.log_diag_normal(x, m, lv),
                               (-0.5 * ((x - m) ** 2 / np.exp(lv) + lv + np.log(2 * np.pi))).sum(-1))


def test_reparam_backward():
    r = rng()
    mu, lv, eps, u = (r.standard_normal((3, 4)) for _ in range(4))
    z, back = densities.reparam(mu, lv, eps)
    dmu, dlv = back(u)

    def f(p):
        return float(np.sum(densities.reparam(p["mu"], p["lv"], eps)[0] * u))

    check_each(f, {"mu": mu, "lv": lv}, {"mu": dmu, "lv": dlv})


def test_gradcheck_catches_a_wrong_gradient():
    x = rng().standard_normal(5)
    with pytest.raises(AssertionError):
        check_grads(lambda p: float(np.sum(p["x"] ** 2)), {"x": x}, {"x": 2.1 * x})
