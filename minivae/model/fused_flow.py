"""Buffered, kernel-fused twin of the flow posterior (flow.Flow.sample inside
objectives.log_weights), beside fastpath's FFG one:

  FlowTrainStep  train.training_step of a flow VAE (ELU hidden layers, Bernoulli decoder)
  QStarFlow      localopt's q*_Flow gradient: every net per datapoint, the decoder fixed

The maths is flow.py's (the FD-checked reference). Here every net runs on preallocated
buffers; the s and m nets of a coupling half share their input, so in training they are one
stack of two nets (W (2, in, out), views of the flat parameter buffer: one batched product per
layer); the coupling (s = 2 sigmoid(a), the affine update, log|det|) and its backward are one
kernel pass each (kernels.coupling), and so are r(vT|zT) with the prior (kernels.flow_head).
tests/test_fused_flow.py checks both against flow.py.
"""

from . import fastpath
from ..backend import get_xp, kernels


def supports(cfg, family, frozen=()):
    """Whether the fused flow applies: a flow q with ELU nets, an ELU/Bernoulli MLP decoder, and
    no frozen flow nets (training)."""
    return (family.name == "flow" and family.act == "elu" and fastpath.decoder_supported(cfg)
            and not any(f.startswith("q") for f in frozen))


class _Nets:
    """Buffers of L ELU nets of equal widths, run together: weights (L, in, out), biases
    (L, 1, out). shared: all L nets read one input u (R, in) (a coupling's s and m nets); else
    net l reads rows l*R..(l+1)*R-1 of u (L*R, in) (q*: one net per datapoint)."""

    def __init__(self, L, R, widths, shared, dtype, mem):
        self.L, self.R, self.shared, self.n = L, R, shared, len(widths) - 1
        xp, e = mem.xp, lambda *s: mem.empty(s, dtype)   # noqa: E731
        self.act = [e(L, R, w) for w in widths[1:]]
        self.der = [e(L * R, w) for w in widths[1:-1]]
        self.dy = e(L, R, widths[-1])                     # d/d(output), filled by the caller
        self.dx = e(L, R, widths[0])
        self.zero = [xp.zeros(w, dtype) for w in widths[1:-1]]
        self.ones = xp.ones((1, R), dtype)                # bias gradients as products (faster than sum)
        self.WT = [e(L, o, i) for i, o in zip(widths[:-1], widths[1:])]

    def _x(self, u):
        return u if self.shared else u.reshape(self.L, self.R, u.shape[-1])

    def forward(self, spec, u):
        """The nets' outputs (L, R, out) for input u (R, in) or (L*R, in)."""
        Ws, bs = spec[0], spec[1]
        k, xp = kernels(), get_xp(u)
        h = self._x(u)
        for i in range(self.n):
            a = self.act[i]
            xp.matmul(h, Ws[i], out=a)
            if i == self.n - 1:
                a += bs[i]
            elif self.L <= 4:                     # the bias inside the kernel, one net at a time
                for l in range(self.L):
                    k.bias_elu(a[l], bs[i][l, 0], a[l], self.der[i][l * self.R:(l + 1) * self.R])
            else:
                a += bs[i]
                a2 = a.reshape(-1, a.shape[-1])
                k.bias_elu(a2, self.zero[i], a2, self.der[i])
            h = a
        return h

    def backward(self, spec, u, du):
        """From self.dy (overwritten): weight and bias gradients into spec[2], spec[3], and
        d/du added into du (R, in) or (L*R, in). Overwrites the activations."""
        Ws, gWs, gbs = spec[0], spec[2], spec[3]
        k, xp = kernels(), get_xp(u)
        x, dy = self._x(u), self.dy
        for i in range(self.n - 1, -1, -1):
            inp = x if i == 0 else self.act[i - 1]
            xp.matmul(inp.swapaxes(-1, -2), dy, out=gWs[i])
            xp.matmul(self.ones, dy, out=gbs[i])
            # dy W^T with W^T copied first: faster than BLAS's transposed batched product here
            WT = self.WT[i]
            WT[...] = Ws[i].swapaxes(-1, -2)
            if i == 0:
                xp.matmul(dy, WT, out=self.dx)
                if self.shared:
                    for l in range(self.L):
                        du += self.dx[l]
                else:
                    du += self.dx.reshape(du.shape)
                return
            xp.matmul(dy, WT, out=inp)
            d2 = inp.reshape(-1, inp.shape[-1])
            k.elu_backward(d2, self.der[i - 1], d2)
            dy = inp


