"""The fused flow (minivae.model.fused_flow, kernels.coupling) equals the reference flow.py, which
the FD tests check: float64, tight tolerances, same noise."""
import numpy as np
import pytest

from kernels import coupling, flow_head, tril
from minivae import train
from minivae.estimators import localopt
from minivae.model import fastpath, fused_flow, objectives, optim
from minivae.model.flow import positive_scale
from minivae.model.posteriors import get_family
from minivae.testing.kernels import DTYPES, SIM, nvvm_usable, ref_and_cuda
from minivae.testing.kernels import both as kboth
from minivae.testing.kernels import close as kclose
from minivae.testing.kernels import rng as krng

from conftest import cuda_twin
from test_train_step import near as close
from test_train_step import small, steps_follow_the_reference

pytestmark = pytest.mark.skipif(fastpath.kernels() is None, reason="kernels/ cannot be loaded")


def flow_model(layers=(2, 2), n=6, hidden=5, steps=2):
    cfg, params, x, rng = small(*layers, n=n)
    cfg = cfg.replace(q="flow", flow_hidden=hidden, flow_steps=steps)
    family = get_family(cfg)
    family.init_global(rng, params, np.float64, np)
    for k in params:
        if k.startswith("q."):
            params[k] = params[k] + 0.3 * rng.standard_normal(params[k].shape)
    return cfg, family, params, x, rng


