"""Datasets: registry, loaders, static binarization, checksums and download.

`load(name, split)` returns one split as uint8 (N, D), rows in file order:
- "mnist": Larochelle & Murray's binarized MNIST, embedded in the package (50k/10k/10k).
- "mnist-idx": LeCun's MNIST binarized here; train = first 50k of the 60k training images,
  valid = the last 10k, test = the 10k test images.
- "mnist-gray": LeCun's MNIST not binarized, float32 intensity / 256 (the values of the
  deeplearning.net `mnist.pkl`, which the authors' `loader.py` reads), the mnist-idx splits;
  with the Bernoulli likelihood log p(x) is then minus a cross-entropy (an experiment on what
  the authors' models were trained on, not a density of binary images).
- "fashion": Fashion-MNIST as the authors binarized it (lxuechen/inference-suboptimality,
  `loader.py`): pixel = (intensity / 255 >= 0.5), i.e. intensity >= 128, deterministic;
  train = the first 55k training images, valid = the last 5k, test = t10k.
- "fashion-stochastic": Fashion-MNIST binarized stochastically here (minivae 0.1's "fashion");
  valid = the 10k training rows `split_indices(60000, 10000)[1]`, train = the other 50k.
- "cifar10": CIFAR-10 python version, raw 0..255, D = 3072 in (channel, row, column) order;
  train = data_batch_1..5 less the last CIFAR_VALID_SIZE rows of data_batch_5, valid = those.

BINARIZE_SEED = 1234: pixel = (u < intensity / 255), u = default_rng(BINARIZE_SEED).random(shape),
    one stream per idx file (all 60k training images at once, then split).
SPLIT_SEED = 4321: fashion-stochastic valid rows = sorted(default_rng(SPLIT_SEED).permutation(60000)[:10000]).

Files not embedded are looked for under the `data_dir` argument, then $MINIVAE_DATA, then the
user cache ($XDG_CACHE_HOME/minivae or ~/.cache/minivae); one found nowhere is downloaded into
the cache unless allow_download=False or MINIVAE_OFFLINE=1. Every file's md5 is checked before
use; verify=False skips that (tests and hand-made files only; format checks still run).
"""

import codecs
import gzip
import hashlib
import http.client
import io
import os
import pickle
import shutil
import tarfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from minivae.errors import DataError
from minivae.io import atomic_path

BINARIZE_SEED = 1234
SPLIT_SEED = 4321
N_VALID = 10000  # MNIST and fashion-stochastic validation rows
FASHION_VALID = 5000  # the authors' Fashion-MNIST: the last 5k of the 60k training images
THRESHOLD = 128  # the authors' Fashion-MNIST: pixel = intensity / 255 >= 0.5
CIFAR_VALID_SIZE = 5000
DOWNLOAD_TIMEOUT = 10  # seconds per connection attempt
_CHUNK_ROWS = 10000  # binarize 10k rows at a time: 63 MB of float64 uniforms, not 376 MB
EMBEDDED = Path(__file__).parent / "embedded"
DATASETS = ("mnist", "mnist-idx", "mnist-gray", "fashion", "fashion-stochastic", "cifar10")
SPLITS = ("train", "valid", "test")

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TAR = "cifar-10-python.tar.gz"
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))

# Known md5s, keyed by path relative to a data dir (amat: relative to EMBEDDED).
MD5 = {
    "binarized_mnist_train.amat.gz": "55c6be0db63f47a228822edc21049d6f",
    "binarized_mnist_valid.amat.gz": "bf325c5893052cb8b540dfeb3c0c6fbe",
    "binarized_mnist_test.amat.gz": "f7f18e7c5d551792f6aab10d62a7ea74",
    "mnist/train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "mnist/train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "mnist/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "mnist/t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "fashion-mnist/train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "fashion-mnist/train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "fashion-mnist/t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    CIFAR_TAR: "c58f30108f718f92721af3b95e74349a",
    f"{CIFAR_DIR}/data_batch_1": "c99cafc152244af753f735de768cd75f",
    f"{CIFAR_DIR}/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    f"{CIFAR_DIR}/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    f"{CIFAR_DIR}/data_batch_4": "634d18415352ddfa80567beed471001a",
    f"{CIFAR_DIR}/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    f"{CIFAR_DIR}/test_batch": "40351d587109b95175f43aff81a1287e",
}
AMAT_ROWS = {"train": 50000, "valid": 10000, "test": 10000}
AMAT_LINE = 1568  # 784 digits, 783 spaces, one newline

