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
from .densities import LOG2PI, reduce_weights


def supports(cfg, family, encoder=False):
    """Whether the fused full-covariance paths apply: an ELU/Bernoulli MLP decoder (q*), and
    for training (encoder=True) an ELU encoder too."""
    return (family.name == "fullcov" and fastpath.decoder_supported(cfg)
            and (cfg.act == "elu" or not encoder))


class FullCovCore:
    """FullCov.sample with the prior and entropy weight of objectives.log_weights for B rows
    of h (B, P), K samples each: forward -> z (R, Z), c = log N(z; 0, I) - lam logq (R,);
    backward(g, w, lam) with g = w d log p(x|z)/dz (R, Z), w = d/dlog w (R,) -> dh (B, P)."""

    def __init__(self, Z, B, K, dtype, xp):
        self.Z, self.B, self.K = Z, B, K
        e = lambda *s: xp.empty(s, dtype)   # noqa: E731
        self.L, self.dL = e(B, Z, Z), e(B, Z, Z)
        self.z, self.dz, self.c = e(B * K, Z), e(B * K, Z), e(B * K)
        self.dh = e(B, Z + Z * (Z + 1) // 2)
        rows, cols = np.tril_indices(Z)
        self.diag = xp.asarray(Z + np.flatnonzero(rows == cols))   # log L_ii in h

    def forward(self, h, eps, lam):
        xp, Z, B, K = get_xp(h), self.Z, self.B, self.K
        self.eps = eps
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

    def __init__(self, params, adam, cfg, batch, k=1, frozen=(), sparse_input=False):
        super().__init__(params, adam, cfg, batch, k, frozen, sparse_input)
        W = params["enc.fc0.W"]
        self.core = FullCovCore(cfg.latent, batch, k, W.dtype, get_xp(W))

    def __call__(self, x, eps, lam=1.0, objective="elbo"):
        B, K, _ = eps.shape
        if B != self.batch or K != self.k:
            raise ValueError(f"FullCovTrainStep made for {self.batch} x {self.k} samples, got {B} x {K}")
        params, kern, R = self.params, kernels(), B * K
        h = self.enc.forward(params, x, sparse=self.sparse)                  # (B, P)
        z, c = self.core.forward(h, get_xp(h).ascontiguousarray(eps), lam)  # (R, Z), (R,)
        out = self.dec.forward(params, z, bias_last=False)                  # (R, D)
        ll = self.ll[:R]
        kern.bernoulli_grad(out, params[self.dec.keys[-1][1]], x, K, out, ll, True)
        value, dlogw = reduce_weights((ll + c).reshape(B, K), objective)
        dlogw /= B
        w = dlogw.reshape(R)
        out *= w[:, None]
        self.dec.backward(params, z, out, self.grads, self.dz[:R])
        dh = self.core.backward(self.dz[:R], w, lam)
        if self.train_encoder:
            self.enc.backward(params, x, dh, self.grads)
        return value


class QStarFullCov:
    """localopt's q*_fullcov step, decoder fixed: gradient(work, x, eps) -> ({"h": d ELBO_n /
    d h (N, P)}, log w (N, S)), ELBO_n = mean_s log w. Buffers follow N as rows stop."""

    def __init__(self, params, Z, samples):
        self.params, self.Z, self.S, self.n = params, Z, samples, None

    def __call__(self, work, x, eps):
        N, S, _ = eps.shape
        W = self.params["dec.fc0.W"]
        if self.n != N:
            self.n = N
            self.dec = fastpath.Decoder(self.params, N * S)
            self.core = FullCovCore(self.Z, N, S, W.dtype, get_xp(W))
            self.w = get_xp(W).full(N * S, 1.0 / S, W.dtype)
        z, c = self.core.forward(work["h"], eps, 1.0)
        _, ll = self.dec(self.params, x, z, S)
        gll = self.dec.grad_ll[:N * S]
        gll *= self.w[:, None]
        logw = (ll + c).reshape(N, S)
        return {"h": self.core.backward(gll, self.w, 1.0)}, logw
