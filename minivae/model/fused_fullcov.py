"""Buffered, kernel-fused twin of the full-covariance Gaussian (fullcov.FullCov.sample inside
objectives.log_weights), beside fastpath's FFG one:

  FullCovTrainStep  train.training_step of a full-covariance VAE (ELU, Bernoulli decoder)
  QStarFullCov      localopt's q*_fullcov gradient, decoder fixed

L is unpacked from h and packed back by kernels.tril (no fancy indexing), z = mu + L eps and
dL = sum_k dz_k eps_k^T are batched products into buffers. tests/test_fused_fullcov.py checks
both against fullcov.py.
"""
import numpy as np

from . import fastpath
from ..backend import get_xp, kernels
from .densities import LOG2PI


def supports(cfg, family, encoder=False):
    """Whether the fused full-covariance paths apply: an ELU/Bernoulli MLP decoder (q*), and
    for training (encoder=True) an ELU encoder too."""
    return (family.name == "fullcov" and fastpath.decoder_supported(cfg)
            and (cfg.act == "elu" or not encoder))


class FullCovCore:
    """FullCov.sample with the prior and entropy weight of objectives.log_weights for B rows
    of h (B, P), K samples each: forward -> z (R, Z), c = log N(z; 0, I) - lam logq (R,);
    backward(g, w, lam) with g = w d log p(x|z)/dz (R, Z), w = d/dlog w (R,) -> dh (B, P)."""

    partial = False

    def __init__(self, Z, B, K, dtype, xp, scratch=None):
        self.Z, self.B, self.K = Z, B, K
        mem = scratch or fastpath.Scratch(xp)
        e = lambda *s: mem.empty(s, dtype)   # noqa: E731
        self.L, self.dL = e(B, Z, Z), e(B, Z, Z)
        self.z, self.dz, self.c = e(B * K, Z), e(B * K, Z), e(B * K)
        self.dh = e(B, Z + Z * (Z + 1) // 2)
        rows, cols = np.tril_indices(Z)
        self.diag = xp.asarray(Z + np.flatnonzero(rows == cols))   # log L_ii in h

    def forward(self, h, eps, lam):
        xp, Z, B, K = get_xp(h), self.Z, self.B, self.K
        self.eps = eps = xp.ascontiguousarray(eps)
        kernels().tril_unpack(h, self.L)
        z3 = self.z.reshape(B, K, Z)
        xp.matmul(eps, self.L.swapaxes(-1, -2), out=z3)
        z3 += h[:, None, :Z]
        # -lam logq = lam (|eps|^2 / 2 + sum_i log L_ii + Z/2 log 2pi)
        c = self.c
        xp.multiply(self.z, self.z, out=self.dz)
        xp.sum(self.dz, axis=1, out=c)
        c *= -0.5
        logq = -0.5 * (eps * eps).sum(-1) - h[:, self.diag].sum(1)[:, None]       # (B, K)
        c -= lam * (logq.reshape(-1) - 0.5 * Z * LOG2PI)
        c -= 0.5 * Z * LOG2PI
        return self.z, c

    def backward(self, g, w, lam):
        xp, Z, B, K = get_xp(g), self.Z, self.B, self.K
        dz = self.dz
        xp.multiply(self.z, w[:, None], out=dz)
        xp.subtract(g, dz, out=dz)                                 # + the prior's gradient
        dz3 = dz.reshape(B, K, Z)
        xp.sum(dz3, axis=1, out=self.dh[:, :Z])
        s = (-lam) * w.reshape(B, K).sum(1)                        # d/dlogq summed over k
        if K <= 4:                                                 # dL formed in the kernel
            kernels().tril_pack_outer(dz3, self.eps, self.L, s, self.dh)
        else:
            xp.matmul(dz3.swapaxes(-1, -2), self.eps, out=self.dL)  # (B, Z, Z)
            kernels().tril_pack(self.dL, self.L, s, self.dh)
        return self.dh


class FullCovTrainStep(fastpath.TrainStep):
    """fastpath.TrainStep for a full-covariance q: the same numbers as objectives.bound_and_grads
    + optim.adam_step up to rounding."""

    def _core(self, cfg, batch, k, dtype, xp):
        return FullCovCore(cfg.latent, batch, k, dtype, xp)


class QStarFullCov:
    """localopt's q*_fullcov step, decoder fixed: gradient(work, x, eps, out=None) -> ({"h":
    d ELBO_n / d h (N, P)}, log w (N, S)), ELBO_n = mean_s log w; out as QStarFlow's. Buffers
    follow N as rows stop (views of the first rows of those made for the first N)."""

    def __init__(self, params, Z, samples):
        W = params["dec.fc0.W"]
        self.params, self.Z, self.S, self.n = params, Z, samples, None
        self.xp, self.dtype = get_xp(W), W.dtype
        self.scratch, self.dec = fastpath.Scratch(self.xp), None

    def __call__(self, work, x, eps, out=None):
        N, S, _ = eps.shape
        if self.n != N:
            self.n = N
            if self.dec is None or self.dec.rows < N * S:
                self.dec = fastpath.Decoder(self.params, N * S)
                self.w_all = self.xp.full(N * S, 1.0 / S, self.dtype)
            self.w = self.w_all[:N * S]
            self.core = FullCovCore(self.Z, N, S, self.dtype, self.xp, self.scratch.reset())
        dh, logw = fastpath.qstar_gradient(self.core, self.dec, self.params, x, work["h"], eps, self.w)
        if out is None:
            return {"h": dh}, logw
        out["h"][...] = dh
        return out, logw
