"""What a new user on a fresh machine runs: the README's two quick-start commands, the same line
in .ci/run (in a new virtual environment), and a package that declares everything it imports."""
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALSO_INSTALLED = {"llvmlite": "numba"}  # pulled in by a declared dependency


def quick_start():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start\n.*?```bash\n(.*?)```", readme, re.S).group(1)
    return [re.sub(r"\s+#.*$", "", line) for line in block.strip().splitlines()]


def test_quick_start_is_two_commands_each_installing_what_it_needs():
    run, tests = quick_start()
    assert run.startswith("pip install -e . && minivae train ")
    assert tests.startswith("pip install -e '.[test]' && ") and "python -m pytest -q" in tests


def test_ci_runs_the_readmes_test_line_in_a_new_environment():
    ci = (REPO / ".ci" / "run").read_text()
    assert "mktemp -d" in ci and "python3 -m venv" in ci
    assert "grep -m1 -E \"^pip install -e '\\.\\[test\\]'\" README.md" in ci  # the README's line
    assert '"$rc" -eq 5' in ci and "MINIVAE_OFFLINE=1" in ci and "MINIVAE_DATA" in ci


def test_every_module_level_import_is_a_declared_dependency():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower().replace("-", "_")
                for d in project["dependencies"]}
    assert {"numpy", "numba", "h5py", "click", "tqdm"} <= declared
    test_extra = " ".join(project["optional-dependencies"]["test"])
    assert "pytest" in test_extra and "matplotlib" in test_extra  # reproduce's smoke runs draw figures
    files = [REPO / "cli.py", *(REPO / "minivae").rglob("*.py"), *(REPO / "kernels").glob("*.py")]
    imported = {m.group(1) for f in files
                for m in re.finditer(r"^(?:import|from) ([A-Za-z_]\w*)", f.read_text(), re.M)}
    third_party = imported - set(sys.stdlib_module_names) - {"minivae", "kernels", "cli"}
    missing = {m for m in third_party if m not in declared and ALSO_INSTALLED.get(m) not in declared}
    assert not missing, f"imported at module level but not in [project] dependencies: {missing}"
