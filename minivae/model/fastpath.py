"""Buffered, kernel-fused twins of the hot loops, for the paper's model class: an FFG
posterior, ELU hidden layers and a Bernoulli decoder.

  Decoder       model.log_lik(..., need_grads=False) and its gradient wrt z, on buffers: the one
                fused decoder (q*, AIS, BDMC), an ELU/Bernoulli MLP
  TrainStep     objectives.bound_and_grads + optim.adam_step (one training step), over a
                family core (FFGCore here; fused_flow.FlowCore, fused_fullcov.FullCovCore)
  QStarFFG      localopt's q*_FFG gradient with the decoder fixed: d ELBO / d h and log w
  qstar_gradient  the same through a family core (flow, full covariance)
  Scratch       buffers reused when a q* step is rebuilt for fewer rows
  log_lik_dz    model.log_lik(..., need_grads=False) by Decoder, as (ll, backward) (any q*)
  elu           nn.elu by the fused kernels (the flow's nets)

The maths is the layer code's (nn, densities, posteriors, optim: the FD-checked reference);
here the matrix products write into preallocated buffers, the elementwise work between them
runs in fused kernels (kernels/), the encoder's first product skips the zeros of binarized
images, and Adam updates every parameter in one kernel call. tests/test_train_step.py,
test_decoder_fused.py and test_localopt.py check each against the reference. `supports` says when they apply; callers fall back otherwise.
"""
import numpy as np

from ..backend import get_xp, kernels
from .densities import reduce_weights
from .optim import adam_scalars

# The encoder's first product skips the zeros of x below this density (binarized MNIST: 0.13,
# where skipping costs about 0.45 of a BLAS product; break-even is near 0.3). CPU only.
SPARSE_BELOW = 0.25


def supports(cfg, family):
    """Whether the fast paths handle this model: FFG q, ELU hidden layers, Bernoulli p(x|z)."""
    return family.name == "ffg" and cfg.act == "elu" and decoder_supported(cfg)


def decoder_supported(cfg):
    """Whether Decoder (and log_lik_dz) handles this decoder: an MLP with ELU hidden layers
    (or none), Bernoulli p(x|z)."""
    return (cfg.arch == "mlp" and cfg.likelihood == "bernoulli" and (cfg.act == "elu" or cfg.dec_layers == 0)
            and kernels() is not None)


def log_lik_dz(params, cfg, x, z, workspace=None):
    """model.log_lik(params, cfg, x, z, need_grads=False) by Decoder: log p(x|z) (B,) or (B, K)
    and backward(dll) -> (dz, {}); z: (B, Z) or (B, K, Z). The gradient wrt z is computed here,
    with the value. workspace: a dict kept by the caller between calls, where the decoder's
    buffers stay (else they are allocated on every call)."""
    K = z.shape[1] if z.ndim == x.ndim + 1 else 1
    R, Z = x.shape[0] * K, z.shape[-1]
    workspace = {} if workspace is None else workspace
    dec = workspace.get("decoder")
    if dec is None or dec.rows < R or dec.dtype != z.dtype:
        dec = workspace["decoder"] = Decoder(params, R, z.dtype)
    _, ll = dec(params, x, z.reshape(R, Z), K)
    ll, gll = ll.reshape(z.shape[:-1]).copy(), dec.grad_ll[:R].reshape(z.shape).copy()

    def backward(dll):
        return gll * dll[..., None], {}

    return ll, backward


def elu(x):
    """nn.elu by kernels.bias_elu (zero bias) and elu_backward: the same (y, backward) up to
    rounding, for x of any shape."""
    xp, k = get_xp(x), kernels()
    x2 = x.reshape(-1, x.shape[-1])
    y, d = xp.empty_like(x2), xp.empty_like(x2)
    k.bias_elu(x2, xp.zeros(x.shape[-1], x.dtype), y, d)

    def backward(dy):
        out = xp.empty_like(d)
        k.elu_backward(xp.ascontiguousarray(dy).reshape(d.shape), d, out)
        return out.reshape(x.shape)

    return y.reshape(x.shape), backward


def mostly_zeros(x):
    """Whether the encoder should skip the zeros of data x (a NumPy array, e.g. the training
    set): decided once per data set, so a resumed run takes the same path."""
    return isinstance(x, np.ndarray) and np.count_nonzero(x) < SPARSE_BELOW * x.size


