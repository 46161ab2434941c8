"""Dataset loaders: embedded binarized MNIST, idx binarization, checksums, lookup, CIFAR format.

The real MNIST / Fashion-MNIST files come from $MINIVAE_DATA (.ci/run sets it to
../shared/data), else from ../shared/data next to the repo; tests that need them skip when they
are absent. CIFAR-10 is not available, so its loader is tested on tiny batches written in the
real format. No test touches the network.
"""

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from minivae import data
from minivae.errors import DataError

from conftest import DATA, cifar_batch, dataset_files, needs_data, write_cifar_tar

T10K = "t10k-images-idx3-ubyte.gz"
MNIST_IDX = dataset_files("mnist/")          # the 4 idx files
FASHION = dataset_files("fashion-mnist/")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No network, no real user cache, no lookup outside what each test passes."""
    monkeypatch.setenv("MINIVAE_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MINIVAE_DATA", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def copy_in(tmp_path, rel):
    """Copy one real data file to tmp_path/rel; returns its path."""
    dest = tmp_path / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / rel, dest)
    return dest


def flip(raw):
    """raw with one bit of its middle byte flipped."""
    raw = bytearray(raw)
    raw[len(raw) // 2] ^= 1
    return bytes(raw)


def write_gz(path, raw):
    path.write_bytes(gzip.compress(raw))
    return path


# --- embedded binarized MNIST -------------------------------------------------------------

@pytest.mark.parametrize("split, n, mean", [("train", 50000, 0.131), ("valid", 10000, 0.131),
                                            ("test", 10000, 0.133)])
def test_embedded_mnist(split, n, mean):
    x = data.load("mnist", split)
    assert x.dtype == np.uint8 and x.shape == (n, 784)
    assert set(np.unique(x)) == {0, 1}
    assert abs(x.mean() - mean) < 1e-3  # README: 0.131, 0.131, 0.133
    first = gzip.open(data.EMBEDDED / f"binarized_mnist_{split}.amat.gz", "rt").readline()
    assert x[0].tolist() == [int(v) for v in first.split()]  # the vectorised parse, by hand


@needs_data(*MNIST_IDX, *FASHION)
def test_md5_table_matches_the_real_files():
    files = {rel: DATA / rel for rel in data.MD5 if (DATA / rel).is_file()}
    files.update({rel: data.EMBEDDED / rel for rel in data.MD5 if rel.startswith("binarized_mnist")})
    assert len(files) == 11  # 8 idx + 3 embedded; CIFAR is not on this machine
    for rel, path in files.items():
        assert hashlib.md5(path.read_bytes()).hexdigest() == data.MD5[rel], rel


def test_embedded_format_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "EMBEDDED", tmp_path)
    monkeypatch.setattr(data, "AMAT_ROWS", {"test": 2})
    line = " ".join("01"[i % 2] for i in range(784)) + "\n"
    path = write_gz(tmp_path / "binarized_mnist_test.amat.gz", (line * 2).encode())
    x = data.load("mnist", "test", verify=False)
    assert x.shape == (2, 784) and x[:, :4].tolist() == [[0, 1, 0, 1]] * 2
    with pytest.raises(DataError, match="corrupt file .*md5"):
        data.load("mnist", "test")
    write_gz(path, (line + line.replace("1", "2", 1)).encode())
    with pytest.raises(DataError, match="not 0 or 1"):
        data.load("mnist", "test", verify=False)
    write_gz(path, (line + line[2:]).encode())
    with pytest.raises(DataError, match="expected 2 lines of 1568"):
        data.load("mnist", "test", verify=False)
    path.unlink()
    with pytest.raises(DataError, match="missing embedded file"):
        data.load("mnist", "test")


# --- idx datasets: binarization and splits ------------------------------------------------

def test_binarize_is_one_draw_per_file(monkeypatch):
    monkeypatch.setattr(data, "_CHUNK_ROWS", 7)  # chunks must not change the stream
    images = np.random.default_rng(0).integers(0, 256, (2000, 3, 4), dtype=np.uint8)
    images[:500] = 0
    images[500:1000] = 255
    x = data.binarize(images)
    u = np.random.default_rng(data.BINARIZE_SEED).random((2000, 12))
    assert x.dtype == np.uint8 and x.shape == (2000, 12)
    np.testing.assert_array_equal(x, u < images.reshape(2000, 12) / 255.0)
    assert not x[:500].any() and x[500:1000].all()
    assert abs(x[1000:].mean() - images[1000:].mean() / 255) < 0.01


@pytest.mark.parametrize("name, sub, mean, sizes", [
    pytest.param("mnist-idx", "mnist", 0.131, (50000, 10000), marks=needs_data(*MNIST_IDX)),
    pytest.param("fashion", "fashion-mnist", 0.314, (55000, 5000), marks=needs_data(*FASHION)),
    pytest.param("fashion-stochastic", "fashion-mnist", 0.286, (50000, 10000), marks=needs_data(*FASHION))])
def test_idx_sets(name, sub, mean, sizes):
    sizes = {"train": sizes[0], "valid": sizes[1], "test": 10000}
    x = {split: data.load(name, split, data_dir=DATA) for split in sizes}
    for split, n in sizes.items():
        assert x[split].dtype == np.uint8 and x[split].shape == (n, 784)
        assert set(np.unique(x[split])) == {0, 1}
        assert abs(x[split].mean() - mean) < 5e-3
    assert data.info(name)["splits"] == sizes
    np.testing.assert_array_equal(x["test"], data.load(name, "test", data_dir=DATA))  # deterministic
    # train and valid: one binarization of the whole 60k file, then disjoint index sets
    images = data.read_idx(DATA / sub / "train-images-idx3-ubyte.gz")             # (60000, 28, 28)
    if name == "fashion":   # the authors' loader.py: float32(x / 255) >= 0.5, first 55k / last 5k
        full = (np.float32(images / 255.0) >= 0.5).reshape(60000, 784)
    else:
        full = data.binarize(images)
    if name == "fashion-stochastic":
        train_idx, valid_idx = data.split_indices(60000, 10000)
        assert np.array_equal(valid_idx, np.sort(
            np.random.default_rng(data.SPLIT_SEED).permutation(60000)[:10000]))
    else:
        train_idx, valid_idx = np.arange(sizes["train"]), np.arange(sizes["train"], 60000)
    assert not np.intersect1d(train_idx, valid_idx).size
    assert np.array_equal(np.union1d(train_idx, valid_idx), np.arange(60000))
    np.testing.assert_array_equal(x["train"], full[train_idx])
    np.testing.assert_array_equal(x["valid"], full[valid_idx])


@needs_data(*MNIST_IDX)
def test_mnist_gray_is_the_pickles_values_on_the_idx_splits():
    """mnist-gray: float32 intensity / 256 (deeplearning.net's mnist.pkl), rows as in mnist-idx."""
    images = data.read_idx(DATA / "mnist" / "train-images-idx3-ubyte.gz").reshape(60000, 784)
    train, valid = (data.load("mnist-gray", s, data_dir=DATA) for s in ("train", "valid"))
    assert train.dtype == np.float32 and train.shape == (50000, 784) and valid.shape == (10000, 784)
    np.testing.assert_array_equal(np.concatenate([train, valid]) * 256, images)
    assert train.max() == np.float32(255 / 256) and not data.info("mnist-gray")["binarized"]
    # the bits mnist-idx draws come from the same images, in the same order
    assert abs(data.load("mnist-idx", "valid", data_dir=DATA).mean() - valid.mean() * 256 / 255) < 5e-3


@needs_data(*FASHION)
def test_a_checkpoint_of_minivae_0_1_keeps_its_fashion_data(tmp_path):
    """minivae 0.1's "fashion" was binarized stochastically: its checkpoints load as fashion-stochastic."""
    import h5py
    from minivae import io
    from minivae.model.config import Config
    from minivae.model.model import init_params
    cfg = Config(dataset="fashion", latent=2, enc_hidden=4, dec_hidden=4)
    io.save_checkpoint(tmp_path / "m.h5", init_params(cfg, np.random.default_rng(0)), cfg)
    assert io.load_checkpoint(tmp_path / "m.h5")["config"].dataset == "fashion"
    with h5py.File(tmp_path / "m.h5", "a") as f:
        f.attrs["version"] = "0.1.0"
    assert io.load_checkpoint(tmp_path / "m.h5")["config"].dataset == "fashion-stochastic"


def test_fashion_valid_is_not_a_contiguous_block():
    _, valid_idx = data.split_indices(60000, 10000)
    assert valid_idx.min() < 1000 and valid_idx.max() > 59000


# --- lookup, download, errors -------------------------------------------------------------

def test_missing_file_names_it_and_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as e:
        data.load("mnist-idx", "test", data_dir=tmp_path / "empty")
    msg = str(e.value)
    assert f"mnist/{T10K}" in msg and "\n" not in msg
    for place in (tmp_path / "empty", tmp_path / "env", tmp_path / "xdg" / "minivae"):
        assert str(place) in msg
    assert "downloads disabled" in msg


def test_a_place_under_home_is_named_from_home(tmp_path, monkeypatch):
    """The message (and so any log that keeps it) names no machine's home folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME")          # set by the autouse `offline`, as MINIVAE_DATA is unset
    with pytest.raises(DataError) as e:
        data.load("mnist-idx", "test")
    msg = str(e.value)
    assert "looked in cache ~/.cache/minivae;" in msg and str(tmp_path) not in msg


@needs_data(f"mnist/{T10K}")
def test_env_data_dir_and_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVAE_DATA", str(DATA))
    assert data.load("mnist-idx", "test").shape == (10000, 784)
    bad = copy_in(tmp_path, f"mnist/{T10K}")
    bad.write_bytes(flip(bad.read_bytes()))
    with pytest.raises(DataError, match="corrupt file"):  # --data-dir is looked at first
        data.load("mnist-idx", "test", data_dir=tmp_path)


def fake_urlopen(payload, calls):
    def urlopen(url, timeout):
        calls.append((url, timeout))
        if payload is None:
            raise urllib.error.URLError("no network")
        return io.BytesIO(payload)
    return urlopen


@needs_data(f"mnist/{T10K}")
def test_download_lands_in_cache_only_when_md5_matches(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIVAE_OFFLINE")
    cache = tmp_path / "xdg" / "minivae" / "mnist"
    good = (DATA / "mnist" / T10K).read_bytes()
    for payload in (None, flip(good)):
        calls = []
        monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(payload, calls))
        with pytest.raises(DataError, match="download failed") as e:
            data.load("mnist-idx", "test", data_dir=tmp_path / "empty")
        assert [u for u, _ in calls] == [m + T10K for m in data.MIRRORS["mnist"]]
        assert all(t <= 30 for _, t in calls) and "\n" not in str(e.value)
        assert not cache.exists() or not any(cache.iterdir())  # nothing half-written left
    calls = []
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(good, calls))
    x = data.load("mnist-idx", "test", data_dir=tmp_path / "empty")
    assert [p.name for p in cache.iterdir()] == [T10K] and len(calls) == 1
    np.testing.assert_array_equal(x, data.load("mnist-idx", "test", data_dir=DATA))


def test_allow_download_false_never_downloads(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIVAE_OFFLINE")  # the autouse urlopen still fails any call
    with pytest.raises(DataError, match="downloads disabled"):
        data.load("fashion", "test", data_dir=tmp_path, allow_download=False)


@needs_data(f"fashion-mnist/{T10K}")
def test_flipped_byte_fails_md5(tmp_path):
    path = copy_in(tmp_path, f"fashion-mnist/{T10K}")
    path.write_bytes(flip(path.read_bytes()))
    with pytest.raises(DataError, match="corrupt file .*md5") as e:
        data.load("fashion", "test", data_dir=tmp_path)
    assert str(path) in str(e.value)


@needs_data("mnist/t10k-labels-idx1-ubyte.gz", f"mnist/{T10K}")
def test_truncated_gzip(tmp_path):
    path = copy_in(tmp_path, "mnist/t10k-labels-idx1-ubyte.gz")
    assert data.read_idx(path, data.MD5["mnist/t10k-labels-idx1-ubyte.gz"]).shape == (10000,)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match="truncated or corrupt gzip") as e:
        data.read_idx(path)
    assert str(path) in str(e.value)
    images = copy_in(tmp_path, f"mnist/{T10K}")
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="gzip"):
        data.load("mnist-idx", "test", data_dir=tmp_path, verify=False)
    with pytest.raises(DataError, match="md5"):
        data.load("mnist-idx", "test", data_dir=tmp_path)


def test_idx_format_checks(tmp_path):
    with pytest.raises(DataError, match="cannot read .*nothing.gz"):
        data.read_idx(tmp_path / "nothing.gz")
    pixels = bytes(range(12))
    x = data.read_idx(write_gz(tmp_path / "ok.gz", struct.pack(">4I", 2051, 3, 2, 2) + pixels))
    assert x.shape == (3, 2, 2) and x.ravel().tolist() == list(pixels)
    y = data.read_idx(write_gz(tmp_path / "labels.gz", struct.pack(">2I", 2049, 3) + b"\1\2\3"))
    assert y.tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="magic number 00000802"):
        data.read_idx(write_gz(tmp_path / "magic.gz", struct.pack(">4I", 2050, 3, 2, 2) + pixels))
    for name, raw in [("short", pixels[:-1]), ("long", pixels + b"\0"), ("header", b"")]:
        header = struct.pack(">2I", 2051, 3) + (b"" if name == "header" else struct.pack(">2I", 2, 2))
        with pytest.raises(DataError, match="truncated or bad idx file .* needs"):
            data.read_idx(write_gz(tmp_path / f"{name}.gz", header + raw))


def test_unknown_name_or_split():
    with pytest.raises(DataError, match="unknown dataset 'svhn'; choose one of mnist, mnist-idx"):
        data.load("svhn", "train")
    with pytest.raises(DataError, match="unknown split 'val'; choose one of train, valid, test"):
        data.load("mnist", "val")
    with pytest.raises(DataError, match="unknown dataset"):
        data.info("svhn")


def test_info():
    assert data.info("mnist")["D"] == 784 and data.info("mnist")["likelihood"] == "bernoulli"
    cifar = data.info("cifar10")
    assert cifar["D"] == 3072 == int(np.prod(cifar["image_shape"])) and cifar["likelihood"] == "logistic"
    assert cifar["splits"] == {"train": 45000, "valid": 5000, "test": 10000}
    cifar["splits"]["train"] = 0  # a caller's edit must not leak into the registry
    assert data.info("cifar10")["splits"]["train"] == 45000


# --- CIFAR-10 on tiny batches in the real format ------------------------------------------

@pytest.mark.parametrize("extracted", [False, True])
def test_cifar_splits(tmp_path, cifar, extracted):
    if extracted:
        with tarfile.open(tmp_path / data.CIFAR_TAR) as tar:
            tar.extractall(tmp_path, filter="data")
        (tmp_path / data.CIFAR_TAR).unlink()
    train = data.load("cifar10", "train", data_dir=tmp_path, verify=False)
    valid = data.load("cifar10", "valid", data_dir=tmp_path, verify=False)
    test = data.load("cifar10", "test", data_dir=tmp_path, verify=False)
    assert train.dtype == valid.dtype == test.dtype == np.uint8
    assert train.shape == (95, 3072) and valid.shape == (5, 3072) and test.shape == (20, 3072)
    np.testing.assert_array_equal(train, np.concatenate([cifar[n] for n in data.CIFAR_BATCHES])[:-5])
    np.testing.assert_array_equal(valid, cifar["data_batch_5"][-5:])
    np.testing.assert_array_equal(test, cifar["test_batch"])
    with pytest.raises(DataError, match="corrupt file .*md5"):  # verify stays on by default
        data.load("cifar10", "test", data_dir=tmp_path)


def test_cifar_broken_tarball(tmp_path, cifar):
    path = tmp_path / data.CIFAR_TAR
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="truncated or corrupt tarball"):
        data.load("cifar10", "test", data_dir=tmp_path, verify=False)
    write_cifar_tar(path, {"test_batch": pickle.dumps(cifar_batch(0), protocol=2)})
    with pytest.raises(DataError, match="no cifar-10-batches-py/data_batch_1 in it"):
        data.load("cifar10", "train", data_dir=tmp_path, verify=False)


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def test_cifar_bad_pickles(tmp_path):
    evil = pickle.dumps({b"data": Evil(tmp_path / "pwned"), b"labels": []}, protocol=2)
    wrong = cifar_batch(0)
    wrong[b"labels"] = wrong[b"labels"][:-1]
    write_cifar_tar(tmp_path / data.CIFAR_TAR, {"test_batch": evil, "data_batch_5": wrong})
    with pytest.raises(DataError, match="refusing to load .*mkdir"):
        data.load("cifar10", "test", data_dir=tmp_path, verify=False)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(DataError, match=r"bad CIFAR batch .*\(20, 3072\) with 19 labels"):
        data.load("cifar10", "valid", data_dir=tmp_path, verify=False)


def test_cifar_missing(tmp_path):
    (tmp_path / data.CIFAR_DIR).mkdir()
    with pytest.raises(DataError, match="missing .*data_batch_1; extract"):
        data.load("cifar10", "train", data_dir=tmp_path)
    with pytest.raises(DataError, match="missing cifar-10-batches-py or cifar-10-python.tar.gz"):
        data.load("cifar10", "train", data_dir=tmp_path / "nothing")


def test_without_the_datasets_this_file_skips_never_fails(tmp_path):
    """A fresh machine has only the embedded MNIST: the idx tests must skip with a reason."""
    env = dict(os.environ, MINIVAE_DATA=str(tmp_path))  # an empty data directory
    me = "tests/test_data.py::test_without_the_datasets_this_file_skips_never_fails"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "tests/test_data.py", "--deselect", me],
                         cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " skipped" in run.stdout and "dataset files not in" in run.stdout
