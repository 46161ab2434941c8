"""Runs the CUDA twins under the simulator in a process of their own: NUMBA_ENABLE_CUDASIM
must be set before numba.cuda is first imported, which this process has already done."""
import os
import subprocess
import sys
from pathlib import Path


def test_cuda_kernels_under_the_simulator():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                          str(root / "tests" / "test_kernels_cuda.py")],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