class _MLP:
    """Buffers of the ELU MLP `prefix.fc{i}` for up to `rows` rows: activations (reused for
    the backward's dh) and ELU derivatives per hidden layer, and the output. dtype: of the
    weights unless given; impl: the kernels' (auto, ref, cpu, cuda)."""

    def __init__(self, params, prefix, rows, dtype=None, impl="auto"):
        W0 = params[f"{prefix}.fc0.W"]
        xp, dt = get_xp(W0), dtype or W0.dtype
        self.n = 0
        while f"{prefix}.fc{self.n}.W" in params:
            self.n += 1
        self.keys = [(f"{prefix}.fc{i}.W", f"{prefix}.fc{i}.b") for i in range(self.n)]
        widths = [params[kW].shape[1] for kW, _ in self.keys]
        self.act = [xp.empty((rows, w), dt) for w in widths[:-1]] + [xp.empty((rows, widths[-1]), dt)]
        self.der = [xp.empty((rows, w), dt) for w in widths[:-1]]
        self.sparse, self.impl = False, impl

    def forward(self, params, x, bias_last=True, sparse=False):
        """mlp(x): (R, out), with or without the last layer's bias. sparse: x is mostly zeros
        and the first product skips them (kernels.sparse_matmul)."""
        k, xp, R = kernels(), get_xp(x), x.shape[0]
        self.sparse = sparse
        h = x
        for i, (kW, kb) in enumerate(self.keys):
            a = self.act[i][:R]
            if i == 0 and sparse:
                k.sparse_matmul(x, params[kW], a, impl=self.impl)
            else:
                xp.matmul(h, params[kW], out=a)
            if i < self.n - 1:
                k.bias_elu(a, params[kb], a, self.der[i][:R], impl=self.impl)
            elif bias_last:
                a += params[kb]
            h = a
        return h

    def backward(self, params, x, dy, grads, dx=None):
        """From dy (R, out) = d/d(output): dW, db into grads[key] (keys absent from grads are
        skipped) and, if dx (R, in) is given, d/dx into it. Overwrites the activations."""
        k, xp, R = kernels(), get_xp(dy), dy.shape[0]
        for i in range(self.n - 1, -1, -1):
            kW, kb = self.keys[i]
            inp = x if i == 0 else self.act[i - 1][:R]
            if kW in grads:
                if i == 0 and self.sparse:
                    k.sparse_matmul_tn(x, dy, grads[kW], impl=self.impl)
                else:
                    xp.matmul(inp.T, dy, out=grads[kW])
            if kb in grads:
                dy.sum(axis=0, out=grads[kb])
            if i == 0:
                if dx is not None:
                    xp.matmul(dy, params[kW].T, out=dx)
                return
            xp.matmul(dy, params[kW].T, out=inp)      # the activation has been used: reuse it
            k.elu_backward(inp, self.der[i - 1][:R], inp, impl=self.impl)
            dy = inp


class Decoder:
    """The fused twin of model.log_lik's gradient wrt z for an ELU/Bernoulli MLP decoder, on up
    to `rows` rows (datapoints x chains, datapoint-major; x given once per datapoint):

        l = dec(z) (logits);  g = x - sigmoid(l);  grad_ll = J_dec(z)^T g = grad_z log p(x|z)
        grad_z = beta grad_ll - z = grad_z [log N(z; 0, I) + beta log p(x|z)]

    Matrix products in BLAS into buffers (_MLP), ELU and the Bernoulli layer in fused kernels,
    no weight gradients. Used by training's q* (QStarFFG, log_lik_dz), AIS and BDMC."""

    def __init__(self, params, rows, dtype=None, impl="auto"):
        self.mlp = _MLP(params, "dec", rows, dtype, impl)
        W0 = params["dec.fc0.W"]
        xp, self.dtype, Z = get_xp(W0), np.dtype(dtype or W0.dtype), W0.shape[0]
        self.rows, self.impl = rows, impl
        self.grad_ll, self.grad_z = xp.empty((rows, Z), self.dtype), xp.empty((rows, Z), self.dtype)
        self.ll = xp.empty(rows, self.dtype)

    def __call__(self, params, x, z, chains=1, beta=1.0, want_ll=True):
        """(grad_z (R, Z), log p(x|z) (R,) or None) for x (N, D), z (R, Z), R = N * chains;
        grad log p(x|z) is left in self.grad_ll[:R]. All live in the buffers: the next call
        overwrites them, copy to keep."""
        R = z.shape[0]
        if R > self.rows:
            raise ValueError(f"{R} rows of z, but a decoder for {self.rows}")
        xp, k = get_xp(z), kernels()
        out = self.mlp.forward(params, z, bias_last=False)               # (R, D) logits less the bias
        ll = self.ll[:R] if want_ll else None
        k.bernoulli_grad(out, params[self.mlp.keys[-1][1]], x, chains, out, ll, want_ll, impl=self.impl)
        gll, gz = self.grad_ll[:R], self.grad_z[:R]                       # (R, Z)
        self.mlp.backward(params, z, out, {}, gll)
        xp.multiply(gll, beta, out=gz)
        gz -= z
        return gz, ll


