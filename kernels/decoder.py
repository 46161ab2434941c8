"""The HMC target's gradient through a Bernoulli decoder MLP (ELU hidden layers), with
preallocated buffers: matrix products in BLAS (`xp.matmul(..., out=)`), the fused kernels
between them. Rows are datapoints x chains, datapoint-major; x is given once per datapoint.

    h_0 = z;  h_{i+1} = elu(h_i W_i + b_i)  (i < n - 1);  l = h_{n-1} W_{n-1} + b_{n-1}
    g = x - sigmoid(l);  dh_{n-1} = g W_{n-1}^T;  dh_i = (dh_{i+1} * elu'_i) W_i^T
    grad_ll = dh_0 = grad_z log p(x | z)
    grad_z = beta grad_ll - z = grad_z log f,   log f = log N(z; 0, I) + beta log p(x | z)

minivae.estimators.hmc's `target(z, need_value) -> (ll, grad ll)` is `decoder_grad(...)[1]` with
`buffers.grad_ll` (chains=1 when x is already one row per chain).
"""
from minivae.backend import get_xp

from .bernoulli import bernoulli_grad
from .elu import bias_elu, elu_backward


def decoder_sizes(params):
    """Layer sizes (Z, H_1, ..., D) of the decoder `dec.fc{i}` in params."""
    n = 0
    while f"dec.fc{n}.W" in params:
        n += 1
    if n == 0:
        raise KeyError("params hold no decoder (dec.fc0.W)")
    return [params["dec.fc0.W"].shape[0]] + [params[f"dec.fc{i}.W"].shape[1] for i in range(n)]


class DecoderBuffers:
    """Work arrays for `decoder_grad` on up to `rows` rows (use the first R of them)."""

    def __init__(self, sizes, rows, dtype, xp):
        self.rows = rows
        hidden = sizes[1:-1]
        self.h = [xp.empty((rows, n), dtype) for n in hidden]  # activations, then backward's dh
        self.d = [xp.empty((rows, n), dtype) for n in hidden]  # elu' of each hidden layer
        self.out = xp.empty((rows, sizes[-1]), dtype)          # logits, then x - sigmoid(logits)
        self.grad_ll = xp.empty((rows, sizes[0]), dtype)
        self.grad_z = xp.empty((rows, sizes[0]), dtype)
        self.ll = xp.empty(rows, dtype)


def decoder_buffers(params, rows, dtype=None, xp=None):
    """Buffers for `rows` rows; dtype and xp default to those of the decoder's weights."""
    W = params["dec.fc0.W"]
    return DecoderBuffers(decoder_sizes(params), rows, dtype or W.dtype, xp or get_xp(W))


def decoder_grad(params, x, z, chains, beta, want_ll, buffers, impl="auto"):
    """grad_z [log N(z; 0, I) + beta log p(x|z)]: (R, Z), and log p(x|z): (R,) if want_ll else None.

    x: (N, D), z: (R, Z) with R = N * chains <= buffers.rows. The results (and grad log p(x|z)
    in `buffers.grad_ll[:R]`) live in `buffers`: the next call overwrites them, copy to keep.
    """
    xp = get_xp(z)
    rows = z.shape[0]
    if rows > buffers.rows:
        raise ValueError(f"{rows} rows of z, but buffers for {buffers.rows}")
    n = len(buffers.h) + 1
    W = [params[f"dec.fc{i}.W"] for i in range(n)]
    b = [params[f"dec.fc{i}.b"] for i in range(n)]
    h = z
    for i in range(n - 1):                                  # (R, H_i)
        a, d = buffers.h[i][:rows], buffers.d[i][:rows]
        xp.matmul(h, W[i], out=a)
        bias_elu(a, b[i], a, d, impl=impl)
        h = a
    out = buffers.out[:rows]                                # (R, D)
    xp.matmul(h, W[-1], out=out)
    ll = buffers.ll[:rows] if want_ll else None
    bernoulli_grad(out, b[-1], x, chains, out, ll, want_ll, impl=impl)
    dh = out
    for i in range(n - 1, 0, -1):                           # activations are free now: reuse them
        nxt = buffers.h[i - 1][:rows]
        xp.matmul(dh, W[i].T, out=nxt)
        elu_backward(nxt, buffers.d[i - 1][:rows], nxt, impl=impl)
        dh = nxt
    gll, gz = buffers.grad_ll[:rows], buffers.grad_z[:rows]  # (R, Z)
    xp.matmul(dh, W[0].T, out=gll)
    xp.multiply(gll, beta, out=gz)
    gz -= z
    return gz, ll
