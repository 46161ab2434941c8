import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kernels import _dispatch
from minivae import data
from minivae.testing.kernels import cuda_usable

# Tests find the shared datasets relative to the repo (../shared/data), never an absolute path.
os.environ.setdefault("MINIVAE_DATA", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
os.environ.setdefault("MINIVAE_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
DATA = REPO / os.environ["MINIVAE_DATA"]  # relative to the repo, as .ci/run sets it; absolute wins


def dataset_files(prefix):
    """The checksummed dataset files under $MINIVAE_DATA/prefix (e.g. "mnist/": LeCun's 4 idx files)."""
    from minivae import data
    return [rel for rel in data.MD5 if rel.startswith(prefix)]


def needs_data(*rels):
    """Mark a test that reads the dataset files `rels` (paths under $MINIVAE_DATA): a fresh
    machine without them skips it, naming what is absent, rather than failing it."""
    missing = [rel for rel in rels if not (DATA / rel).is_file()]
    return pytest.mark.skipif(bool(missing), reason=f"dataset files not in {DATA}: {', '.join(missing)}"
                              + " (set MINIVAE_DATA)")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def run_cli(args):
    """(exit code, output) of `minivae ARGS` run in-process."""
    import cli
    result = CliRunner().invoke(cli.main, args)
    return result.exit_code, result.output


def tiny_model_file(folder, dtype="float32"):
    """A small untrained checkpoint for the embedded MNIST (latent 2, one hidden layer each)."""
    from minivae import io
    from minivae.model import model
    from minivae.model.config import Config
    cfg = Config(latent=2, enc_hidden=8, dec_hidden=8, enc_layers=1, dec_layers=1, dtype=dtype)
    path = folder / "tiny.h5"
    io.save_checkpoint(path, model.init_params(cfg, np.random.default_rng(0)), cfg)
    return str(path)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("ck"))


# --- CIFAR-10 on tiny batches in the real format (the real files are not on this machine) ---

CIFAR_NAMES = data.CIFAR_BATCHES + ("test_batch",)


def cifar_batch(i, n=20):
    """A batch dict as in the real python version (bytes keys, uint8 (n, 3072), list labels)."""
    x = np.random.default_rng(i).integers(0, 256, (n, 3072), dtype=np.uint8)
    return {b"batch_label": b"batch %d" % i, b"labels": [int(v) for v in x[:, 0] % 10],
            b"data": x, b"filenames": [b"img_%d_%d.png" % (i, j) for j in range(n)]}


def write_cifar_tar(path, batches):
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            raw = batch if isinstance(batch, bytes) else pickle.dumps(batch, protocol=2)
            member = tarfile.TarInfo(f"{data.CIFAR_DIR}/{name}")
            member.size = len(raw)
            tar.addfile(member, io.BytesIO(raw))
    return path


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    """A tiny CIFAR tarball in tmp_path: 20 images per batch, 5 of them valid."""
    monkeypatch.setattr(data, "CIFAR_VALID_SIZE", 5)
    batches = {name: cifar_batch(i) for i, name in enumerate(CIFAR_NAMES)}
    write_cifar_tar(tmp_path / data.CIFAR_TAR, batches)
    return {name: b[b"data"] for name, b in batches.items()}


def interrupt_after(m):
    """A stages runner that saves m blocks, then raises KeyboardInterrupt as Ctrl-C would
    while the next block is computing."""
    from minivae import stages

    def runner(fn, shared, work, progress):
        for j, done in enumerate(stages.in_process(fn, shared, work, progress)):
            if j == m:
                raise KeyboardInterrupt
            yield done
    return runner


@pytest.fixture
def small_launch(monkeypatch):
    """A small CUDA block and grid, so that grid-stride loops and block reductions wrap."""
    monkeypatch.setattr(_dispatch, "BLOCK", 8)
    monkeypatch.setattr(_dispatch, "MAX_GRID", 3)


def cuda_twin(test):
    """Mark a test of CUDA twins: marker `cuda`, the small launch shape (small_launch), skipped
    where neither the simulator nor a GPU is there (tests/test_kernel_dispatch.py runs them
    under the simulator in a process of its own)."""
    for mark in (pytest.mark.cuda, pytest.mark.usefixtures("small_launch"),
                 pytest.mark.skipif(not cuda_usable(), reason="no CUDA GPU; run under NUMBA_ENABLE_CUDASIM=1")):
        test = mark(test)
    return test