class Scratch:
    """Buffers handed out in order, and kept: after reset(), the same sequence of requests gets
    the same memory back (the first elements of each buffer) wherever it fits, so a step
    rebuilt for fewer rows (q* datapoints stopping) reuses its buffers instead of reallocating.
    Contents are undefined: for buffers that are written before they are read."""

    def __init__(self, xp):
        self.xp, self.bufs, self.i = xp, [], 0

    def reset(self):
        self.i = 0
        return self

    def empty(self, shape, dtype):
        n = int(np.prod(shape))
        if self.i < len(self.bufs) and self.bufs[self.i].size >= n and self.bufs[self.i].dtype == dtype:
            out = self.bufs[self.i][:n].reshape(shape)
        else:
            buf = self.xp.empty(n, dtype)
            self.bufs[self.i:self.i + 1] = [buf]
            out = buf.reshape(shape)
        self.i += 1
        return out


def _adopt(d, keys, xp, dtype):
    """Move arrays d[k] (k in keys) into one flat buffer, d[k] becoming views of it."""
    flat = xp.empty(sum(int(d[k].size) for k in keys), dtype)
    at = 0
    for k in keys:
        n = int(d[k].size)
        flat[at:at + n] = d[k].reshape(-1)
        d[k] = flat[at:at + n].reshape(d[k].shape)
        at += n
    return flat


class TrainStep:
    """One training step of an FFG/ELU/Bernoulli VAE: `bound = step(x, eps, lam, objective)`
    then `step.update(lr)`, the same numbers as objectives.bound_and_grads + optim.adam_step
    up to float rounding. The trained parameters, their Adam moments and gradients live in
    flat buffers (params[k], adam["m"][k], adam["v"][k] become views of them, values kept);
    keys starting with a `frozen` prefix get no gradient and no update."""

    def __init__(self, params, adam, cfg, batch, k=1, frozen=(), sparse_input=False):
        W = params["enc.fc0.W"]
        xp, dt = get_xp(W), W.dtype
        self.params, self.adam, self.sparse = params, adam, sparse_input and xp is np
        self.enc, self.dec = _MLP(params, "enc", batch), _MLP(params, "dec", batch * k)
        self.keys = self._order([key for key in params if not key.startswith(tuple(frozen))])
        self.p = _adopt(params, self.keys, xp, dt)
        self.m = _adopt(adam["m"], self.keys, xp, dt)
        self.v = _adopt(adam["v"], self.keys, xp, dt)
        self.g = xp.zeros_like(self.p)
        self.grads = dict(zip(self.keys, self._views(self.g)))
        self.train_encoder = any(key.startswith("enc.") for key in self.keys)
        self.dz, self.ll = xp.empty((batch * k, cfg.latent), dt), xp.empty(batch * k, dt)
        self.batch, self.k = batch, k
        self.core = self._core(cfg, batch, k, dt, xp)

    def _core(self, cfg, batch, k, dtype, xp):
        """The posterior family's core: forward(h, eps, lam) -> (z (R, Z), c), backward(g, w,
        lam) -> dh (a subclass gives its family's)."""
        return FFGCore(cfg.latent, batch, k, dtype, xp)

    def _order(self, keys):
        """The trainable keys in their flat-buffer order (a subclass may stack nets)."""
        return keys

    def _views(self, flat):
        at, out = 0, []
        for key in self.keys:
            n = int(self.params[key].size)
            out.append(flat[at:at + n].reshape(self.params[key].shape))
            at += n
        return out

    def __call__(self, x, eps, lam=1.0, objective="elbo"):
        """The bound (B,) of every row of x (B, D) with noise eps (B, K, Z); the gradient of
        its batch mean goes to self.grads. B may be under the batch size where the core allows."""
        B, K, _ = eps.shape
        if B > self.batch or K != self.k or (B < self.batch and not self.core.partial):
            raise ValueError(f"{type(self).__name__} made for {self.batch} x {self.k} samples, got {B} x {K}")
        params, R = self.params, B * K
        h = self.enc.forward(params, x, sparse=self.sparse)                   # (B, P)
        z, c = self.core.forward(h, eps, lam)                                 # (R, Z), (R,) or (B, K)
        out = self.dec.forward(params, z, bias_last=False)                   # (R, D), no bias
        ll = self.ll[:R]
        kernels().bernoulli_grad(out, params[self.dec.keys[-1][1]], x, K, out, ll, True)
        value, dlogw = reduce_weights(ll.reshape(B, K) + c.reshape(B, K), objective)
        dlogw /= B                                                            # of the batch mean
        w = dlogw.reshape(R)
        out *= w[:, None]                                                     # d/d logits
        self.dec.backward(params, z, out, self.grads, self.dz[:R])
        dh = self.core.backward(self.dz[:R], w, lam)
        if self.train_encoder:
            self.enc.backward(params, x, dh, self.grads)
        return value

    def update(self, lr, b1=0.9, b2=0.999, eps=1e-8):
        """optim.adam_step with self.grads, as one kernel call over the flat buffers."""
        step, eps_hat = adam_scalars(self.adam, lr, b1, b2, eps)
        kernels().adam_dense(self.p, self.g, self.m, self.v, step, eps_hat, b1, b2)


