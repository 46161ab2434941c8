"""HDF5 checkpoints and results files, written atomically (temp file, then rename).

Checkpoint layout: /params/<key with dots as groups>, /adam/{m,v}/<key>, /curves/<name>;
attributes: kind, version, config (JSON), epoch, adam_t, rng_state (JSON).
Results layout: one group per stage (/iwae, /ais, /localopt_ffg, ...), one row per datapoint.
"""
import contextlib
import json
import os
import tempfile

import h5py
import numpy as np

from . import __version__, pretrained
from .backend import to_numpy
from .model.config import Config
from .errors import CheckpointError
from .model.validate import validate_checkpoint

CHECKPOINT_KIND = "minivae-checkpoint"
RESULTS_KIND = "minivae-results"


def _umask():
    """The process umask. /proc first: os.umask can only be read by setting it, which races
    with other threads creating files."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path next to `path`; move it onto `path` only if the block succeeds."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # named after `path`, so that a run holding its claim can remove a killed run's leftovers
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.tmp-",
                               suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes 0600; give what open(path, "w") would: the old file's mode, else the umask's
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_dict(group, arrays):
    for key, a in arrays.items():
        group.create_dataset(key.replace(".", "/"), data=to_numpy(a))


def _read_dict(group):
    out = {}
    group.visititems(lambda name, obj: out.__setitem__(name.replace("/", "."), obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _open(path, kind, what):
    if not os.path.exists(path):
        raise CheckpointError(f"{what} {path} does not exist: check the path")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise CheckpointError(f"{path} is not a readable HDF5 file (truncated or corrupt?): "
                              f"pass a {what} written by minivae")
    found = f.attrs.get("kind")
    if found != kind:
        f.close()
        raise CheckpointError(f"{path} is not a minivae {what} (kind={found!r}): pass a {what} "
                              "written by minivae")
    return f


def save_checkpoint(path, params, config, epoch=0, adam=None, rng_state=None, curves=None):
    """adam: dict(m=..., v=..., t=int) or None; curves: dict name -> 1-D array."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(kind=CHECKPOINT_KIND, version=__version__, config=config.to_json(),
                       epoch=epoch, rng_state=json.dumps(rng_state or {}))
        _write_dict(f.create_group("params"), params)
        if adam is not None:
            f.attrs["adam_t"] = adam["t"]
            _write_dict(f.create_group("adam/m"), adam["m"])
            _write_dict(f.create_group("adam/v"), adam["v"])
        _write_dict(f.create_group("curves"), curves or {})


def _upgrade(config, version):
    """The config of a checkpoint written by an older minivae, in today's names: minivae 0.1's
    "fashion" (stochastic binarization, 50k/10k) is today's "fashion-stochastic"."""
    if version == "0.1.0" and config.dataset == "fashion":
        return config.replace(dataset="fashion-stochastic")
    return config


def load_checkpoint(path, xp=np):
    """A dict with params, config, epoch, adam (or None), rng_state, curves, version and
    provenance (a shipped model's command, commit, date and log; empty strings otherwise); the
    tensors checked against the model the config describes (validate_checkpoint)."""
    with _open(pretrained.locate(path), CHECKPOINT_KIND, "checkpoint") as f:
        try:
            config = _upgrade(Config.from_json(f.attrs["config"]), f.attrs["version"])
            params = _read_dict(f["params"])
            adam = None
            if "adam" in f:
                adam = dict(t=int(f.attrs["adam_t"]), m=_read_dict(f["adam/m"]), v=_read_dict(f["adam/v"]))
            validate_checkpoint(config, params, adam, where=f"checkpoint {path}")
            params = {k: xp.asarray(v) for k, v in params.items()}
            if adam is not None:
                adam.update({m: {k: xp.asarray(v) for k, v in adam[m].items()} for m in ("m", "v")})
            return dict(params=params, config=config, epoch=int(f.attrs["epoch"]), adam=adam,
                        rng_state=json.loads(f.attrs["rng_state"]) or None,
                        curves=_read_dict(f["curves"]), version=f.attrs["version"],
                        provenance={k: str(f.attrs.get(k, "")) for k in pretrained.PROVENANCE})
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {path} is incomplete or damaged ({e}): retrain or "
                                  "pass another checkpoint")


def save_results(path, stage, arrays, attrs=None):
    """Write (or replace) group `stage` of results file `path`, keeping the other stages."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as dst:
            dst.attrs.update(kind=RESULTS_KIND, version=__version__)
            if os.path.exists(path):
                with _open(path, RESULTS_KIND, "results file") as src:
                    for name in src:
                        if name != stage:
                            src.copy(src[name], dst, name=name)
            g = dst.create_group(stage)
            for k, v in (attrs or {}).items():
                g.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
            for k, a in arrays.items():
                g.create_dataset(k, data=to_numpy(a))


def stage_seconds(path):
    """{stage: wall seconds over every run that made it} of results file `path` ({} if absent)."""
    if not os.path.exists(path):
        return {}
    with _open(path, RESULTS_KIND, "results file") as f:
        return {name: float(f[name].attrs.get("seconds", 0.0)) for name in f}


def load_results(path, stage):
    """(arrays, attrs) of group `stage`, or None when the file or the stage is absent."""
    if not os.path.exists(path):
        return None
    with _open(path, RESULTS_KIND, "results file") as f:
        if stage not in f:
            return None
        g = f[stage]
        return {k: g[k][()] for k in g}, dict(g.attrs)