# --- kernels.coupling --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_coupling_kernel_is_the_reference_and_the_flow_maths(dtype):
    r = np.random.default_rng(0)
    x, a, m, dy = (r.standard_normal((7, 5)).astype(dtype) for _ in range(4))
    a[0, :3] = [-60.0, 60.0, 0.0]
    dl = r.standard_normal(7).astype(dtype)
    out = {}
    for impl in ("ref", "cpu"):
        y, s, ld = np.empty_like(x), np.empty_like(x), np.full(7, 0.5, dtype)
        coupling.coupling_forward(x, a, m, y, s, ld, impl=impl)
        da, dm, dx = np.empty_like(x), np.empty_like(x), dy.copy()
        coupling.coupling_backward(dx, x, s, dl, da, dm, dx, impl=impl)   # dx aliases dy
        out[impl] = (y, s, ld, da, dm, dx)
    tol = 1e-13 if dtype == np.float64 else 2e-6
    for got, want in zip(out["cpu"], out["ref"]):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    if dtype == np.float32:
        return
    s0, logs0, back = positive_scale(a)                               # flow.py's maths
    y, s, ld, da, dm, dx = out["ref"]
    np.testing.assert_allclose(s, s0, rtol=tol, atol=tol)   # flow.py rounds s(-60) to 0
    np.testing.assert_allclose(y, x * s0 + m, rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(ld, 0.5 + logs0.sum(1), rtol=tol)
    np.testing.assert_allclose(da, back(dy * x, dl[:, None]), rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(dx, dy * s0, rtol=tol, atol=tol)
    np.testing.assert_array_equal(dm, dy)


@pytest.mark.parametrize("dtype", DTYPES)
def test_flow_head_kernels_are_their_reference(dtype):
    r = np.random.default_rng(3)
    zT, vT, g, d0 = (r.standard_normal((7, 5)).astype(dtype) for _ in range(4))
    rv = (2 * r.standard_normal((7, 10))).astype(dtype)
    rr, logdet, w = (r.standard_normal(7).astype(dtype) for _ in range(3))
    e, c = np.empty_like(zT), np.empty(7, dtype)
    ref, cpu = (kboth(flow_head.flow_head_forward, zT, vT, rv, rr, logdet, 0.7, e, e, c))
    for got, want in zip(cpu[6:], ref[6:]):
        kclose(got, want, dtype, scaled=True)
    d, dprec = ref[6], ref[7]
    ref, cpu = kboth(flow_head.flow_head_backward, g, zT, w, 0.7, d, dprec, e, e, np.empty_like(rv))
    for got, want in zip(cpu[6:], ref[6:]):
        kclose(got, want, dtype, scaled=True)


# --- training ----------------------------------------------------------------------------------

@pytest.mark.parametrize("objective,lam,K", [("elbo", 1.0, 1), ("elbo", 0.3, 3), ("iwae", 1.0, 4)])
@pytest.mark.parametrize("layers", [(2, 2), (1, 0)])
def test_flow_train_step_is_bound_and_grads(objective, lam, K, layers):
    cfg, family, params, x, rng = flow_model(layers)
    eps = rng.standard_normal((6, K, 6))
    value, grads = objectives.bound_and_grads(params, cfg, family, x, eps, lam, objective)
    p = {k: v.copy() for k, v in params.items()}
    step = fused_flow.FlowTrainStep(p, optim.adam_init(p), cfg, family, 6, K, sparse_input=True)
    for _ in range(2):                                                # buffers reused
        close(step(x, eps, lam, objective), value)
        assert set(step.grads) == set(grads)
        for k in grads:
            close(step.grads[k], grads[k])
    for k in params:                                                  # adopted, values kept
        np.testing.assert_array_equal(p[k], params[k])


def test_flow_training_steps_follow_the_reference_and_ref_is_a_flag():
    cfg, family, params, x, rng = flow_model()
    cfg = cfg.replace(k=2)
    assert fused_flow.supports(cfg, family) and not fused_flow.supports(cfg, family, ("q.",))
    steps_follow_the_reference(params, cfg, family, x, rng, (6, 2, 6))


def test_flow_train_step_with_a_frozen_decoder():
    cfg, family, params, x, rng = flow_model((0, 1))
    eps = rng.standard_normal((6, 1, 6))
    value, grads = objectives.bound_and_grads(params, cfg, family, x, eps, 1.0)
    p = {k: v.copy() for k, v in params.items()}
    step = fused_flow.FlowTrainStep(p, optim.adam_init(p), cfg, family, 6, 1, frozen=("dec.",))
    close(step(x, eps), value)
    assert not any(k.startswith("dec.") for k in step.grads)
    for k in step.grads:
        close(step.grads[k], grads[k])


# --- q*_Flow -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 6])                                # per-net and stacked bias paths
def test_qstar_flow_gradient_is_log_weights_backward(n):
    cfg, family, params, x, rng = flow_model(n=n)
    h, nets = family.init_local(rng, n, np.float64, np)
    work = {"h": 0.3 * rng.standard_normal(h.shape),
            **{k: v + 0.2 * rng.standard_normal(v.shape) for k, v in nets.items()}}
    eps = rng.standard_normal((n, 4, 6))
    want, back = objectives.log_weights({**params, **work}, cfg, family, x, work["h"], eps,
                                        decoder_grads=False)
    dh, g = back(np.full(want.shape, 0.25))
    step = fused_flow.QStarFlow(params, family, 4)
    for _ in range(2):
        grads, logw = step(work, x, eps)
        close(logw, want)
        close(grads["h"], dh)
        assert set(grads) == {"h"} | set(nets)
        for k in nets:
            close(grads[k], g[k])


def test_qstar_flow_on_fewer_rows_reuses_its_buffers_and_writes_into_out():
    cfg, family, params, x, rng = flow_model(n=6)
    h, nets = family.init_local(rng, 6, np.float64, np)
    work = {"h": 0.3 * rng.standard_normal(h.shape), **nets}
    eps = rng.standard_normal((6, 4, 6))
    step = fused_flow.QStarFlow(params, family, 4)
    step(work, x, eps)
    first = step.core.z[0]
    keep = [0, 2, 5]                                               # rows stopped: N 6 -> 3
    sub = {k: v[keep] for k, v in work.items()}
    out = {k: np.empty_like(v) for k, v in sub.items()}
    grads, logw = step(sub, x[keep], eps[keep], out=out)
    assert grads is out and np.shares_memory(step.core.z[0], first)
    fresh, want = fused_flow.QStarFlow(params, family, 4)(sub, x[keep], eps[keep])
    np.testing.assert_array_equal(logw, want)
    for k in sub:
        np.testing.assert_array_equal(out[k], fresh[k])


def test_flow_fit_local_uses_the_fused_gradient_and_follows_the_reference():
    cfg, family, params, x, _ = flow_model()
    assert isinstance(localopt._fast_gradient(params, cfg, family, x, 3), fused_flow.QStarFlow)
    settings = dict(max_steps=40, samples=3, lr=0.02, check_every=5, patience=1)
    fast = localopt.fit_local(params, cfg, family, x, np.random.default_rng(4), **settings)
    ref = localopt.fit_local(params, cfg, family, x, np.random.default_rng(4), impl="ref", **settings)
    np.testing.assert_array_equal(fast["steps"], ref["steps"])
    assert len(set(fast["steps"])) > 1                               # rows were compacted
    for k in ref["local"]:
        close(fast["local"][k], ref["local"][k], 1e-9)



@pytest.mark.skipif(SIM or not nvvm_usable(), reason="libNVVM (CUDA toolkit) not found")
@pytest.mark.parametrize("dtype", DTYPES)
def test_coupling_and_tril_cuda_twins_compile_to_ptx(dtype):
    import numba
    from numba import cuda
    a, v, L, h = (np.zeros(s, dtype) for s in ((3, 4), 3, (3, 4, 4), (3, 14)))
    e3 = np.zeros((3, 2, 4), dtype)
    cases = [(coupling._coupling_forward_cuda, (a, a, a, a, a, v)),
             (coupling._coupling_backward_cuda, (a, a, a, v, a, a, a)),
             (tril._tril_unpack_cuda, (h, L)), (tril._tril_pack_cuda, (L, L, v, h)),
             (tril._tril_pack_outer_cuda, (e3, e3, L, v, h)),
             (flow_head._flow_head_forward_cuda, (a, a, np.zeros((3, 8), dtype), v, v, 0.5, a, a, v)),
             (flow_head._flow_head_backward_cuda, (a, a, v, 0.5, a, a, a, a, np.zeros((3, 8), dtype)))]
    for kernel, args in cases:
        ptx, _ = cuda.compile_ptx(kernel.py_func, tuple(numba.typeof(x) for x in args), cc=(8, 0))
        assert ".entry" in ptx


@cuda_twin
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_coupling_forward_and_backward(dtype):
    r = krng(1)
    x, a, m, dy = (r.standard_normal((5, 7)).astype(dtype) for _ in range(4))
    a[0, :2] = [-60, 60]
    dl = r.standard_normal(5).astype(dtype)
    e = np.empty_like(x)
    ref, dev = ref_and_cuda(coupling.coupling_forward, x, a, m, e, e, np.ones(5, dtype))
    for got, want in zip(dev[3:], ref[3:]):
        kclose(got, want, dtype)
    ref, dev = ref_and_cuda(coupling.coupling_backward, dy, x, ref[4], dl, e, e, e)
    for got, want in zip(dev[4:], ref[4:]):
        kclose(got, want, dtype)


@cuda_twin
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_flow_head(dtype):
    r = krng(3)
    zT, vT, g = (r.standard_normal((7, 5)).astype(dtype) for _ in range(3))
    rv = (2 * r.standard_normal((7, 10))).astype(dtype)
    rr, logdet, w = (r.standard_normal(7).astype(dtype) for _ in range(3))
    e = np.empty_like(zT)
    ref, dev = ref_and_cuda(flow_head.flow_head_forward, zT, vT, rv, rr, logdet, 0.7, e, e, np.empty(7, dtype))
    for got, want in zip(dev[6:], ref[6:]):
        kclose(got, want, dtype, scaled=True)
    ref, dev = ref_and_cuda(flow_head.flow_head_backward, g, zT, w, 0.7, ref[6], ref[7], e, e, np.empty_like(rv))
    for got, want in zip(dev[6:], ref[6:]):
        kclose(got, want, dtype, scaled=True)


@cuda_twin
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_tril_unpack_and_pack(dtype):
    r, Z, B = krng(2), 4, 3
    h = r.standard_normal((B, Z + Z * (Z + 1) // 2)).astype(dtype)
    dL, s = r.standard_normal((B, Z, Z)).astype(dtype), r.standard_normal(B).astype(dtype)
    dz, eps = (r.standard_normal((B, 2, Z)).astype(dtype) for _ in range(2))
    ref, dev = ref_and_cuda(tril.tril_unpack, h, np.full((B, Z, Z), 7, dtype))
    kclose(dev[1], ref[1], dtype)
    L = ref[1]
    ref, dev = ref_and_cuda(tril.tril_pack, dL, L, s, np.zeros_like(h))
    kclose(dev[3], ref[3], dtype)
    ref, dev = ref_and_cuda(tril.tril_pack_outer, dz, eps, L, s, np.zeros_like(h))
    kclose(dev[4], ref[4], dtype)


# --- the commands: fused by default, the reference with --impl ref -------------------------------

@pytest.mark.parametrize("q", ["flow", "fullcov"])
def test_cli_train_and_localopt_fused_by_default_equal_to_impl_ref(tmp_path, monkeypatch, q):
    from minivae import io
    from minivae.model import fused_fullcov
    from conftest import run_cli
    calls = []
    for cls in ((fused_flow.FlowTrainStep, fused_flow.QStarFlow) if q == "flow" else
                (fused_fullcov.FullCovTrainStep, fused_fullcov.QStarFullCov)):
        monkeypatch.setattr(cls, "__call__", lambda self, *a, _f=cls.__call__, **k: calls.append(
            type(self).__name__) or _f(self, *a, **k))
    base = ["--epochs", "1", "--train-size", "200", "--latent", "3", "--enc-hidden", "10",
            "--dec-hidden", "10", "--q", q, "--dtype", "float64", "--batch", "50"]
    for impl in ("auto", "ref"):
        code, text = run_cli(["train", *base, "--impl", impl, "--out", str(tmp_path / f"{impl}.h5")])
        assert code == 0, text
        assert bool(calls) == (impl == "auto")                       # the fused step, by default only
        calls.clear()
    fast, ref = (io.load_checkpoint(tmp_path / f"{i}.h5")["params"] for i in ("auto", "ref"))
    for k in ref:
        close(fast[k], ref[k], 1e-8)
    res = {}
    for impl in ("auto", "ref"):
        out = str(tmp_path / f"r-{impl}.h5")
        code, text = run_cli(["localopt", str(tmp_path / "auto.h5"), "--q", q, "--n", "6", "--split", "train",
                              "--max-steps", "20", "--check-every", "10", "--samples", "5",
                              "--final-samples", "20", "--dtype", "float64", "--impl", impl, "--out", out])
        assert code == 0, text
        assert bool(calls) == (impl == "auto")
        calls.clear()
        res[impl] = io.load_results(out, f"localopt_{q}")[0]
    close(res["auto"]["elbo"], res["ref"]["elbo"], 1e-8)


@pytest.mark.parametrize("q", ["flow", "fullcov"])
def test_fused_qstar_does_not_depend_on_block(tmp_path, q):
    cfg, _, params, x, _ = flow_model(n=5)
    from minivae.model import model
    cfg = cfg.replace(q=q, dtype="float32")
    params = {k: v.astype(np.float32) for k, v in model.init_params(cfg, np.random.default_rng(3)).items()}
    x = x[:5].astype(np.float32)
    assert localopt._fast_gradient(params, cfg, get_family(cfg), x, 6) is not None
    s = dict(max_steps=60, samples=6, lr=0.02, check_every=10, patience=2, final_samples=30, seed=4)
    a = localopt.run(params, cfg, x, q, tmp_path / "a.h5", {**s, "block": 5}, progress=False)
    b = localopt.run(params, cfg, x, q, tmp_path / "b.h5", {**s, "block": 2}, progress=False)
    for k in ("elbo", "steps", "trace"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
