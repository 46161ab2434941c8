"""Every posterior family (ffg, fullcov, flow with global or per-datapoint nets), one
finite-difference check each: the backward of `sample` wrt h and the family's nets, and the
bound's gradients wrt every parameter of the VAE that uses it."""
import numpy as np
import pytest

from minivae.model import objectives
from minivae.model.config import Config
from minivae.model.posteriors import get_family
from minivae.testing.gradcheck import check_each

from test_flow import perturbed
from test_objectives import small_model

N_OUT = {"ffg": 6, "fullcov": 9, "flow": 6}     # h per datapoint at latent 3


@pytest.mark.parametrize("q,local", [("ffg", False), ("fullcov", False), ("flow", False), ("flow", True)])
def test_sample_backward_wrt_h_and_every_net(q, local):
    B, K, Z = 4, 3, 3
    rng = np.random.default_rng(0)
    family = get_family(Config(latent=Z, q=q, flow_hidden=5, dtype="float64"))
    if local:
        _, params = family.init_local(rng, B, np.float64, np)
    else:
        params = {}
        family.init_global(rng, params, np.float64, np)
    params = perturbed(params, rng)
    h, eps = 0.5 * rng.standard_normal((B, family.n_out)), rng.standard_normal((B, K, family.noise_dim))
    z, logq, back = family.sample(params, h, eps)
    assert z.shape == (B, K, Z) and logq.shape == (B, K) and family.n_out == N_OUT[q]
    u, w = rng.standard_normal(z.shape), rng.standard_normal(logq.shape)
    dh, grads = back(u, w)
    assert set(grads) == set(params) and all(grads[k].shape == params[k].shape for k in params)

    def f(p):
        z, logq, _ = family.sample({**params, **p}, p["h"], eps)
        return float(np.sum(z * u) + np.sum(logq * w))

    check_each(f, {"h": h, **params}, {"h": dh, **grads})


@pytest.mark.parametrize("q,objective,lam,K", [
    ("ffg", "elbo", 1.0, 1), ("ffg", "elbo", 0.3, 3), ("ffg", "iwae", 1.0, 5),
    ("fullcov", "elbo", 1.0, 2), ("fullcov", "iwae", 0.5, 3),
    ("flow", "elbo", 1.0, 2), ("flow", "iwae", 0.7, 3)])
def test_bound_gradients_wrt_every_parameter(q, objective, lam, K):
    cfg, params, x, rng = small_model(q=q)
    family = get_family(cfg)
    assert params["enc.fc1.W"].shape[1] == family.n_out == N_OUT[q]
    eps = rng.standard_normal((4, K, family.noise_dim))
    value, grads = objectives.bound_and_grads(params, cfg, family, x, eps, lam, objective)
    assert set(grads) == set(params)

    def f(p):
        return float(objectives.bound_and_grads(p, cfg, family, x, eps, lam, objective)[0].mean())

    check_each(f, params, grads)