class FFGCore:
    """The FFG's reparameterisation with the prior and entropy weight of objectives.log_weights,
    by kernels.ffg_forward/ffg_backward, for up to B rows of h (B, 2Z), K samples each:
    forward(h, eps, lam) -> z (R, Z), c = log N(z; 0, I) - lam logq (B, K); backward(g, w, lam)
    with g = w d log p(x|z)/dz (R, Z), w = d/dlog w (R,) -> dh (B, 2Z)."""

    partial = True                      # fewer than B rows are fine (buffers are sliced)

    def __init__(self, Z, B, K, dtype, xp):
        self.K = K
        self.z, self.c = xp.empty((B * K, Z), dtype), xp.empty((B, K), dtype)
        self.std, self.dh = xp.empty((B, Z), dtype), xp.empty((B, 2 * Z), dtype)

    def forward(self, h, eps, lam):
        B = h.shape[0]
        self.h, self.eps, std = h, eps, _std(h, self.std[:B])
        z, c = self.z[:B * self.K], self.c[:B]
        kernels().ffg_forward(h, std, eps, lam, z, c)
        return z, c

    def backward(self, g, w, lam):
        B = self.h.shape[0]
        dh = self.dh[:B]
        kernels().ffg_backward(self.h, self.std[:B], self.eps, g, w.reshape(B, self.K), lam, True, dh)
        return dh


class QStarFFG:
    """localopt's q*_FFG step, decoder fixed: (d ELBO_n / d h_n (N, 2Z), log w (N, S)) for
    h (N, 2Z) and eps (N, S, Z), ELBO_n = mean_s log w. Decoder gives grad_z log p(x|z) and
    log p(x|z) over the N x S rows, without decoder weight gradients."""

    def __init__(self, params, n, samples):
        W = params["dec.fc0.W"]
        xp, dt, Z = get_xp(W), W.dtype, W.shape[0]
        self.dec = Decoder(params, n * samples)
        self.z = xp.empty((n * samples, Z), dt)
        self.c, self.w = xp.empty((n, samples), dt), xp.full((n, samples), 1.0 / samples, dt)
        self.std, self.dh = xp.empty((n, Z), dt), xp.empty((n, 2 * Z), dt)

    def __call__(self, params, x, h, eps):
        N, S, Z = eps.shape
        kern, R = kernels(), N * S
        std, z, c, w = _std(h, self.std[:N]), self.z[:R], self.c[:N], self.w[:N]
        kern.ffg_forward(h, std, eps, 1.0, z, c)
        _, ll = self.dec(params, x, z, S)
        kern.ffg_backward(h, std, eps, self.dec.grad_ll[:R], w, 1.0, False, self.dh[:N])
        return self.dh[:N], ll.reshape(N, S) + c


def qstar_gradient(core, dec, params, x, h, eps, w):
    """One q* gradient through a family core (FlowCore, FullCovCore) and Decoder `dec`, decoder
    fixed: (d ELBO_n / d h (N, P), log w (N, S)) with w = 1/S (N*S,); the core's nets' gradients
    go where its spec says."""
    N, S, _ = eps.shape
    z, c = core.forward(h, eps, 1.0)
    _, ll = dec(params, x, z, S)
    gll = dec.grad_ll[:N * S]
    gll *= w[:, None]
    logw = (ll + c).reshape(N, S)
    return core.backward(gll, w, 1.0), logw


def _std(h, out):
    """exp(logvar / 2) of h = [mu, logvar] into out (B, Z)."""
    xp = get_xp(h)
    xp.multiply(h[:, out.shape[1]:], 0.5, out=out)
    return xp.exp(out, out=out)
