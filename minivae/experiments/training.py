"""The experiments' models: trained, resumed, or reused when finished; one after another, or all at
once as tasks of a Dask client."""
import os

import numpy as np

from .. import io, outputs, train
from ..errors import MinivaeError
from ..model.optim import total_epochs

def train_or_reuse(path, cfg, x_train, x_valid, init=None, log=print):
    """The trained params at `path`: reused when finished, resumed when not (or when `cfg`
    asks for more epochs of the same model), else trained."""
    with outputs.claim(path, io.CHECKPOINT_KIND):     # one writer per model file
        if os.path.exists(path):
            old_cfg, state = train.load_state(path)
            if old_cfg.replace(epochs=cfg.epochs) != cfg or state["epoch"] > total_epochs(cfg):
                raise MinivaeError(f"{path} was trained with other settings than this run asks for: "
                                   "pass another --out, or delete it to retrain")
            if state["epoch"] >= total_epochs(cfg):
                log(f"reusing {path} ({state['epoch']} epochs)")
                return state["params"], _seconds(state)
            log(f"resuming {path} at epoch {state['epoch']}")
        else:
            state = None
        xt = x_train[:cfg.train_size] if cfg.train_size else x_train
        try:
            state = train.train(cfg, xt, x_valid, path, state, init=init, progress=True, save_every=5)
        except KeyboardInterrupt as e:                  # say which epoch the rerun continues from
            raise train.interrupted(e, path) from None
        return state["params"], _seconds(state)


def _seconds(state):
    """Wall seconds of a model's training over every run that made it (its per-epoch curve)."""
    return float(np.sum(state["curves"].get("seconds", 0.0)))


def _train_task(path, cfg, x_train, x_valid, init):
    return train_or_reuse(path, cfg, x_train, x_valid, init, log=lambda *a: None)


def train_models(jobs, x_train, x_valid, client=None, log=print):
    """{name: (params, seconds)} for jobs [(name, path, cfg, init)]: one after another, or all at
    once as tasks of a Dask `client` (each worker writes its own model's checkpoint)."""
    if client is None:
        return {name: train_or_reuse(path, cfg, x_train, x_valid, init, log) for name, path, cfg, init in jobs}
    log(f"training {', '.join(j[0] for j in jobs)} at once on the cluster")
    x_train, x_valid = client.scatter([x_train, x_valid], hash=False)     # sent once, not per model
    futures = {name: client.submit(_train_task, path, cfg, x_train, x_valid, init, pure=False)
               for name, path, cfg, init in jobs}
    return {name: f.result() for name, f in futures.items()}