# Canonical homes first; the ossci mirror because LeCun's page often refuses scripts.
MIRRORS = {
    "mnist": ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "": ("https://www.cs.toronto.edu/~kriz/",),
}

_MNIST_LIKE = dict(D=784, image_shape=(1, 28, 28), likelihood="bernoulli", binarized=True,
                   splits={"train": 50000, "valid": 10000, "test": 10000})
_INFO = {"mnist": _MNIST_LIKE, "mnist-idx": _MNIST_LIKE, "fashion-stochastic": _MNIST_LIKE,
         "mnist-gray": dict(_MNIST_LIKE, binarized=False),
         "fashion": dict(_MNIST_LIKE, splits={"train": 55000, "valid": 5000, "test": 10000}),
         "cifar10": dict(D=3072, image_shape=(3, 32, 32), likelihood="logistic", binarized=False,
                         splits={"train": 45000, "valid": 5000, "test": 10000})}


def info(name):
    """Static facts about a dataset: D, image_shape (C, H, W), likelihood, split sizes."""
    _check_choice(name, "train")
    out = dict(_INFO[name], name=name)
    out["splits"] = dict(out["splits"])
    return out


def load(name, split, data_dir=None, allow_download=True, verify=True):
    """One split of a dataset: uint8 (N, D), 0/1 for binarized sets, 0..255 for cifar10;
    float32 intensity / 256 for mnist-gray.

    verify=False skips the md5 checks (tests, hand-made files); the format checks still run.
    """
    _check_choice(name, split)
    if name == "mnist":
        return _load_amat(split, verify)
    if name == "cifar10":
        return _load_cifar(split, data_dir, allow_download, verify)
    sub = "mnist" if name.startswith("mnist-") else "fashion-mnist"
    fname = "t10k-images-idx3-ubyte.gz" if split == "test" else "train-images-idx3-ubyte.gz"
    rel = f"{sub}/{fname}"
    images = read_idx(_locate((rel,), data_dir, allow_download), MD5[rel] if verify else None)
    x = {"fashion": threshold, "mnist-gray": gray}.get(name, binarize)(images)
    if split == "test":
        return x
    if name != "fashion-stochastic":
        n_valid = FASHION_VALID if name == "fashion" else N_VALID
        return x[:-n_valid] if split == "train" else x[-n_valid:]
    train_idx, valid_idx = split_indices(len(x), N_VALID)
    return x[train_idx] if split == "train" else x[valid_idx]


def to_float(x, likelihood, dtype, xp=np):
    """Rows of a split as the model sees them, (N, D) in `dtype` on xp's device: 0/1 as they are;
    uint8 pixels of the discretized logistic (cifar10) as k / 256, the lower edges of its
    256 bins of width 1/256 (exact in float32). Float input passes through unscaled."""
    dtype = np.dtype(dtype)
    if likelihood == "logistic" and x.dtype == np.uint8:
        return xp.asarray(x, dtype=dtype) * dtype.type(1 / 256)
    return xp.asarray(x, dtype=dtype)


def binarize(images, seed=BINARIZE_SEED):
    """Static binarization: (N, ...) uint8 intensities -> (N, D) uint8, x = (u < pixel / 255).

    u ~ U[0, 1) comes from one generator stream over all pixels in row-major order; it is
    drawn in row chunks only to bound memory (same numbers as one `rng.random(shape)`).
    """
    x = images.reshape(len(images), -1)  # (N, D)
    out = np.empty(x.shape, np.uint8)
    rng = np.random.default_rng(seed)
    for i in range(0, len(x), _CHUNK_ROWS):
        rows = slice(i, i + _CHUNK_ROWS)
        np.less(rng.random(x[rows].shape), x[rows] / 255.0, out=out[rows])
    return out


