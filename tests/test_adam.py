"""Adam: the kernels (kernels/adam.py: one step count for all, adam_dense; one per row,
adam_rows) bit for bit their references, which are optim.adam_step's and batched_adam_step's
NumPy updates; the CUDA twins under the simulator."""
import numpy as np
import pytest

from kernels import adam
from minivae.model import optim
from minivae.testing.kernels import DTYPES, close, ref_and_cuda, rng

from conftest import cuda_twin


def adam_state(dtype, shape):
    r = rng(5)
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
        adam.adam_dense(p, g, m, v, 1e-2 * c2 / (1 - 0.9 ** t), 1e-8 * c2, impl=impl)
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
        adam.adam_dense(p, g[:2], m, v, 0.1, 1e-8)


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
        adam.adam_rows(*(a.reshape(5, -1) for a in (p2, g, m2, v2)), step, 1e-8 * c2, active,
                             impl=impl)
    for got, want in ((p2, params["w"]), (m2, state["m"]["w"]), (v2, state["v"]["w"])):
        assert got.tobytes() == want.tobytes()
    for before, after in ((p, p2), (m, m2), (v, v2)):                  # frozen rows: bit for bit
        assert after[~active].tobytes() == before[~active].tobytes()
    np.testing.assert_array_equal(state["t"], t0 + 3 * active)


def test_batched_adam_step_kernel_updates_every_key_from_the_same_step_counts():
    r = rng(5)
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


@cuda_twin
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_adam(dtype):
    p, g, m, v = adam_state(dtype, (5, 7))
    ref, dev = ref_and_cuda(adam.adam_dense, p, g, m, v, 0.01, 1e-9)
    for got, want in zip(dev[:4], ref[:4]):
        close(got, want, dtype, scaled=True)
    active = np.array([True, False, True, True, False])
    step = np.full(5, 0.01, dtype)
    ref, dev = ref_and_cuda(adam.adam_rows, p, g, m, v, step, step * 1e-6, active)
    for got, want in zip(dev[:4], ref[:4]):
        close(got, want, dtype, scaled=True)
    assert dev[0][~active].tobytes() == p[~active].tobytes()
