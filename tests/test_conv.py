import numpy as np
import pytest

from minivae.model import conv
from minivae.testing.gradcheck import check_each

# (kernel, stride, pad, H): the paper's 4x4 / 2 / 1, and others to keep the code general
CASES = [(4, 2, 1, 8), (3, 1, 1, 5), (3, 2, 0, 7), (2, 2, 0, 4)]


def layer(r, k, transpose, c_in=3, c_out=4):
    params = conv.init_conv(r, {}, "l", c_in, c_out, k, np.float64, transpose=transpose)
    params["l.b"] = params["l.b"] + 0.1 * r.standard_normal(c_out)
    return params


def naive_conv(x, W, b, stride, pad):
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    C_in, kh, kw, C_out = W.shape
    Ho, Wo = conv.out_size(x.shape[2], kh, stride, pad), conv.out_size(x.shape[3], kw, stride, pad)
    y = np.zeros((x.shape[0], C_out, Ho, Wo))
    for h in range(Ho):
        for w in range(Wo):
            patch = xpad[:, :, h * stride:h * stride + kh, w * stride:w * stride + kw]  # (B, C, kh, kw)
            y[:, :, h, w] = np.einsum("bcij,cijo->bo", patch, W) + b
    return y


@pytest.mark.parametrize("k,stride,pad,H", CASES)
def test_conv2d_matches_a_direct_loop(k, stride, pad, H):
    r = np.random.default_rng(0)
    params = layer(r, k, False)
    x = r.standard_normal((2, 3, H, H + 1))
    y, _ = conv.conv2d(params, "l", x, stride, pad)
    assert np.allclose(y, naive_conv(x, params["l.W"], params["l.b"], stride, pad), atol=1e-12)


@pytest.mark.parametrize("k,stride,pad,H", CASES)
def test_deconv2d_is_the_adjoint_of_conv2d(k, stride, pad, H):
    r = np.random.default_rng(1)
    pc = layer(r, k, False)
    pc["l.b"][:] = 0
    x = r.standard_normal((2, 3, H, H))
    y, back = conv.conv2d(pc, "l", x, stride, pad)
    u = r.standard_normal(y.shape)
    Wd = pc["l.W"].transpose(3, 0, 1, 2)                  # (C_out, C_in, kh, kw): deconv layout
    v, _ = conv.deconv2d({"l.W": Wd, "l.b": np.zeros(3)}, "l", u, stride, pad)
    assert v.shape == x.shape                             # every case here inverts the size exactly
    assert np.isclose(np.sum(y * u), np.sum(x * v))
    assert np.allclose(v, back(u)[0])


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("k,stride,pad,H", CASES)
def test_conv_backward(k, stride, pad, H, transpose):
    r = np.random.default_rng(2)
    params = layer(r, k, transpose)
    f_layer = conv.deconv2d if transpose else conv.conv2d
    x = r.standard_normal((2, 3, H, H))
    y, back = f_layer(params, "l", x, stride, pad)
    u = r.standard_normal(y.shape)
    dx, grads = back(u)
    assert set(grads) == set(params)

    def f(p):
        return float(np.sum(f_layer({**params, **p}, "l", p["x"], stride, pad)[0] * u))

    check_each(f, {"x": x, **params}, {"x": dx, **grads})
    dx_none, no_grads = f_layer(params, "l", x, stride, pad, need_dx=False, need_grads=False)[1](u)
    assert dx_none is None and no_grads == {}


def test_paper_shapes():
    r = np.random.default_rng(3)
    y, _ = conv.conv2d(layer(r, 4, False, 3, 5), "l", np.zeros((1, 3, 32, 32)))
    assert y.shape == (1, 5, 16, 16)
    y, _ = conv.deconv2d(layer(r, 4, True, 5, 3), "l", np.zeros((1, 5, 4, 4)))
    assert y.shape == (1, 3, 8, 8)
