"""The paper's flow (3.2, Table 8): Real NVP steps on z and an auxiliary variable v.

    z0 ~ q(z0|x) = N(mu0, diag exp(logvar0))           h = [mu0, logvar0] (B, 2Z)
    v0 ~ q(v0|z0) = N(m, diag exp(l)),  [m, l] = qv(z0)  conditioned on z0 only, as in Table 8
    per step t:  v' = v * s1(z) + m1(z),  z' = z * s2(v') + m2(v')                 (eqs 12-13)
    r(vT|zT) = N(m, diag exp(l)),  [m, l] = rv(zT)

Scales are s = 2 sigmoid(a) of a net output a: s = 1 at a = 0, log s = log 2 - softplus(-a)
is finite in any precision, and expansion is bounded (s < 2) while contraction is not.
log|det| = sum_t (sum log s1 + sum log s2) (paper 6.3), and `sample` returns
logq = log q(z0|x) + log q(v0|z0) - log|det| - log r(vT|zT), so ELBO = E[log p(x, zT) - logq]
(eq. 14). Noise eps: (B, K, 2Z), the first Z for z0, the next Z for v0.
Nets (each Z-H-H-out): q.qv, q.rv (out 2Z), q.s{t}.{s1,m1,s2,m2} (out Z). They are shared
(W (in, out)) or, for local q*, one per datapoint (W (B, in, out)); `sample` takes either.
"""
import math

from . import fastpath, nn
from ..backend import get_xp
from .densities import LOG2PI, reparam, softplus
from .nn import add_grads

LOG2 = math.log(2.0)


def positive_scale(a):
    """s = 2 sigmoid(a) and log s; backward(ds, dlogs) -> da."""
    sig, _ = nn.sigmoid(a)
    s, logs = 2 * sig, LOG2 - softplus(-a)

    def backward(ds, dlogs):
        # ds/da = 2 sig (1 - sig);  dlog s/da = 1 - sig
        return (1 - sig) * (ds * s + dlogs)

    return s, logs, backward


