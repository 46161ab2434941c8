"""Gaussian with full covariance (paper 6.7): q(z|x) = N(mu, L L^T), L lower triangular.

h = [mu (Z), the entries of L on and below the diagonal, row by row (Z(Z+1)/2)], where the
diagonal entries are stored as their logs, so L_ii = exp(h_ii) > 0 and h = 0 means N(0, I).
z = mu + L eps, and at that sample log q = -|eps|^2 / 2 - sum_i log L_ii - Z/2 log 2pi.
"""
import numpy as np

from ..backend import get_xp
from .densities import LOG2PI


class FullCov:
    """Full-covariance Gaussian: h = [mu, row-major lower triangle of L, log of its diagonal]."""
    name = "fullcov"

    def __init__(self, latent):
        self.Z = latent
        self.n_out = latent + latent * (latent + 1) // 2
        self.noise_dim = latent
        self.rows, self.cols = np.tril_indices(latent)       # row-major order
        self.diag = np.flatnonzero(self.rows == self.cols)    # positions of L_ii in the triangle

    def init_global(self, rng, params, dtype, xp):
        pass

    def init_local(self, rng, n, dtype, xp):
        """q* initialisation (paper 6.4): N(0, I) for every datapoint (mu = 0, L = I)."""
        return xp.zeros((n, self.n_out), dtype=dtype), {}

    def _index(self, xp):
        """Triangle rows, columns and diagonal positions as arrays of module xp."""
        return xp.asarray(self.rows), xp.asarray(self.cols), xp.asarray(self.diag)

    def cholesky(self, h):
        """L: (B, Z, Z) from h: (B, P)."""
        xp = get_xp(h)
        rows, cols, diag = self._index(xp)
        vals = h[:, self.Z:].copy()                           # (B, Z(Z+1)/2)
        vals[:, diag] = xp.exp(vals[:, diag])
        L = xp.zeros((h.shape[0], self.Z, self.Z), dtype=h.dtype)
        L[:, rows, cols] = vals
        return L

    def sample(self, params, h, eps):
        """z = mu + L eps: (B, K, Z); log N(z; mu, L L^T): (B, K)."""
        xp = get_xp(h)
        Z = self.Z
        rows, cols, diag = self._index(xp)
        L = self.cholesky(h)                                  # (B, Z, Z)
        z = h[:, None, :Z] + eps @ L.swapaxes(-1, -2)         # (B, K, Z)
        logdiag = h[:, Z:][:, diag]                           # (B, Z) = log L_ii
        logq = -0.5 * (eps * eps).sum(-1) - logdiag.sum(-1)[:, None] - 0.5 * Z * LOG2PI

        def backward(dz, dlogq):
            dL = dz.swapaxes(-1, -2) @ eps                    # (B, Z, Z): sum_k dz_ki eps_kj
            dtri = dL[:, rows, cols]                          # (B, Z(Z+1)/2), a copy
            # L_ii = exp(h_ii): the chain rule multiplies by L_ii; log q has -h_ii directly
            dtri[:, diag] = dtri[:, diag] * xp.exp(logdiag) - dlogq.sum(1)[:, None]
            return xp.concatenate([dz.sum(1), dtri], axis=-1), {}

        return z, logq, backward
