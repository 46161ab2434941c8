"""The linear-Gaussian VAE: p(z) = N(0, I), p(x|z) = N(z W + b, s^2 I).

Every quantity the estimators approximate is closed form here, so tests (and users checking
an estimator) compare against exact numbers:
  log p(x)      = log N(x; b, W^T W + s^2 I)
  p(z|x)        = N(m, P^-1),  P = I + W W^T / s^2,  m = P^-1 W (x - b) / s^2
  optimal FFG   = N(m, diag(1 / P_ii)),  KL(q*_FFG || p(z|x)) = (sum log P_ii - log det P) / 2
"""
import numpy as np

from ..model.config import Config
from ..model.densities import LOG2PI
from ..model.model import init_params


def make(latent=2, data_dim=5, obs_std=0.5, seed=0, n=8, scale=1.0):
    """A random linear-Gaussian model and n datapoints drawn from it: (cfg, params, x)."""
    rng = np.random.default_rng(seed)
    cfg = Config(dataset="lingauss", data_dim=data_dim, likelihood="gaussian", obs_std=obs_std,
                 latent=latent, dec_layers=0, enc_layers=1, enc_hidden=16, act="tanh",
                 dtype="float64")
    W = scale * rng.standard_normal((latent, data_dim))
    b = 0.3 * rng.standard_normal(data_dim)
    z = rng.standard_normal((n, latent))
    x = z @ W + b + obs_std * rng.standard_normal((n, data_dim))
    params = init_params(cfg, rng)
    params["dec.fc0.W"], params["dec.fc0.b"] = W, b
    return cfg, params, x


def posterior(params, cfg, x):
    """Exact posterior: means (N, Z) and the shared precision P (Z, Z)."""
    W, b, s2 = params["dec.fc0.W"], params["dec.fc0.b"], cfg.obs_std ** 2
    P = np.eye(W.shape[0]) + W @ W.T / s2
    m = np.linalg.solve(P, (W @ (x - b).T) / s2).T
    return m, P


def log_px(params, cfg, x):
    """Exact log p(x): (N,)."""
    W, b = params["dec.fc0.W"], params["dec.fc0.b"]
    C = W.T @ W + cfg.obs_std ** 2 * np.eye(W.shape[1])
    L = np.linalg.cholesky(C)
    r = np.linalg.solve(L, (x - b).T)
    return -0.5 * ((r * r).sum(0) + x.shape[1] * LOG2PI) - np.log(np.diag(L)).sum()


def optimal_ffg(params, cfg, x):
    """The mean-field optimum: (mu (N, Z), logvar (N, Z), its ELBO (N,))."""
    m, P = posterior(params, cfg, x)
    d = np.diag(P)
    kl = 0.5 * (np.log(d).sum() - np.linalg.slogdet(P)[1])
    return m, np.broadcast_to(-np.log(d), m.shape).copy(), log_px(params, cfg, x) - kl