class Flow:
    """Auxiliary-variable Real NVP: h = [mu0, logvar0] for q(z0|x), nets `q.*`."""
    name = "flow"

    def __init__(self, latent, steps=2, hidden=100, act="elu"):
        self.Z, self.steps, self.hidden, self.act = latent, steps, hidden, act
        # the nets' ELU by the fused kernels (nn.elu's values up to rounding; tests/test_flow.py)
        self._act = fastpath.elu if act == "elu" and fastpath.kernels() is not None else act
        self.n_out = 2 * latent
        self.noise_dim = 2 * latent

    def nets(self):
        """Every net's prefix and output width."""
        out = [("q.qv", 2 * self.Z), ("q.rv", 2 * self.Z)]
        for t in range(self.steps):
            out += [(f"q.s{t}.{n}", self.Z) for n in ("s1", "m1", "s2", "m2")]
        return out

    def _init_nets(self, rng, params, dtype, xp, batch=None):
        for prefix, n_out in self.nets():
            nn.init_mlp(rng, params, prefix, [self.Z, self.hidden, self.hidden, n_out], dtype,
                        batch=batch, xp=xp)
        return params

    def init_global(self, rng, params, dtype, xp):
        """Shared nets (amortized flow), Glorot-uniform."""
        self._init_nets(rng, params, dtype, xp)

    def init_local(self, rng, n, dtype, xp):
        """q* initialisation (paper 6.4): z0 ~ N(0, I) and one Glorot-initialised set of nets
        per datapoint (leading axis n)."""
        return xp.zeros((n, self.n_out), dtype=dtype), self._init_nets(rng, {}, dtype, xp, batch=n)

    def _net(self, params, prefix, x):
        return nn.mlp(params, prefix, x, 3, self._act)

    def transform(self, params, z, v):
        """(z0, v0) -> (zT, vT) and log|det d(zT, vT)/d(z0, v0)|: (B, K).

        backward(dz, dv, dlogdet) -> (dz0, dv0, grads).
        """
        backs = []
        logdet = 0
        for t in range(self.steps):
            p = f"q.s{t}"
            a1, b_s1 = self._net(params, p + ".s1", z)
            m1, b_m1 = self._net(params, p + ".m1", z)
            s1, logs1, b_pos1 = positive_scale(a1)
            v_in, v = v, v * s1 + m1
            a2, b_s2 = self._net(params, p + ".s2", v)
            m2, b_m2 = self._net(params, p + ".m2", v)
            s2, logs2, b_pos2 = positive_scale(a2)
            z_in, z = z, z * s2 + m2
            logdet = logdet + logs1.sum(-1) + logs2.sum(-1)
            backs.append((z_in, v_in, s1, s2, b_s1, b_m1, b_pos1, b_s2, b_m2, b_pos2))

        def backward(dz, dv, dlogdet):
            grads = {}
            dlogs = dlogdet[..., None]
            for z_in, v_in, s1, s2, b_s1, b_m1, b_pos1, b_s2, b_m2, b_pos2 in reversed(backs):
                # z' = z_in * s2(v') + m2(v')
                da2 = b_pos2(dz * z_in, dlogs)
                dv_s2, g_s2 = b_s2(da2)
                dv_m2, g_m2 = b_m2(dz)
                dv = dv + dv_s2 + dv_m2
                dz = dz * s2
                # v' = v_in * s1(z_in) + m1(z_in)
                da1 = b_pos1(dv * v_in, dlogs)
                dz_s1, g_s1 = b_s1(da1)
                dz_m1, g_m1 = b_m1(dv)
                dz = dz + dz_s1 + dz_m1
                dv = dv * s1
                for g in (g_s2, g_m2, g_s1, g_m1):
                    add_grads(grads, g)
            return dz, dv, grads

        return z, v, logdet, backward

    def sample(self, params, h, eps):
        """zT: (B, K, Z) and the bound's logq (B, K) (see the module docstring)."""
        xp = get_xp(h)
        Z = self.Z
        mu0, logvar0 = h[:, None, :Z], h[:, None, Z:]                 # (B, 1, Z)
        ez, ev = eps[..., :Z], eps[..., Z:]                           # (B, K, Z) each
        z0, back_z0 = reparam(mu0, logvar0, ez)
        qv, back_qv = self._net(params, "q.qv", z0)                   # (B, K, 2Z)
        v0, back_v0 = reparam(qv[..., :Z], qv[..., Z:], ev)
        zT, vT, logdet, back_flow = self.transform(params, z0, v0)
        rv, back_rv = self._net(params, "q.rv", zT)                   # (B, K, 2Z)
        mr, lr = rv[..., :Z], rv[..., Z:]
        prec = xp.exp(-lr)
        d = vT - mr
        logr = -0.5 * (d * d * prec + lr + LOG2PI).sum(-1)
        # log q(z0|x) + log q(v0|z0) at reparameterised samples need no division
        logq0 = -0.5 * (ez * ez + ev * ev + logvar0 + qv[..., Z:] + 2 * LOG2PI).sum(-1)
        logq = logq0 - logdet - logr

        def backward(dz, dlogq):
            w = dlogq[..., None]                                      # (B, K, 1)
            # -log r(vT|zT): d/dvT = d prec, d/dmr = -d prec, d/dlr = (1 - d^2 prec) / 2
            dvT = w * d * prec
            drv = xp.concatenate([-dvT, 0.5 * w * (1 - d * d * prec)], axis=-1)
            dzr, grads = back_rv(drv)
            dz0, dv0, g_flow = back_flow(dz + dzr, dvT, -dlogq)
            add_grads(grads, g_flow)
            dmv, dlv = back_v0(dv0)
            dzq, g_qv = back_qv(xp.concatenate([dmv, dlv - 0.5 * w], axis=-1))
            add_grads(grads, g_qv)
            dmu, dlogvar = back_z0(dz0 + dzq)
            dh = xp.concatenate([dmu.sum(1), (dlogvar - 0.5 * w).sum(1)], axis=-1)
            return dh, grads

        return zT, logq, backward
