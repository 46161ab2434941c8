"""The kernels' plumbing: which implementation runs, the CPU thread limit, the one loader, the
CUDA twins under the simulator (in a process of their own: NUMBA_ENABLE_CUDASIM must be set
before numba.cuda is first imported) and compiled to PTX for real hardware."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import kernels
from kernels import _dispatch, adam, ais_weights, bernoulli, elu, leapfrog, reparam, sparse_input
from minivae import backend
from minivae.testing.kernels import DTYPES, SIM, close, nvvm_usable, rng

from test_decoder_fused import bern_inputs

hmc_accept = importlib.import_module("kernels.hmc_accept")  # kernels.hmc_accept is the function
ROOT = Path(__file__).resolve().parents[1]
# the files whose tests marked `cuda` compare each CUDA twin with its reference
CUDA_FILES = ["test_decoder_fused.py", "test_hmc.py", "test_adam.py", "test_train_step.py",
              "test_fused_flow.py"]


def test_dispatch():
    a = np.zeros((2, 2))
    assert _dispatch.pick("auto", a) == "cpu"
    assert _dispatch.pick("ref", a) == "ref"
    with pytest.raises(ValueError, match="impl"):
        _dispatch.pick("gpu", a)
    assert _dispatch.get_xp(a) is np and backend.get_xp is _dispatch.get_xp


def test_one_loader_gives_every_kernel_by_name():
    k = backend.kernels()
    assert k is kernels
    for name in kernels.__all__:
        assert callable(getattr(k, name)), name


@pytest.mark.parametrize("grain", [1, 1 << 40])
def test_cpu_thread_limit_keeps_results_and_restores_the_pool(monkeypatch, grain):
    monkeypatch.setattr(_dispatch, "GRAIN", grain)  # every thread / one thread
    before = numba.get_num_threads()
    a, b, x = bern_inputs(np.float64, n=40)
    g0, g1, l0, l1 = np.empty_like(a), np.empty_like(a), np.empty(120), np.empty(120)
    bernoulli.bernoulli_grad(a, b, x, 3, g0, l0, True, impl="ref")
    bernoulli.bernoulli_grad(a, b, x, 3, g1, l1, True, impl="cpu")
    close(g1, g0, np.float64)
    close(l1, l0, np.float64)
    assert numba.get_num_threads() == before


def test_cpu_skips_the_thread_query_with_one_thread(monkeypatch):
    calls = []
    monkeypatch.setattr(_dispatch.numba, "get_num_threads", lambda: calls.append(1) or 1)
    monkeypatch.setattr(_dispatch.numba.config, "NUMBA_NUM_THREADS", 1)
    assert _dispatch.cpu(lambda a: a + 1, 10, 1) == 2 and calls == []
    monkeypatch.setattr(_dispatch.numba.config, "NUMBA_NUM_THREADS", 2)
    assert _dispatch.cpu(lambda a: a + 1, 10, 1) == 2 and calls


@pytest.mark.skipif(SIM, reason="this is the launcher")
def test_cuda_twins_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                          *(str(ROOT / "tests" / f) for f in CUDA_FILES)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout and "skipped" not in run.stdout


@pytest.mark.skipif(SIM or not nvvm_usable(), reason="libNVVM (CUDA toolkit) not found")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_twins_compile_to_ptx(dtype):
    from numba import cuda
    a, v, b = np.zeros((3, 4), dtype), np.zeros(3, dtype), np.zeros(4, dtype)
    e3, i8, flags = np.zeros((3, 2, 4), dtype), np.zeros(3, np.int8), np.zeros(3, bool)
    cases = [
        (elu._bias_elu_cuda, (a, b, a, a)), (elu._elu_backward_cuda, (a, a, a)),
        (bernoulli._bernoulli_grad_cuda, (a, b, a, 1, a, v, True)),
        (leapfrog._leapfrog_momentum_cuda, (a, a, v, 0.5)),
        (leapfrog._leapfrog_position_cuda, (a, a, v)),
        (leapfrog._leapfrog_momentum_position_cuda, (a, a, a, v)),
        (ais_weights._ais_log_weight_cuda, (v, v, 0.1)),
        (hmc_accept._hmc_accept_cuda, (a, v, a, a, v, a, a, a, v, 0.7, v, i8, flags, 1.01, 0.98, True)),
        (adam._adam_dense_cuda, (v, v, v, v, 0.1, 1e-8, 0.9, 0.999)),
        (adam._adam_rows_cuda, (a, a, a, a, v, v, flags, 0.9, 0.999)),
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


@pytest.mark.gpu
def test_auto_runs_cuda_on_cupy_arrays():
    cp = pytest.importorskip("cupy")
    if SIM:
        pytest.skip("needs real CUDA hardware")
    a = cp.asarray(rng(1).standard_normal((300, 700)))
    b = cp.asarray(rng(1).standard_normal(700))
    assert _dispatch.pick("auto", a) == "cuda"
    y, d = cp.empty_like(a), cp.empty_like(a)
    elu.bias_elu(a, b, y, d)
    y0, d0 = cp.empty_like(a), cp.empty_like(a)
    elu.bias_elu(a, b, y0, d0, impl="ref")
    cp.testing.assert_allclose(y, y0, rtol=1e-12)
    cp.testing.assert_allclose(d, d0, rtol=1e-12)
