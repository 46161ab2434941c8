"""The kernels of the training and q* fast paths (kernels/adam_dense.py, sparse_input.py,
reparam.py): CPU equal to the reference (bit for bit where the docstring promises it), the
references equal to the library code they replace, the CUDA twins under the simulator (run in
a process of their own, as tests/test_cudasim.py does) and compiled to PTX."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

from kernels import _dispatch, _threads, adam_dense, reparam, sparse_input  # noqa: E402
from minivae.model import objectives, optim  # noqa: E402
from minivae.model.config import Config  # noqa: E402
from minivae.model.posteriors import get_family  # noqa: E402

DTYPES = [np.float64, np.float32]


def rng():
    return np.random.default_rng(5)


def close(got, want, dtype):
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13 * np.abs(want).max())
    else:
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6 * np.abs(want).max())


def copies(arrays):
    return [a.copy() if isinstance(a, np.ndarray) else a for a in arrays]


# --- Adam -----------------------------------------------------------------------------------------

def adam_state(dtype, shape):
    r = rng()
    p, g = (r.standard_normal(shape).astype(dtype) for _ in range(2))
    g.flat[:3] = [0.0, 1e-30, -1e15]
    m = (0.1 * r.standard_normal(shape)).astype(dtype)
    v = (0.01 * r.random(shape)).astype(dtype)
    return p, g, m, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_adam_dense_is_optim_adam_step_bit_for_bit(dtype, impl):
    p, g, m, v = adam_state(dtype, (7, 13))
    params, state = {"w": p.copy()}, {"m": {"w": m.copy()}, "v": {"w": v.copy()}, "t": 3}
    for t in range(4, 7):
        optim.adam_step(params, {"w": g}, state, 1e-2, impl="ref")
        c2 = np.sqrt(1 - 0.999 ** t)
        adam_dense.adam_dense(p, g, m, v, 1e-2 * c2 / (1 - 0.9 ** t), 1e-8 * c2, impl=impl)
    assert params["w"].tobytes() == p.tobytes()
    assert state["m"]["w"].tobytes() == m.tobytes() and state["v"]["w"].tobytes() == v.tobytes()


def test_adam_step_kernel_and_reference_agree_and_refuse_odd_layouts():
    p, g, m, v = adam_state(np.float32, (6, 5))
    a = {"p": {"w": p.copy()}, "s": {"m": {"w": m.copy()}, "v": {"w": v.copy()}, "t": 0}}
    b = {"p": {"w": p.copy()}, "s": {"m": {"w": m.copy()}, "v": {"w": v.copy()}, "t": 0}}
    for _ in range(3):
        optim.adam_step(a["p"], {"w": g}, a["s"], 1e-3, impl="kernel")
        optim.adam_step(b["p"], {"w": g}, b["s"], 1e-3, impl="ref")
    assert a["p"]["w"].tobytes() == b["p"]["w"].tobytes() and a["s"]["t"] == 3
    with pytest.raises(ValueError, match="contiguous"):
        optim.adam_step({"w": p.T}, {"w": g.T}, {"m": {"w": m.T}, "v": {"w": v.T}, "t": 0}, 1e-3,
                        impl="kernel")
    with pytest.raises(ValueError, match="shapes"):
        adam_dense.adam_dense(p, g[:2], m, v, 0.1, 1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_adam_rows_is_batched_adam_step_bit_for_bit(dtype, impl):
    p, g, m, v = adam_state(dtype, (5, 3, 4))
    active = np.array([True, False, True, True, False])
    t0 = np.array([0, 3, 1, 7, 2])
    params, state = {"w": p.copy()}, {"m": {"w": m.copy()}, "v": {"w": v.copy()}, "t": t0.copy()}
    p2, m2, v2, t2 = p.copy(), m.copy(), v.copy(), t0.copy()
    for _ in range(3):
        optim.batched_adam_step(params, {"w": g}, state, 1e-2, active, impl="ref")
        t2 += active
        tt = np.maximum(t2, 1).astype(dtype)
        c2 = np.sqrt(1 - 0.999 ** tt)
        step = np.where(active, 1e-2 * c2 / (1 - 0.9 ** tt), 0)
        adam_dense.adam_rows(*(a.reshape(5, -1) for a in (p2, g, m2, v2)), step, 1e-8 * c2, active,
                             impl=impl)
    for got, want in ((p2, params["w"]), (m2, state["m"]["w"]), (v2, state["v"]["w"])):
        assert got.tobytes() == want.tobytes()
    assert p2[~active].tobytes() == p[~active].tobytes()


def test_batched_adam_step_kernel_updates_every_key_from_the_same_step_counts():
    r = rng()
    params = {"h": r.standard_normal((4, 6)), "q.W": r.standard_normal((4, 3, 2))}
    grads = {k: r.standard_normal(v.shape) for k, v in params.items()}
    a, b = ({k: v.copy() for k, v in params.items()} for _ in range(2))
    sa, sb = optim.batched_adam_init(a, 4), optim.batched_adam_init(b, 4)
    active = np.array([True, True, False, True])
    for _ in range(2):
        optim.batched_adam_step(a, grads, sa, 0.1, active, impl="kernel")
        optim.batched_adam_step(b, grads, sb, 0.1, active, impl="ref")
    np.testing.assert_array_equal(sa["t"], [2, 2, 0, 2])
    np.testing.assert_array_equal(sa["t"], sb["t"])
    for k in params:
        assert a[k].tobytes() == b[k].tobytes()


# --- sparse input products ---------------------------------------------------------------------

def sparse_x(dtype, rows=23, cols=37, density=0.2):
    r = rng()
    x = (r.random((rows, cols)) < density).astype(dtype)
    x[3] = 0                                              # an empty row
    x[:, 20] = 0                                          # an empty column
    x[1, :9] = 1                                          # a row with more than four nonzeros
    if dtype != np.uint8:
        x[2, 7], x[4, 8] = 2.5, -0.75                     # not only ones
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xtype", ["same", "uint8"])
def test_sparse_matmul_is_the_product(dtype, xtype):
    x = sparse_x(np.uint8 if xtype == "uint8" else dtype)
    r = rng()
    W = r.standard_normal((37, 11)).astype(dtype)
    dy = r.standard_normal((23, 11)).astype(dtype)
    y, dW = np.full((23, 11), np.nan, dtype), np.full((37, 11), np.nan, dtype)
    sparse_input.sparse_matmul(x, W, y, impl="cpu")
    sparse_input.sparse_matmul_tn(x, dy, dW, impl="cpu")
    xf = x.astype(dtype)
    close(y, xf @ W, dtype)
    close(dW, xf.T @ dy, dtype)
    y0, dW0 = np.empty_like(y), np.empty_like(dW)
    sparse_input.sparse_matmul(x, W, y0, impl="ref")
    sparse_input.sparse_matmul_tn(x, dy, dW0, impl="ref")
    close(y, y0, dtype)
    close(dW, dW0, dtype)
    assert (y[3] == 0).all() and (dW[20] == 0).all()


def test_sparse_matmul_binary_input_sums_in_order():
    # 0/1 inputs: each output is a plain sum over the nonzeros in increasing index
    x = sparse_x(np.float32)[:, :30]
    x[x != 0] = 1
    W = rng().standard_normal((30, 6)).astype(np.float32)
    y = np.empty((23, 6), np.float32)
    sparse_input.sparse_matmul(x, W, y)
    want = np.zeros_like(y)
    for r_, k in zip(*np.nonzero(x)):
        want[r_] += W[k]
    np.testing.assert_array_equal(y, want)


def test_sparse_shapes_are_checked():
    x = sparse_x(np.float64)
    with pytest.raises(ValueError, match="does not fit"):
        sparse_input.sparse_matmul(x, np.zeros((36, 3)), np.zeros((23, 3)))
    with pytest.raises(ValueError, match="does not fit"):
        sparse_input.sparse_matmul_tn(x, np.zeros((23, 3)), np.zeros((37, 4)))


# --- the FFG reparameterisation ---------------------------------------------------------------

def ffg_inputs(dtype, B=4, K=3, Z=5):
    r = rng()
    h = (0.7 * r.standard_normal((B, 2 * Z))).astype(dtype)
    eps = r.standard_normal((B, K, Z)).astype(dtype)
    g = r.standard_normal((B * K, Z)).astype(dtype)
    w = r.random((B, K)).astype(dtype)
    return h, np.exp(0.5 * h[:, Z:]), eps, g, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [True, False])
def test_ffg_kernels_match_reference(dtype, weighted):
    h, std, eps, g, w = ffg_inputs(dtype)
    out = {}
    for impl in ("ref", "cpu"):
        z, c, dh = np.empty((12, 5), dtype), np.empty((4, 3), dtype), np.empty((4, 10), dtype)
        reparam.ffg_forward(h, std, eps, 0.6, z, c, impl=impl)
        reparam.ffg_backward(h, std, eps, g, w, 0.6, weighted, dh, impl=impl)
        out[impl] = z, c, dh
    for got, want in zip(out["cpu"], out["ref"]):
        close(got, want, dtype)


def test_ffg_reference_is_the_library_log_weights():
    # log w = log p(x|z) + c, and dh from the decoder's weighted dz is log_weights' backward
    cfg = Config(data_dim=8, latent=5, enc_hidden=4, dec_hidden=6, dtype="float64")
    from minivae.model import model
    r = rng()
    params = model.init_params(cfg, r)
    family = get_family(cfg)
    h, std, eps, _, w = ffg_inputs(np.float64)
    x = (r.random((4, 8)) < 0.5).astype(np.float64)
    logw, back = objectives.log_weights(params, cfg, family, x, h, eps, lam=0.6)
    dh_want, _ = back(w)
    z, c, dh = np.empty((12, 5)), np.empty((4, 3)), np.empty((4, 10))
    reparam.ffg_forward(h, std, eps, 0.6, z, c, impl="ref")
    ll, back_ll = model.log_lik(params, cfg, x, z.reshape(4, 3, 5), False)
    np.testing.assert_allclose(ll + c, logw, rtol=1e-13)
    reparam.ffg_backward(h, std, eps, back_ll(w)[0].reshape(12, 5), w, 0.6, True, dh, impl="ref")
    np.testing.assert_allclose(dh, dh_want, rtol=1e-12, atol=1e-14)


def test_ffg_shapes_are_checked():
    h, std, eps, g, w = ffg_inputs(np.float64)
    with pytest.raises(ValueError, match="do not fit"):
        reparam.ffg_forward(h, std, eps[:, :2], 1.0, np.empty((12, 5)), np.empty((4, 3)))


def test_cpu_skips_the_thread_query_with_one_thread(monkeypatch):
    calls = []
    monkeypatch.setattr(_dispatch.numba, "get_num_threads", lambda: calls.append(1) or 1)
    monkeypatch.setattr(_dispatch.numba.config, "NUMBA_NUM_THREADS", 1)
    assert _threads.run_cpu(lambda a: a + 1, 10, 1) == 2 and calls == []
    assert _dispatch.cpu(lambda a: a + 1, 10, 1) == 2 and calls == []
    monkeypatch.setattr(_dispatch.numba.config, "NUMBA_NUM_THREADS", 2)
    assert _dispatch.cpu(lambda a: a + 1, 10, 1) == 2 and calls


# --- CUDA twins --------------------------------------------------------------------------------

def _cuda_usable():
    if SIM:
        return True
    from numba import cuda
    return cuda.is_available()



@pytest.fixture
def small_launch(monkeypatch):
    monkeypatch.setattr(_dispatch, "BLOCK", 8)
    monkeypatch.setattr(_dispatch, "MAX_GRID", 3)


def ref_and_cuda(fn, *arrays, **kw):
    out = []
    for impl in ("ref", "cuda"):
        a = copies(arrays)
        fn(*a, impl=impl, **kw)
        out.append(a)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("small_launch")
@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_usable(), reason="no CUDA GPU; run under NUMBA_ENABLE_CUDASIM=1")
def test_cuda_adam(dtype):
    p, g, m, v = adam_state(dtype, (5, 7))
    ref, dev = ref_and_cuda(adam_dense.adam_dense, p, g, m, v, 0.01, 1e-9)
    for got, want in zip(dev[:4], ref[:4]):
        close(got, want, dtype)
    active = np.array([True, False, True, True, False])
    step = np.full(5, 0.01, dtype)
    ref, dev = ref_and_cuda(adam_dense.adam_rows, p, g, m, v, step, step * 1e-6, active)
    for got, want in zip(dev[:4], ref[:4]):
        close(got, want, dtype)
    assert dev[0][~active].tobytes() == p[~active].tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("small_launch")
@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_usable(), reason="no CUDA GPU; run under NUMBA_ENABLE_CUDASIM=1")
def test_cuda_sparse_and_ffg(dtype):
    x = sparse_x(dtype, rows=6, cols=21)
    r = rng()
    W, dy = r.standard_normal((21, 4)).astype(dtype), r.standard_normal((6, 4)).astype(dtype)
    ref, dev = ref_and_cuda(sparse_input.sparse_matmul, x, W, np.empty((6, 4), dtype))
    close(dev[2], ref[2], dtype)
    ref, dev = ref_and_cuda(sparse_input.sparse_matmul_tn, x, dy, np.empty((21, 4), dtype))
    close(dev[2], ref[2], dtype)
    h, std, eps, g, w = ffg_inputs(dtype)
    ref, dev = ref_and_cuda(reparam.ffg_forward, h, std, eps, 0.6, np.empty((12, 5), dtype),
                            np.empty((4, 3), dtype))
    close(dev[4], ref[4], dtype)
    close(dev[5], ref[5], dtype)
    for weighted in (True, False):
        ref, dev = ref_and_cuda(reparam.ffg_backward, h, std, eps, g, w, 0.6, weighted,
                                np.empty((4, 10), dtype))
        close(dev[7], ref[7], dtype)


@pytest.mark.skipif(SIM, reason="this is the launcher")
def test_cuda_twins_under_the_simulator():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                          str(Path(__file__).resolve())], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout and "skipped" not in run.stdout


def _nvvm():
    try:
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
        return True
    except Exception:
        return False


@pytest.mark.skipif(SIM or not _nvvm(), reason="libNVVM (CUDA toolkit) not found")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_twins_compile_to_ptx(dtype):
    import numba
    from numba import cuda
    a, v, e3 = np.zeros((3, 4), dtype), np.zeros(3, dtype), np.zeros((3, 2, 4), dtype)
    flags = np.zeros(3, bool)
    cases = [
        (adam_dense._adam_dense_cuda, (v, v, v, v, 0.1, 1e-8, 0.9, 0.999)),
        (adam_dense._adam_rows_cuda, (a, a, a, a, v, v, flags, 0.9, 0.999)),
        (sparse_input._sparse_matmul_cuda, (a, a.T, a)),
        (sparse_input._sparse_matmul_tn_cuda, (a, a, a)),
        (reparam._ffg_forward_cuda, (np.zeros((3, 8), dtype), a, e3, 1.0, np.zeros((6, 4), dtype),
                                     np.zeros((3, 2), dtype))),
        (reparam._ffg_backward_cuda, (np.zeros((3, 8), dtype), a, e3, np.zeros((6, 4), dtype),
                                      np.zeros((3, 2), dtype), 1.0, True, np.zeros((3, 8), dtype))),
    ]
    for kernel, args in cases:
        ptx, _ = cuda.compile_ptx(kernel.py_func, tuple(numba.typeof(x) for x in args), cc=(8, 0))
        assert ".entry" in ptx