class _Half:
    """The s and m nets of one coupling half on one input: a stack of both (shared) or one
    _Nets of N per-datapoint nets each. names: the two prefixes; spec(names or name) gives
    (Ws, bs, gWs, gbs)."""

    def __init__(self, names, L, R, widths, shared, dtype, mem):
        self.names = [tuple(names)] if shared else list(names)
        self.nets = [_Nets(2 if shared else L, R, widths, shared, dtype, mem) for _ in self.names]

    def forward(self, spec, u):
        """(a, m), each (rows, Z)."""
        outs = [n.forward(spec(name), u) for n, name in zip(self.nets, self.names)]
        if len(outs) == 1:
            return outs[0][0], outs[0][1]
        return tuple(o.reshape(u.shape[0], -1) for o in outs)

    def grad_buffers(self, rows):
        """(da, dm), each (rows, Z): where the caller writes d/d(net outputs)."""
        if len(self.nets) == 1:
            return self.nets[0].dy[0], self.nets[0].dy[1]
        return tuple(n.dy.reshape(rows, -1) for n in self.nets)

    def backward(self, spec, u, du):
        for n, name in zip(self.nets, self.names):
            n.backward(spec(name), u, du)


class FlowCore:
    """flow.Flow.sample with the prior and the entropy weight of objectives.log_weights, for
    B rows of h (B, 2Z) and K samples each (R = B*K rows, datapoint-major): forward gives zT
    (R, Z) and c = log N(zT; 0, I) - lam logq (R,); backward(g, w, lam) takes g = sum_k w_k
    d log p(x|z_k)/dz (R, Z) and w = d/dlog w (R,), returns dh (B, 2Z) and writes the nets'
    gradients into spec's arrays. shared: one set of nets (training); else nets per row of h.
    spec(name) -> (Ws, bs, gWs, gbs): where the nets' weights are read and gradients written.
    scratch: a fastpath.Scratch to take the buffers from (reused after its reset())."""

    partial = False

    def __init__(self, family, B, K, shared, dtype, xp, spec=None, scratch=None):
        Z, H, R = family.Z, family.hidden, B * K
        self.spec, mem = spec, scratch or fastpath.Scratch(xp)
        self.B, self.K, self.Z, self.steps = B, K, Z, family.steps
        L, rows = (1, R) if shared else (B, K)
        self.qv = _Nets(L, rows, [Z, H, H, 2 * Z], shared, dtype, mem)
        self.rv = _Nets(L, rows, [Z, H, H, 2 * Z], shared, dtype, mem)
        self.halves = [_Half([f"q.s{t}.{a}", f"q.s{t}.{b}"], L, rows, [Z, H, H, Z], shared, dtype, mem)
                       for t in range(self.steps) for a, b in (("s1", "m1"), ("s2", "m2"))]
        e = lambda *s: mem.empty(s, dtype)   # noqa: E731
        self.ez, self.ev, self.stdv, self.dv = e(R, Z), e(R, Z), e(R, Z), e(R, Z)
        self.z = [e(R, Z) for _ in range(self.steps + 1)]
        self.v = [e(R, Z) for _ in range(self.steps + 1)]
        self.s = [e(R, Z) for _ in range(2 * self.steps)]
        self.d, self.t, self.dz = e(R, Z), e(R, Z), e(R, Z)
        self.std0, self.dh = e(B, Z), e(B, 2 * Z)
        self.logdet, self.c, self.r = e(R), e(R), e(R)

    def forward(self, h, eps, lam):
        xp, k, Z, B, K, spec = get_xp(h), kernels(), self.Z, self.B, self.K, self.spec
        R = B * K
        self.ez.reshape(B, K, Z)[...] = eps[..., :Z]
        self.ev.reshape(B, K, Z)[...] = eps[..., Z:]
        xp.multiply(h[:, Z:], 0.5, out=self.std0)
        xp.exp(self.std0, out=self.std0)
        z, v = self.z[0], self.v[0]
        z3 = z.reshape(B, K, Z)
        xp.multiply(self.std0[:, None, :], self.ez.reshape(B, K, Z), out=z3)
        z3 += h[:, None, :Z]
        qv = self.qv.forward(spec("q.qv"), z).reshape(R, 2 * Z)
        xp.multiply(qv[:, Z:], 0.5, out=self.stdv)
        xp.exp(self.stdv, out=self.stdv)
        xp.multiply(self.stdv, self.ev, out=v)
        v += qv[:, :Z]
        # log q(z0|x) + log q(v0|z0), without the constant: into self.r
        t = self.t
        xp.multiply(self.ez, self.ez, out=t)
        t += qv[:, Z:]
        xp.sum(t, axis=1, out=self.r)
        xp.multiply(self.ev, self.ev, out=t)
        self.r += t.sum(1)
        self.r.reshape(B, K)[...] += h[:, Z:].sum(1)[:, None]
        self.logdet[...] = 0
        for i in range(self.steps):
            a, m = self.halves[2 * i].forward(spec, self.z[i])
            k.coupling_forward(self.v[i], a, m, self.v[i + 1], self.s[2 * i], self.logdet)
            a, m = self.halves[2 * i + 1].forward(spec, self.v[i + 1])
            k.coupling_forward(self.z[i], a, m, self.z[i + 1], self.s[2 * i + 1], self.logdet)
        zT, vT = self.z[-1], self.v[-1]
        rv = self.rv.forward(spec("q.rv"), zT).reshape(R, 2 * Z)
        # r(vT|zT) and the prior: c = log N(zT; 0, I) - lam logq (kernels.flow_head)
        self.dprec = t
        k.flow_head_forward(zT, vT, rv, self.r, self.logdet, lam, self.d, self.dprec, self.c)
        return zT, self.c

    def backward(self, g, w, lam):
        xp, k, Z, B, K, spec = get_xp(g), kernels(), self.Z, self.B, self.K, self.spec
        R = B * K
        zT = self.z[-1]
        dz, dv = self.dz, self.dv
        dq = (-lam) * w                                    # d/dlogq (R,)
        # dz = g - w zT (the prior's gradient added); dvT and d/d[mr, lr] of -log r
        k.flow_head_backward(g, zT, w, lam, self.d, self.dprec, dz, dv, self.rv.dy.reshape(R, 2 * Z))
        self.rv.backward(spec("q.rv"), zT, dz)
        dl = -dq                                           # d/dlogdet
        for i in range(self.steps - 1, -1, -1):
            h2, h1 = self.halves[2 * i + 1], self.halves[2 * i]
            da, dm = h2.grad_buffers(R)
            k.coupling_backward(dz, self.z[i], self.s[2 * i + 1], dl, da, dm, dz)
            h2.backward(spec, self.v[i + 1], dv)
            da, dm = h1.grad_buffers(R)
            k.coupling_backward(dv, self.v[i], self.s[2 * i], dl, da, dm, dv)
            h1.backward(spec, self.z[i], dz)
        dqv = self.qv.dy.reshape(R, 2 * Z)
        dqv[:, :Z] = dv
        xp.multiply(dv, self.stdv, out=dqv[:, Z:])
        dqv[:, Z:] *= self.ev
        dqv[:, Z:] *= 0.5
        dqv[:, Z:] -= (0.5 * dq)[:, None]
        self.qv.backward(spec("q.qv"), self.z[0], dz)
        dh = self.dh
        xp.sum(dz.reshape(B, K, Z), axis=1, out=dh[:, :Z])
        dz *= self.ez
        xp.sum(dz.reshape(B, K, Z), axis=1, out=dh[:, Z:])
        dh[:, Z:] *= self.std0
        dh[:, Z:] *= 0.5
        dh[:, Z:] -= 0.5 * dq.reshape(B, K).sum(1)[:, None]
        return dh


