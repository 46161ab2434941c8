import numpy as np
import pytest

from minivae.testing import lingauss
from minivae.model import objectives, optim
from minivae.model.densities import LOG2PI
from minivae.model.fullcov import FullCov
from minivae.model.posteriors import get_family


def random_h(Z, B, rng):
    return 0.5 * rng.standard_normal((B, Z + Z * (Z + 1) // 2))


def test_layout_and_h_zero_is_the_standard_normal():
    fam = FullCov(3)
    assert fam.n_out == 9 and fam.noise_dim == 3
    h = np.arange(1.0, 10.0)[None] / 10  # mu = .1 .2 .3; triangle rows (.4), (.5 .6), (.7 .8 .9)
    L = fam.cholesky(h)[0]
    np.testing.assert_allclose(L, [[np.exp(.4), 0, 0], [.5, np.exp(.6), 0], [.7, .8, np.exp(.9)]])
    h0, local = fam.init_local(np.random.default_rng(0), 2, np.float64, np)
    assert local == {}
    eps = np.random.default_rng(0).standard_normal((2, 4, 3))
    z, logq, _ = fam.sample({}, h0, eps)
    np.testing.assert_array_equal(z, eps)
    np.testing.assert_allclose(logq, -0.5 * (eps ** 2).sum(-1) - 1.5 * LOG2PI)


@pytest.mark.parametrize("Z", [1, 3])
def test_logq_is_the_full_covariance_gaussian_density(Z):
    rng = np.random.default_rng(Z)
    fam = FullCov(Z)
    h, eps = random_h(Z, 3, rng), rng.standard_normal((3, 5, Z))
    z, logq, _ = fam.sample({}, h, eps)
    for b in range(3):
        L = fam.cholesky(h[b:b + 1])[0]
        assert np.all(np.triu(L, 1) == 0) and np.all(np.diag(L) > 0)
        S = L @ L.T
        d = z[b] - h[b, :Z]
        ref = -0.5 * (np.einsum("ki,ij,kj->k", d, np.linalg.inv(S), d)
                      + np.linalg.slogdet(S)[1] + Z * LOG2PI)
        np.testing.assert_allclose(logq[b], ref, rtol=1e-12)
        np.testing.assert_allclose(d, eps[b] @ L.T, rtol=1e-12)


def exact_posterior_h(fam, params, cfg, x):
    """h of the exact posterior N(m, P^-1) of the linear-Gaussian model."""
    m, P = lingauss.posterior(params, cfg, x)
    L = np.linalg.cholesky(np.linalg.inv(P))
    tri = L[fam.rows, fam.cols].copy()
    tri[fam.diag] = np.log(tri[fam.diag])
    return np.hstack([m, np.broadcast_to(tri, (len(x), tri.size))])


def test_exact_posterior_gives_log_px_at_every_sample():
    cfg, params, x = lingauss.make(latent=3, data_dim=5, n=4)
    cfg = cfg.replace(q="fullcov")
    fam = get_family(cfg)
    eps = np.random.default_rng(0).standard_normal((4, 50, 3))
    logw, _ = objectives.log_weights(params, cfg, fam, x, exact_posterior_h(fam, params, cfg, x), eps)
    np.testing.assert_allclose(logw, np.broadcast_to(lingauss.log_px(params, cfg, x)[:, None], logw.shape),
                               rtol=0, atol=1e-10)


def whitened_noise(rng, B, K, Z):
    """eps whose sample mean is 0 and sample covariance I exactly, per datapoint: for a
    quadratic log p(x, z) the fixed-eps ELBO then equals the true ELBO."""
    eps = rng.standard_normal((B, K, Z))
    eps -= eps.mean(1, keepdims=True)
    C = np.einsum("bki,bkj->bij", eps, eps) / K
    return np.einsum("bkj,bij->bki", eps, np.linalg.inv(np.linalg.cholesky(C)))


def test_local_fullcov_reaches_log_px_from_the_prior():
    cfg, params, x = lingauss.make(latent=3, data_dim=5, n=4)
    cfg = cfg.replace(q="fullcov")
    fam = get_family(cfg)
    eps = whitened_noise(np.random.default_rng(0), 4, 16, 3)
    h, _ = fam.init_local(None, 4, np.float64, np)
    q = {"h": h}
    state = optim.adam_init(q)
    for _ in range(300):
        logw, back = objectives.log_weights(params, cfg, fam, x, q["h"], eps)
        dh, _ = back(np.full_like(logw, 1 / 16))
        optim.adam_step(q, {"h": dh}, state, lr=0.05)
    exact = lingauss.log_px(params, cfg, x)
    np.testing.assert_allclose(logw.mean(1), exact, rtol=0, atol=1e-3)
    # and the optimum is the exact posterior: log w is constant on fresh noise too
    np.testing.assert_allclose(q["h"], exact_posterior_h(fam, params, cfg, x), atol=1e-3)
    fresh = np.random.default_rng(1).standard_normal((4, 200, 3))
    logw, _ = objectives.log_weights(params, cfg, fam, x, q["h"], fresh)
    assert np.all(logw.std(1) < 1e-3)
