import numpy as np
import pytest

from minivae.model import model, objectives
from minivae.model.config import Config
from minivae.errors import MinivaeError
from minivae.testing.gradcheck import check_each, check_grads
from minivae.model.posteriors import get_family


def conv_model(q="ffg", side=8, seed=0):
    """The Table 9 model on 3 x side x side images (side 8: one spatial position at the top)."""
    cfg = Config(dataset="cifar10", arch="conv", likelihood="logistic", data_dim=3 * side * side,
                 latent=3, q=q, flow_steps=2, flow_hidden=5, dtype="float64")
    rng = np.random.default_rng(seed)
    params = model.init_params(cfg, rng)
    for k in params:  # nonzero biases, so every gradient is exercised
        params[k] = params[k] + 0.05 * rng.standard_normal(params[k].shape)
    x = rng.integers(0, 256, (2, cfg.data_dim)) / 256.0
    x[0, :2] = [0, 255 / 256]                                  # both edge bins
    return cfg, params, x, rng


def test_keys_and_shapes_of_the_cifar_model():
    cfg = Config(arch="conv", likelihood="logistic", data_dim=3072, latent=32)
    params = model.init_params(cfg, np.random.default_rng(0))
    assert params["enc.conv0.W"].shape == (3, 4, 4, 64) and params["enc.conv2.W"].shape == (128, 4, 4, 256)
    assert params["enc.fc.W"].shape == (256 * 4 * 4, 64) and params["dec.fc.W"].shape == (32, 256 * 4 * 4)
    assert params["dec.deconv0.W"].shape == (256, 128, 4, 4) and params["dec.deconv2.W"].shape == (64, 3, 4, 4)
    assert [params[f"dec.scale.fc{i}.W"].shape for i in range(3)] == [(32, 64), (64, 32), (32, 3)]
    z = np.random.default_rng(1).standard_normal((2, 32)).astype(np.float32)
    (mean, log_scale), _ = model.decode(params, cfg, z)
    assert mean.shape == (2, 3072) and log_scale.shape == (2, 3) and 0 < mean.min() and mean.max() < 1


@pytest.mark.parametrize("samples", [False, True])
def test_log_lik_backward_wrt_z_and_every_decoder_parameter(samples):
    cfg, params, x, rng = conv_model()
    z = rng.standard_normal((2, 3, 3) if samples else (2, 3))
    ll, back = model.log_lik(params, cfg, x, z)
    assert ll.shape == z.shape[:-1]
    u = rng.standard_normal(ll.shape)
    dz, grads = back(u)
    assert set(grads) == {k for k in params if k.startswith("dec.")}

    def f(p):
        return float(np.sum(model.log_lik({**params, **p}, cfg, x, p["z"])[0] * u))

    check_each(f, {"z": z, **{k: params[k] for k in grads}}, {"z": dz, **grads})
    dz_only, none = model.log_lik(params, cfg, x, z, need_grads=False)[1](u)
    assert none == {} and np.allclose(dz_only, dz)


@pytest.mark.parametrize("q,objective,K", [("ffg", "elbo", 1), ("ffg", "iwae", 3), ("flow", "elbo", 2)])
def test_bound_gradients_of_the_conv_vae(q, objective, K):
    cfg, params, x, rng = conv_model(q)
    family = get_family(cfg)
    eps = rng.standard_normal((2, K, family.noise_dim))
    value, grads = objectives.bound_and_grads(params, cfg, family, x, eps, 0.7, objective)
    assert set(grads) == set(params)

    def f(p):
        return float(objectives.bound_and_grads(p, cfg, family, x, eps, 0.7, objective)[0].mean())

    # the flow's dozens of q.* keys are checked key by key in test_flow; here all at once
    (check_grads if q == "flow" else check_each)(f, params, grads)


def test_log_joint_gradient_wrt_z():
    cfg, params, x, rng = conv_model()
    z = rng.standard_normal((2, 2, 3))
    _, dz = model.log_joint(params, cfg, x, z, beta=0.6)
    check_each(lambda p: float(model.log_joint(params, cfg, x, p["z"], 0.6)[0].sum()), {"z": z}, {"z": dz})


@pytest.mark.parametrize("change", [dict(data_dim=784), dict(likelihood="bernoulli"), dict(arch="resnet")])
def test_bad_conv_configs_give_one_line_errors(change):
    cfg = Config(arch="conv", likelihood="logistic", data_dim=3072, latent=4).replace(**change)
    with pytest.raises(MinivaeError):
        model.init_params(cfg, np.random.default_rng(0))


def test_mlp_refuses_the_logistic_likelihood():
    with pytest.raises(MinivaeError, match="logistic"):
        model.init_params(Config(likelihood="logistic"), np.random.default_rng(0))