def gray(images):
    """Intensities as floats: (N, ...) uint8 -> (N, D) float32 k / 256, in [0, 255/256], as in the
    deeplearning.net `mnist.pkl` (exact in float32)."""
    return images.reshape(len(images), -1).astype(np.float32) * np.float32(1 / 256)


def threshold(images):
    """The authors' deterministic binarization: (N, ...) uint8 -> (N, D) uint8, x = (pixel >= 128),
    the same as float32(pixel / 255) >= 0.5."""
    return (images.reshape(len(images), -1) >= THRESHOLD).astype(np.uint8)


def split_indices(n, n_valid, seed=SPLIT_SEED):
    """Fixed train/valid split of range(n): (train_idx (n - n_valid,), valid_idx (n_valid,)), sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def read_idx(path, md5=None):
    """A gzipped IDX file as uint8: (N,) for labels (magic 2049), (N, rows, cols) for images (2051)."""
    path = Path(path)
    raw = _gunzip(path, _read_checked(path, md5))
    ndim = {2049: 1, 2051: 3}.get(int.from_bytes(raw[:4], "big")) if len(raw) >= 4 else None
    if ndim is None:
        raise DataError(f"bad idx file {path}: magic number {raw[:4].hex() or 'missing'} is neither "
                        "2049 (labels) nor 2051 (images); delete it and download again")
    header = 4 + 4 * ndim
    # a cut-off header reads as zeros and then fails the size check
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header].ljust(4 * ndim, b"\0"), ">u4"))
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(f"truncated or bad idx file {path}: {len(raw)} bytes after gunzip, header "
                        f"{dims} needs {header + int(np.prod(dims))}; delete it and download again")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def cache_dir():
    """The per-user cache: $XDG_CACHE_HOME/minivae, else ~/.cache/minivae."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minivae"


