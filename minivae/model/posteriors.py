"""Posterior families q(z|x), each usable amortized (h from the encoder) or local (h free).

A family turns per-datapoint parameters `h: (B, P)` and noise `eps: (B, K, E)` into samples
`z: (B, K, Z)` and `log q(z|x): (B, K)`:

    z, logq, backward = family.sample(params, h, eps)
    dh, grads = backward(dz, dlogq)

Family-wide parameters (the flow's nets) live in `params` under `q.`; for local q*, the
same keys hold one net per datapoint (leading axis N), see `nn.linear`.
For the flow, `logq` is the bound's `log q(z0, v0) - log|det| - log r(vT|zT)` (paper eq. 14),
so every family's ELBO is `E[log p(x, z) - logq]`.
"""
from ..backend import get_xp
from ..errors import MinivaeError
from .densities import LOG2PI, reparam
from .flow import Flow
from .fullcov import FullCov


class FFG:
    """Fully-factorized Gaussian: h = [mu, logvar]."""
    name = "ffg"

    def __init__(self, latent):
        self.Z = latent
        self.n_out = 2 * latent
        self.noise_dim = latent

    def init_global(self, rng, params, dtype, xp):
        pass

    def init_local(self, rng, n, dtype, xp):
        """q* initialisation (paper 6.4): N(0, I) for every datapoint."""
        return xp.zeros((n, self.n_out), dtype=dtype), {}

    def sample(self, params, h, eps):
        mu, logvar = h[:, None, :self.Z], h[:, None, self.Z:]   # (B, 1, Z)
        z, back_z = reparam(mu, logvar, eps)                     # (B, K, Z)
        # at a reparameterised sample (z - mu)^2 / var = eps^2, so log q needs no division
        logq = -0.5 * (eps * eps + logvar + LOG2PI).sum(-1)

        def backward(dz, dlogq):
            # d logq / d logvar at fixed eps is -1/2 per dim; d logq / d mu = 0
            dmu, dlogvar = back_z(dz)
            dlogvar = dlogvar - 0.5 * dlogq[..., None]
            dh = get_xp(h).concatenate([dmu.sum(1), dlogvar.sum(1)], axis=-1)
            return dh, {}

        return z, logq, backward


def get_family(cfg):
    """The family named by `cfg.q`."""
    if cfg.q == "ffg":
        return FFG(cfg.latent)
    if cfg.q == "fullcov":
        return FullCov(cfg.latent)
    if cfg.q == "flow":
        return Flow(cfg.latent, cfg.flow_steps, cfg.flow_hidden, cfg.act)
    raise MinivaeError(f"unknown posterior family {cfg.q!r}: choose ffg, fullcov or flow")
