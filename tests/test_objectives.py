import numpy as np

from minivae.testing import lingauss
from minivae.model import model, objectives
from minivae.model.config import Config
from minivae.testing.gradcheck import check_each
from minivae.model.posteriors import get_family


def small_model(q="ffg", likelihood="bernoulli", seed=0):
    cfg = Config(data_dim=6, latent=3, enc_hidden=5, dec_hidden=4, enc_layers=1, dec_layers=2,
                 q=q, flow_hidden=4, likelihood=likelihood, dtype="float64")
    rng = np.random.default_rng(seed)
    params = model.init_params(cfg, rng)
    for k in params:
        params[k] = params[k] + 0.1 * rng.standard_normal(params[k].shape)
    x = (rng.random((4, 6)) < 0.4).astype(np.float64)
    return cfg, params, x, rng


def test_log_joint_gradient_wrt_z():
    cfg, params, x, rng = small_model()
    z = rng.standard_normal((4, 2, 3))
    lj, dz = model.log_joint(params, cfg, x, z, beta=0.7)
    check_each(lambda p: float(model.log_joint(params, cfg, x, p["z"], 0.7)[0].sum()), {"z": z}, {"z": dz})


def at_the_optimal_ffg(latent, data_dim, n, samples, seed):
    """A linear-Gaussian model, its optimal FFG (mu, logvar, its exact ELBO) and log w there."""
    cfg, params, x = lingauss.make(latent=latent, data_dim=data_dim, n=n)
    mu, logvar, elbo = lingauss.optimal_ffg(params, cfg, x)
    family = get_family(cfg)
    eps = np.random.default_rng(seed).standard_normal((n, samples, latent))
    logw, _ = objectives.log_weights(params, cfg, family, x, np.hstack([mu, logvar]), eps)
    return cfg, params, x, family, eps, mu, logvar, elbo, logw


def test_elbo_at_the_optimal_ffg_matches_closed_form():
    cfg, params, x, family, eps, mu, logvar, exact, logw = at_the_optimal_ffg(3, 6, 5, 20000, 1)
    se = logw.std(1) / np.sqrt(logw.shape[1])
    assert np.all(np.abs(logw.mean(1) - exact) < 5 * se + 1e-9)
    # and it is the best FFG: moving the mean or the variance lowers the expected ELBO
    for dmu, dlv in [(0.3, 0.0), (0.0, 0.5), (0.0, -0.5)]:
        worse, _ = objectives.log_weights(params, cfg, family, x, np.hstack([mu + dmu, logvar + dlv]), eps)
        assert np.all(worse.mean(1) < logw.mean(1))


def test_iwae_approaches_log_px_from_below():
    cfg, params, x, _, _, _, _, elbo_star, logw = at_the_optimal_ffg(2, 4, 6, 5000, 2)
    iwae = objectives.reduce_weights(logw, "iwae")[0]
    exact = lingauss.log_px(params, cfg, x)
    # a single IWAE estimate may exceed log p(x); its expectation may not
    assert np.all(np.abs(iwae - exact) < 0.06) and np.all(iwae > elbo_star)
    assert iwae.mean() < exact.mean() + 0.01


def test_lingauss_log_px_matches_quadrature():
    cfg, params, x = lingauss.make(latent=1, data_dim=3, n=3)
    g = np.linspace(-8, 8, 4001)[:, None]
    ll, _ = model.log_lik(params, cfg, np.repeat(x[:, None], 1, 1)[:, 0], np.broadcast_to(g, (3,) + g.shape))
    lj = ll - 0.5 * (g[:, 0] ** 2 + np.log(2 * np.pi))
    quad = np.log(np.exp(lj).sum(1) * (g[1, 0] - g[0, 0]))
    np.testing.assert_allclose(quad, lingauss.log_px(params, cfg, x), atol=1e-6)