class FlowTrainStep(fastpath.TrainStep):
    """fastpath.TrainStep for a flow q: the same numbers as objectives.bound_and_grads +
    optim.adam_step up to rounding. The flat buffers hold each coupling half's s and m nets
    layer by layer side by side, so that views (2, in, out) of them stack the pair."""

    def __init__(self, params, adam, cfg, family, batch, k=1, frozen=(), sparse_input=False):
        self.family = family
        super().__init__(params, adam, cfg, batch, k, frozen, sparse_input)

    def _core(self, cfg, batch, k, dtype, xp):
        halves = [(f"q.s{t}.{a}", f"q.s{t}.{b}") for t in range(self.family.steps)
                  for a, b in (("s1", "m1"), ("s2", "m2"))]
        self.specs = {name: self._spec([name]) for name in ["q.qv", "q.rv"]}
        self.specs.update({names: self._spec(list(names)) for names in halves})
        return FlowCore(self.family, batch, k, True, dtype, xp, self.specs.__getitem__)

    def _order(self, keys):
        """Trainable keys, the flow's nets last, each pair's layers interleaved (see class)."""
        rest = [k for k in keys if not k.startswith("q.")]
        out = [k for k in keys if k.startswith(("q.qv.", "q.rv."))]
        for t in range(self.family.steps):
            for a, b in (("s1", "m1"), ("s2", "m2")):
                for i in range(3):
                    for kind in ("W", "b"):
                        out += [f"q.s{t}.{n}.fc{i}.{kind}" for n in (a, b)]
        return rest + out

    def _spec(self, prefixes):
        """(Ws, bs, gWs, gbs) of nets `prefixes`, stacked: views (L, in, out), (L, 1, out)."""
        def stack(d, key):
            first = d[key.format(prefixes[0])]
            if len(prefixes) == 1:
                return first.reshape((1,) + first.shape if first.ndim == 2 else (1, 1, -1))
            flat = self.p if d is self.params else self.g
            at = self._offset[key.format(prefixes[0])]
            n = first.size * len(prefixes)
            shape = (len(prefixes),) + (first.shape if first.ndim == 2 else (1, first.size))
            return flat[at:at + n].reshape(shape)
        out = []
        for d in (self.params, self.grads):
            out.append([stack(d, "{}" + f".fc{i}.W") for i in range(3)])
            out.append([stack(d, "{}" + f".fc{i}.b") for i in range(3)])
        return out[0], out[1], out[2], out[3]

    @property
    def _offset(self):
        at, off = 0, {}
        for key in self.keys:
            off[key] = at
            at += int(self.params[key].size)
        return off


