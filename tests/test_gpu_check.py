"""benchmarks/gpu_check.sh, checked without a GPU: valid bash, and its dry run lists every step
(the gpu-marked tests, the CUDA kernels on hardware, each benchmark with --device gpu)."""
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_gpu_check_parses_and_its_dry_run_lists_every_step(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    out = tmp_path / "gpu-out"
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, OUT=str(out)))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "-m pytest -m gpu" in run.stdout and f"--junitxml={out}/pytest-gpu.xml" in run.stdout
    # helpers, the CPU peers, CPU scale-out, the CPU profile of np.matmul
    cpu_only = ("common.py", "compare.py", "scaling.py", "products_share.py")
    benches = [p.name for p in (REPO / "benchmarks").glob("*.py") if p.name not in cpu_only]
    for bench in benches:
        assert f"benchmarks/{bench} --device gpu" in run.stdout, bench
    assert not out.exists()  # a dry run only prints
