"""Models shipped with the package, so that a user can evaluate without training.

`paper:NAME` names minivae/pretrained/NAME.h5 wherever a checkpoint is read. Each is a minivae
checkpoint holding the parameters only (float32, no Adam state), the config, the training
curves, and its provenance as attributes: the command that trained it, the commit and the date
training ended, and where its training log is kept.
"""
import datetime
import json
from pathlib import Path

import h5py
import numpy as np

from .errors import CheckpointError

PREFIX = "paper:"
DIR = Path(__file__).parent / "pretrained"
PROVENANCE = ("command", "commit", "date", "log")


def names():
    """Every shipped model's name, e.g. paper:mnist-ffg."""
    return sorted(PREFIX + p.stem for p in DIR.glob("*.h5"))


def locate(ckpt):
    """The file a checkpoint argument names: the shipped file for paper:NAME, else ckpt itself."""
    ckpt = str(ckpt)
    if not ckpt.startswith(PREFIX):
        return ckpt
    path = DIR / f"{ckpt[len(PREFIX):]}.h5"
    if not path.is_file():
        raise CheckpointError(f"no shipped model {ckpt!r}: choose one of {', '.join(names()) or '(none)'}"
                              " (`minivae models` lists them)")
    return str(path)


def describe(name, ck):
    """One shipped model as a row: name, dataset, family, epochs, the last training bound and
    validation ELBO, size in MB, and the provenance; ck is io.load_checkpoint(name)."""
    cfg, curves = ck["config"], ck["curves"]
    row = dict(name=name, dataset=cfg.dataset, q=cfg.q, epochs=ck["epoch"],
               mb=round(Path(locate(name)).stat().st_size / 1e6, 1))
    for k in ("train_bound", "valid_elbo"):
        if len(curves.get(k, ())):
            row[k] = round(float(curves[k][-1]), 2)
    row.update(ck["provenance"])
    return row


def ship(ckpt, name, command, commit, log="", date=None):
    """Copy checkpoint `ckpt` (a minivae training checkpoint) as the shipped model NAME: float32
    parameters, config, epoch, curves and provenance; no optimiser state. Returns the path."""
    out = DIR / f"{name}.h5"
    tmp = DIR / f".{name}.h5.tmp-ship"
    DIR.mkdir(exist_ok=True)
    with h5py.File(ckpt, "r") as src, h5py.File(tmp, "w") as dst:
        cfg = dict(json.loads(src.attrs["config"]), dtype="float32")
        dst.attrs.update({k: src.attrs[k] for k in ("kind", "version", "epoch", "rng_state")})
        dst.attrs.update(config=json.dumps(cfg, sort_keys=True), command=command, commit=commit,
                         log=log, date=date or datetime.date.today().isoformat())
        src.copy(src["curves"], dst, "curves")
        tensors = []
        src["params"].visititems(lambda key, d: tensors.append(key) if isinstance(d, h5py.Dataset) else None)
        for key in tensors:
            dst.create_dataset(f"params/{key}", data=np.asarray(src["params"][key][()], np.float32))
    tmp.replace(out)
    return out
