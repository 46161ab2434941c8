"""Layers with hand-written backward passes.

A layer is `f(params, prefix, x) -> (y, backward)` with `backward(dy) -> (dx, grads)`,
`grads` holding only this layer's keys. Activations are `g(x) -> (y, backward)` with
`backward(dy) -> dx`. Weights are `W: (in, out)`, `b: (out,)`.

Weights may also carry a leading batch axis, one net per datapoint (`W: (N, in, out)`,
`b: (N, 1, out)`, `x: (N, S, in)`): the local (per-datapoint) flow of q* uses this.
"""
import numpy as np

from ..backend import get_xp, matmul


def add_grads(total, new):
    """Accumulate `new` into `total` (so parameters used twice get both gradients)."""
    for k, g in new.items():
        if k in total:
            total[k] = total[k] + g
        else:
            total[k] = g
    return total


def linear(params, prefix, x, need_dx=True, need_grads=True):
    """y = x W + b. x: (..., in) with shared W (in, out), or (N, S, in) with W (N, in, out).

    need_dx=False: backward returns dx = None (the data layer of an encoder needs no dx).
    need_grads=False: backward returns no parameter gradients (a fixed decoder, as in q*).
    """
    W, b = params[prefix + ".W"], params[prefix + ".b"]
    y = matmul(x, W)
    y += b

    def backward(dy):
        dx = matmul(dy, W.swapaxes(-1, -2)) if need_dx else None
        if not need_grads:
            return dx, {}
        if W.ndim == 2:
            x2, dy2 = x.reshape(-1, W.shape[0]), dy.reshape(-1, W.shape[1])
            dW, db = x2.T @ dy2, dy2.sum(0)
        else:
            dW, db = x.swapaxes(-1, -2) @ dy, dy.sum(-2, keepdims=True)
        return dx, {prefix + ".W": dW, prefix + ".b": db}

    return y, backward


def elu(x):
    xp = get_xp(x)
    # branch-free: np.where on a random sign mask mispredicts; these are the same values
    y = xp.expm1(xp.minimum(x, 0))
    y += xp.maximum(x, 0)

    def backward(dy):
        return dy * xp.minimum(y + 1, 1)

    return y, backward


def tanh(x):
    xp = get_xp(x)
    y = xp.tanh(x)

    def backward(dy):
        return dy * (1 - y * y)

    return y, backward


def sigmoid(x):
    xp = get_xp(x)
    y = 0.5 * (xp.tanh(0.5 * x) + 1)  # stable for any x, no overflow in exp

    def backward(dy):
        return dy * y * (1 - y)

    return y, backward


def identity(x):
    return x, lambda dy: dy


ACTIVATIONS = {"elu": elu, "tanh": tanh, "sigmoid": sigmoid, "linear": identity}


def mlp(params, prefix, x, n_layers, act="elu", need_dx=True, need_grads=True):
    """Linear layers `prefix.fc0 .. fc{n-1}` with `act` between them (none after the last):
    a name in ACTIVATIONS, or an activation function (e.g. fastpath.elu)."""
    act = ACTIVATIONS[act] if isinstance(act, str) else act
    backs = []
    h = x
    for i in range(n_layers):
        h, back = linear(params, f"{prefix}.fc{i}", h, need_dx or i > 0, need_grads)
        backs.append(back)
        if i < n_layers - 1:
            h, back_act = act(h)
            backs.append(back_act)

    return h, chain(backs)


def chain(backs):
    """One backward(dy) -> (dx, grads) from the backward closures of layers applied in order:
    run in reverse; a layer's closure gives (dx, grads), an activation's or reshape's gives dx."""
    def backward(dy):
        grads = {}
        for back in reversed(backs):
            out = back(dy)
            if isinstance(out, tuple):
                dy, g = out
                add_grads(grads, g)
            else:
                dy = out
        return dy, grads

    return backward


def init_mlp(rng, params, prefix, sizes, dtype=np.float32, batch=None, xp=np):
    """Glorot-uniform weights, zero biases, for layer sizes `sizes` (in, h1, ..., out).

    With `batch=N`, one independent net per datapoint (W: (N, in, out), b: (N, 1, out)).
    """
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        limit = np.sqrt(6.0 / (n_in + n_out))
        wshape = (n_in, n_out) if batch is None else (batch, n_in, n_out)
        bshape = (n_out,) if batch is None else (batch, 1, n_out)
        params[f"{prefix}.fc{i}.W"] = xp.asarray(rng.uniform(-limit, limit, wshape).astype(dtype))
        params[f"{prefix}.fc{i}.b"] = xp.zeros(bshape, dtype=dtype)
    return params
