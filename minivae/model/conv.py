"""2-D convolution and its transpose (NCHW), as im2col/col2im around one BLAS matrix product.

  conv2d    y = W^T im2col(x) + b        W: (C_in, kh, kw, C_out)   (in first, out last, as nn.linear)
  deconv2d  y = col2im(W^T x) + b        W: (C_in, C_out, kh, kw)

deconv2d is the adjoint of conv2d in x (the "transposed convolution"): with W_deconv =
W_conv reshaped (K, C_out_conv) and transposed, deconv2d(y) is conv2d's dx. Output sizes:
conv H_out = (H + 2 pad - kh) // stride + 1; deconv H_out = (H - 1) stride - 2 pad + kh.

im2col lays the patches out as (C, kh, kw, B, H_out, W_out), so the product is one GEMM
(C_out, K) @ (K, B * H_out * W_out) and both im2col and col2im are kh * kw strided slice copies
(no scatter-add, the same code on NumPy and CuPy).
"""
import numpy as np

from ..backend import get_xp


def out_size(n, k, stride, pad):
    return (n + 2 * pad - k) // stride + 1


def im2col(x, kh, kw, stride, pad):
    """x: (B, C, H, W) -> patches (C * kh * kw, B * Ho * Wo), rows ordered (c, i, j)."""
    xp = get_xp(x)
    B, C, H, W = x.shape
    Ho, Wo = out_size(H, kh, stride, pad), out_size(W, kw, stride, pad)
    xpad = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    cols = xp.empty((C, kh, kw, B, Ho, Wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xpad[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride]  # (B, C, Ho, Wo)
            cols[:, i, j] = patch.transpose(1, 0, 2, 3)
    return cols.reshape(C * kh * kw, B * Ho * Wo)


def col2im(cols, shape, kh, kw, stride, pad):
    """The adjoint of im2col: patches (C * kh * kw, B * Ho * Wo) summed back into (B, C, H, W)."""
    xp = get_xp(cols)
    B, C, H, W = shape
    Ho, Wo = out_size(H, kh, stride, pad), out_size(W, kw, stride, pad)
    cols = cols.reshape(C, kh, kw, B, Ho, Wo)
    xpad = xp.zeros((B, C, H + 2 * pad, W + 2 * pad), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xpad[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += cols[:, i, j].transpose(1, 0, 2, 3)
    return xpad[:, :, pad:pad + H, pad:pad + W] if pad else xpad


def _to_rows(y):
    """(B, C, H, W) -> (C, B * H * W): channels as GEMM rows."""
    return y.transpose(1, 0, 2, 3).reshape(y.shape[1], -1)


def _from_rows(r, B, H, W):
    """(C, B * H * W) -> (B, C, H, W), contiguous."""
    return get_xp(r).ascontiguousarray(r.reshape(-1, B, H, W).transpose(1, 0, 2, 3))


def conv2d(params, prefix, x, stride=2, pad=1, need_dx=True, need_grads=True):
    """x: (B, C_in, H, W) -> (B, C_out, Ho, Wo). backward(dy) -> (dx or None, {W, b} or {})."""
    W, b = params[prefix + ".W"], params[prefix + ".b"]
    C_in, kh, kw, C_out = W.shape
    B, _, H, Wd = x.shape
    Ho, Wo = out_size(H, kh, stride, pad), out_size(Wd, kw, stride, pad)
    cols = im2col(x, kh, kw, stride, pad)                          # (K, B*Ho*Wo)
    Wm = W.reshape(C_in * kh * kw, C_out)                          # (K, C_out)
    y = _from_rows(Wm.T @ cols, B, Ho, Wo)
    y += b[:, None, None]

    def backward(dy):
        drows = _to_rows(dy)                                       # (C_out, B*Ho*Wo)
        dx = col2im(Wm @ drows, x.shape, kh, kw, stride, pad) if need_dx else None
        if not need_grads:
            return dx, {}
        return dx, {prefix + ".W": (cols @ drows.T).reshape(W.shape), prefix + ".b": drows.sum(1)}

    return y, backward


def deconv2d(params, prefix, x, stride=2, pad=1, need_dx=True, need_grads=True):
    """Transposed convolution x: (B, C_in, H, W) -> (B, C_out, Ho, Wo), Ho = (H-1) stride - 2 pad + kh.
    backward(dy) -> (dx or None, {W, b} or {})."""
    W, b = params[prefix + ".W"], params[prefix + ".b"]
    C_in, C_out, kh, kw = W.shape
    B, _, H, Wd = x.shape
    Ho, Wo = (H - 1) * stride - 2 * pad + kh, (Wd - 1) * stride - 2 * pad + kw
    shape = (B, C_out, Ho, Wo)
    xrows = _to_rows(x)                                            # (C_in, B*H*W)
    Wm = W.reshape(C_in, C_out * kh * kw)                          # (C_in, K)
    y = col2im(Wm.T @ xrows, shape, kh, kw, stride, pad)
    y += b[:, None, None]

    def backward(dy):
        dcols = im2col(dy, kh, kw, stride, pad)                    # (K, B*H*W)
        dx = _from_rows(Wm @ dcols, B, H, Wd) if need_dx else None
        if not need_grads:
            return dx, {}
        return dx, {prefix + ".W": (xrows @ dcols.T).reshape(W.shape), prefix + ".b": dy.sum((0, 2, 3))}

    return y, backward


def init_conv(rng, params, prefix, c_in, c_out, k=4, dtype=np.float32, transpose=False, xp=np):
    """Glorot-uniform kernel (fan_in = c_in k^2, fan_out = c_out k^2), zero bias; conv layout
    (c_in, k, k, c_out), or deconv layout (c_in, c_out, k, k) with transpose=True."""
    limit = np.sqrt(6.0 / ((c_in + c_out) * k * k))
    shape = (c_in, c_out, k, k) if transpose else (c_in, k, k, c_out)
    params[prefix + ".W"] = xp.asarray(rng.uniform(-limit, limit, shape).astype(dtype))
    params[prefix + ".b"] = xp.zeros(c_out, dtype=dtype)
    return params