def _check_choice(name, split):
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def _read_checked(path, md5):
    """File bytes, after checking their md5 (None: no check)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path} ({_one_line(e)}); check the path and its permissions") from None
    return _check_md5(path, raw, md5)


def _check_md5(label, raw, md5):
    if md5 is not None and (got := hashlib.md5(raw).hexdigest()) != md5:
        raise DataError(f"corrupt file {label}: md5 {got} != expected {md5}; delete it and download again")
    return raw


def _one_line(e):
    return " ".join(str(e).split())


def _gunzip(path, raw):
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"truncated or corrupt gzip file {path} ({_one_line(e)}); "
                        "delete it and download again") from None


def _load_amat(split, verify):
    """Embedded binarized MNIST: lines of 784 '0'/'1' separated by spaces -> (N, 784) uint8."""
    name = f"binarized_mnist_{split}.amat.gz"
    path = EMBEDDED / name
    if not path.is_file():
        raise DataError(f"missing embedded file {path}; reinstall minivae")
    raw = _gunzip(path, _read_checked(path, MD5[name] if verify else None))
    rows = AMAT_ROWS[split]
    if len(raw) != rows * AMAT_LINE:
        raise DataError(f"bad amat file {path}: {len(raw)} bytes after gunzip, expected "
                        f"{rows} lines of {AMAT_LINE}; reinstall minivae")
    x = (np.frombuffer(raw, np.uint8)[::2] - ord("0")).reshape(rows, 784)  # (N, D)
    if x.max() > 1:  # uint8 wraps anything below '0' too
        raise DataError(f"bad amat file {path}: a value is not 0 or 1; reinstall minivae")
    return x


def _roots(data_dir):
    """(label, Path) of each place to look, in order."""
    roots = []
    if data_dir is not None:
        roots.append(("--data-dir", Path(data_dir)))
    if os.environ.get("MINIVAE_DATA"):
        roots.append(("$MINIVAE_DATA", Path(os.environ["MINIVAE_DATA"])))
    return roots + [("cache", cache_dir())]


def _locate(rels, data_dir, allow_download):
    """First existing root/rel over roots x alternatives rels; else download rels[-1] into the cache."""
    roots = _roots(data_dir)
    for _, root in roots:
        for rel in rels:
            if (root / rel).exists():
                return root / rel
    where = ", ".join(f"{label} {_shown(root)}" for label, root in roots)
    if not allow_download or os.environ.get("MINIVAE_OFFLINE", "") not in ("", "0"):
        why = "downloads disabled (allow_download=False or MINIVAE_OFFLINE=1)"
    else:
        dest = cache_dir() / rels[-1]
        failures = _download(rels[-1], dest)
        if not failures:
            return dest
        why = "download failed (" + "; ".join(failures) + ")"
    raise DataError(f"missing {' or '.join(rels)}: looked in {where}; {why}; "
                    "place the file there or pass --data-dir")


def _shown(path):
    """path for a message: ~/... under the home folder (the same on every machine), else as given."""
    try:
        return "~/" + Path(path).relative_to(Path.home()).as_posix()
    except ValueError:
        return str(path)


def _download(rel, dest):
    """Fetch rel into dest via a temp file renamed in once its md5 matches: [] or 'url: why' per mirror."""
    sub, _, fname = rel.rpartition("/")
    failures = []
    for base in MIRRORS[sub]:
        url = base + fname
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dest) as tmp:            # the umask's permissions, no partial file left
                with open(tmp, "wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as r:
                    shutil.copyfileobj(r, f)
                if (got := hashlib.md5(Path(tmp).read_bytes()).hexdigest()) != MD5[rel]:
                    raise ValueError(f"md5 {got} != expected {MD5[rel]}")
            return []
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts are OSError
            failures.append(f"{url}: {_one_line(e)}")
    return failures


def _load_cifar(split, data_dir, allow_download, verify):
    """CIFAR-10 rows, uint8 (N, 3072), from the extracted folder or the tarball."""
    names = {"train": CIFAR_BATCHES, "valid": CIFAR_BATCHES[-1:], "test": ("test_batch",)}[split]
    where = _locate((CIFAR_DIR, CIFAR_TAR), data_dir, allow_download)
    blobs = _cifar_from_dir(where, names) if where.is_dir() else _cifar_from_tar(where, names, verify)
    x = np.concatenate([_unpickle_batch(where, n, blobs[n], verify) for n in names])  # (N, D)
    if split == "train":
        return x[:-CIFAR_VALID_SIZE]
    return x[-CIFAR_VALID_SIZE:] if split == "valid" else x


def _cifar_from_dir(folder, names):
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"missing {folder / missing[0]}; extract {CIFAR_TAR} again into {folder.parent}")
    return {n: (folder / n).read_bytes() for n in names}


def _cifar_from_tar(path, names, verify):
    """Batch files out of the tarball, in one pass (a .tar.gz cannot seek backwards cheaply)."""
    raw = _read_checked(path, MD5[CIFAR_TAR] if verify else None)
    blobs = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for member in tar:
                name = member.name.removeprefix(f"{CIFAR_DIR}/")
                if name in names and member.isfile():
                    blobs[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"truncated or corrupt tarball {path} ({_one_line(e)}); "
                        "delete it and download again") from None
    missing = [n for n in names if n not in blobs]
    if missing:
        raise DataError(f"bad tarball {path}: no {CIFAR_DIR}/{missing[0]} in it; "
                        "delete it and download again")
    return blobs


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle can run any code otherwise."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
                ("numpy._core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
                ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                ("_codecs", "encode"): codecs.encode}  # Python 3 writes bytes this way in protocol 2

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return self._ALLOWED[module, name]


def _unpickle_batch(where, name, blob, verify):
    """One CIFAR batch pickle {b'data': uint8 (N, 3072), b'labels': [N]} -> (N, 3072)."""
    label = f"{where}:{name}" if where.is_file() else where / name
    _check_md5(label, blob, MD5[f"{CIFAR_DIR}/{name}"] if verify else None)
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
        x, n_labels = np.asarray(batch[b"data"]), len(batch[b"labels"])
    except Exception as e:  # a damaged pickle can raise almost anything
        raise DataError(f"corrupt CIFAR batch {label} ({type(e).__name__}: {_one_line(e)}); "
                        "delete it and download again") from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or n_labels != len(x):
        raise DataError(f"bad CIFAR batch {label}: data {x.dtype} {x.shape} with {n_labels} labels, "
                        "expected uint8 (N, 3072) and N labels; delete it and download again")
    return x