class QStarFlow:
    """localopt's q*_Flow step, decoder fixed: gradient(work, x, eps, out=None) -> (d ELBO_n /
    d work (dict: "h" (N, 2Z) and every net (N, ...)), log w (N, S)), ELBO_n = mean_s log w,
    for per-datapoint nets in work (W (N, in, out), b (N, 1, out)). out: a dict like work to
    write the gradient into (else buffers of the step's own). As rows stop (N falls), the
    buffers are rebuilt as views of the first rows of those made for the first N."""

    def __init__(self, params, family, samples):
        W = params["dec.fc0.W"]
        self.params, self.family, self.S, self.n = params, family, samples, None
        self.xp, self.dtype = get_xp(W), W.dtype
        self.scratch, self.dec = fastpath.Scratch(self.xp), None

    def _setup(self, work, n):
        xp, dt, S = self.xp, self.dtype, self.S
        self.n = n
        if self.dec is None or self.dec.rows < n * S:
            self.dec = fastpath.Decoder(self.params, n * S)
            self.w_all = xp.full(n * S, 1.0 / S, dt)
        self.w = self.w_all[:n * S]
        self.core = FlowCore(self.family, n, S, False, dt, xp, self._spec, self.scratch.reset())
        self.own = None                 # gradient buffers of its own: only when no out= comes

    def __call__(self, work, x, eps, out=None):
        N, S, _ = eps.shape
        if self.n != N:
            self._setup(work, N)
        if out is None and self.own is None:
            self.own = {k: self.scratch.empty(v.shape, self.dtype) for k, v in work.items() if k != "h"}
        self.work, self.grads = work, (self.own if out is None else out)
        dh, logw = fastpath.qstar_gradient(self.core, self.dec, self.params, x, work["h"], eps, self.w)
        if out is None:
            return {"h": dh, **self.own}, logw
        out["h"][...] = dh
        return out, logw

    def _spec(self, p):
        w, g = self.work, self.grads
        return ([w[f"{p}.fc{i}.W"] for i in range(3)], [w[f"{p}.fc{i}.b"] for i in range(3)],
                [g[f"{p}.fc{i}.W"] for i in range(3)], [g[f"{p}.fc{i}.b"] for i in range(3)])
