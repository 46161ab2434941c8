"""The training loop: Adam on the (entropy-annealed) ELBO or IWAE, per-epoch validation,
learning curves and resumable HDF5 checkpoints.

Resuming restores params, Adam moments, epoch and the RNG state, so an interrupted run that
is resumed ends with the same numbers as an uninterrupted one.
"""
import os
import time

import numpy as np

from . import data, io
from .model import fastpath, fused_flow, fused_fullcov, model, objectives
from .backend import normal, rng_from_state, rng_state, to_numpy
from .model.config import Config
from .errors import MinivaeError
from .model.optim import adam_init, adam_step, entropy_weight, learning_rate, total_epochs
from .model.posteriors import get_family
from .progress import Progress, epoch_line

CURVES = ("epoch", "train_bound", "valid_elbo", "lr", "lam", "seconds")


def evaluate_elbo(params, cfg, x, seed, xp=np, k=1, chunk=1000):
    """Per-datapoint single-run ELBO estimate (k samples each), in chunks: (N,) float64."""
    family = get_family(cfg)
    rng = np.random.default_rng(seed)
    dtype = np.dtype(cfg.dtype)
    out = []
    for i in range(0, len(x), chunk):
        xb = data.to_float(x[i:i + chunk], cfg.likelihood, dtype, xp)
        eps = normal(rng, (len(xb), k, family.noise_dim), xb)
        out.append(to_numpy(objectives.bound(params, cfg, family, xb, eps)).astype(np.float64))
    return np.concatenate(out)


def train(cfg, x_train, x_valid, out, state=None, xp=np, save_every=1, progress=True, stop_after=None,
          init=None, impl="auto"):
    """Train from scratch (state None) or from a loaded checkpoint dict; returns the final state.

    x_train, x_valid: uint8/float host arrays (N, D). stop_after: end after this many epochs
    of this call (used to test resuming). init: parameters that replace the fresh ones (e.g. a
    trained decoder, kept fixed with cfg.freeze="dec"). impl: training_step's.
    """
    dtype = np.dtype(cfg.dtype)
    family = get_family(cfg)
    if state is None:
        rng = np.random.default_rng(cfg.seed)
        params = model.init_params(cfg, rng, xp)
        for k, v in (init or {}).items():
            if k not in params or params[k].shape != v.shape:
                raise MinivaeError(f"initial parameter {k} does not fit this model")
            params[k] = xp.asarray(v, dtype=params[k].dtype)
        state = dict(params=params, adam=adam_init(params), epoch=0,
                     curves={k: np.zeros(0) for k in CURVES})
    else:
        rng = rng_from_state(state["rng_state"])
    params, adam, curves = state["params"], state["adam"], state["curves"]
    frozen = tuple(f + "." for f in cfg.freeze.split(",") if f)
    step = training_step(params, adam, cfg, family, frozen, fastpath.mostly_zeros(x_train), impl)
    n_batches = len(x_train) // cfg.batch
    if n_batches == 0:
        raise MinivaeError(f"training set has {len(x_train)} images, fewer than one batch of {cfg.batch}")
    end = total_epochs(cfg) if stop_after is None else min(total_epochs(cfg), state["epoch"] + stop_after)
    for epoch in range(state["epoch"], end):
        t0 = time.perf_counter()
        lr = learning_rate(cfg, epoch)
        bar = Progress(n_batches, f"epoch {epoch + 1}/{total_epochs(cfg)}", enabled=progress)
        perm = rng.permutation(len(x_train))
        running = 0.0
        for b in range(n_batches):
            xb = data.to_float(x_train[perm[b * cfg.batch:(b + 1) * cfg.batch]], cfg.likelihood, dtype, xp)
            eps = normal(rng, (cfg.batch, cfg.k, family.noise_dim), xb)
            lam = entropy_weight(cfg, epoch + b / n_batches)
            value = step(xb, eps, lam, lr)
            running += float(value.mean())
            bar.update(bound=running / (b + 1))
        bar.close()
        valid = float(evaluate_elbo(params, cfg, x_valid, seed=[cfg.seed, epoch], xp=xp).mean())
        if not np.isfinite(valid):
            raise MinivaeError(f"training diverged at epoch {epoch + 1} (validation ELBO {valid}): "
                               "lower --lr or use --dtype float64")
        row = dict(epoch=epoch + 1, train_bound=running / n_batches, valid_elbo=valid, lr=lr,
                   lam=entropy_weight(cfg, epoch + 1), seconds=time.perf_counter() - t0)
        for k in CURVES:
            curves[k] = np.append(curves[k], row[k])
        state["epoch"] = epoch + 1
        if progress:
            print(epoch_line(epoch + 1, total_epochs(cfg), curves["seconds"],
                             f"train bound {row['train_bound']:.3f}  valid ELBO {valid:.3f}"), flush=True)
        if out and (state["epoch"] % save_every == 0 or state["epoch"] == end):
            save(out, cfg, state, rng)
    state["rng_state"] = rng_state(rng)
    return state


def training_step(params, adam, cfg, family, frozen=(), sparse_input=False, impl="auto"):
    """step(x, eps, lam, lr) -> bound (B,), after one Adam step on the batch's mean bound
    (keys starting with a `frozen` prefix stay fixed). fastpath.TrainStep (FFG),
    fused_flow.FlowTrainStep or fused_fullcov.FullCovTrainStep where they apply (they move
    params and the Adam moments into flat buffers, values kept), else objectives.bound_and_grads + optim.adam_step: the same numbers up to float rounding.
    sparse_input: the data are mostly zeros (fastpath.mostly_zeros of the training set).
    impl="ref": the reference even where the fast path applies (tests, benchmarks)."""
    fast = None
    if impl != "ref" and fastpath.supports(cfg, family):
        fast = fastpath.TrainStep(params, adam, cfg, cfg.batch, cfg.k, frozen, sparse_input)
    elif impl != "ref" and fused_flow.supports(cfg, family, frozen):
        fast = fused_flow.FlowTrainStep(params, adam, cfg, family, cfg.batch, cfg.k, frozen, sparse_input)
    elif impl != "ref" and fused_fullcov.supports(cfg, family, encoder=True):
        fast = fused_fullcov.FullCovTrainStep(params, adam, cfg, cfg.batch, cfg.k, frozen, sparse_input)
    if fast is not None:

        def step(x, eps, lam, lr):
            value = fast(x, eps, lam, cfg.objective)
            fast.update(lr, eps=cfg.adam_eps)
            return value

        return step

    def step(x, eps, lam, lr):
        value, grads = objectives.bound_and_grads(params, cfg, family, x, eps, lam, cfg.objective)
        if frozen:
            grads = {k: g for k, g in grads.items() if not k.startswith(frozen)}
        adam_step(params, grads, adam, lr, eps=cfg.adam_eps, impl=impl)
        return value

    return step


def save(path, cfg, state, rng):
    io.save_checkpoint(path, state["params"], cfg, state["epoch"], state["adam"], rng_state(rng),
                       state["curves"])


def load_state(path, xp=np):
    ck = io.load_checkpoint(path, xp)
    if ck["adam"] is None or ck["rng_state"] is None:
        raise MinivaeError(f"{path} has no optimiser/RNG state, so it cannot be resumed")
    curves = {k: np.asarray(ck["curves"].get(k, np.zeros(0))) for k in CURVES}
    return ck["config"], dict(params=ck["params"], adam=ck["adam"], epoch=ck["epoch"],
                              rng_state=ck["rng_state"], curves=curves)


# Per-dataset defaults of `minivae train` options left unset (paper 6.1.1 and 6.1.3, Table 9).
DATASET_DEFAULTS = {"cifar10": dict(arch="conv", latent=32, warmup_epochs=20, flow_steps=4)}
OPTION_DEFAULTS = dict(arch="mlp", latent=50, flow_steps=2)


def config_from_options(opts):
    """Config from the `minivae train` options (CLI names -> fields): options not given take the
    dataset's defaults (cifar10: the conv model), then the schedule's."""
    likelihood = data.info(opts["dataset"])["likelihood"]   # also: a one-line error for a bad name
    defaults = {**OPTION_DEFAULTS, **DATASET_DEFAULTS.get(opts["dataset"], {})}
    opts = {**opts, **{k: v for k, v in defaults.items() if opts.get(k) is None}}
    schedule = opts["schedule"] or ("plain" if opts["epochs"] is not None else "burda")
    if schedule == "plain" and opts["epochs"] is None:
        raise MinivaeError("--schedule plain needs --epochs N")
    warmup = opts["warmup_epochs"]
    if warmup is None:
        warmup = 400 if schedule == "burda" else 0
    if opts["no_warmup"]:
        warmup = 0
    for name in ("latent", "batch", "k", "enc_hidden", "dec_hidden", "flow_steps"):
        if opts[name] < 1:
            raise MinivaeError(f"--{name.replace('_', '-')} must be at least 1 (got {opts[name]})")
    if opts["epochs"] is not None and opts["epochs"] < 1:
        raise MinivaeError(f"--epochs must be at least 1 (got {opts['epochs']})")
    return Config(dataset=opts["dataset"], arch=opts["arch"], likelihood=likelihood, q=opts["q"],
                  latent=opts["latent"],
                  enc_hidden=opts["enc_hidden"], enc_layers=opts["enc_layers"],
                  dec_hidden=opts["dec_hidden"], dec_layers=opts["dec_layers"], act=opts["act"],
                  flow_steps=opts["flow_steps"], objective=opts["objective"], k=opts["k"],
                  batch=opts["batch"], train_split=opts.get("train_split") or "train",
                  train_size=opts["train_size"] or 0, schedule=schedule,
                  epochs=opts["epochs"] if opts["epochs"] is not None else 3280, lr=opts["lr"],
                  adam_eps=opts.get("adam_eps", Config.adam_eps),
                  warmup_epochs=warmup, seed=opts["seed"], dtype=opts["dtype"])


# Config fields that `minivae train` options set, with the options that set them. A rerun on
# the same --out compares these only where an option was given: the checkpoint's config wins.
# Not here: fields no option sets (data_dim is filled in from the data, obs_std, flow_hidden,
# freeze) and likelihood, which follows the dataset.
TRAIN_SETTINGS = dict(dataset=("dataset",), arch=("arch",), q=("q",), latent=("latent",),
                      enc_hidden=("enc_hidden",), enc_layers=("enc_layers",), dec_hidden=("dec_hidden",),
                      dec_layers=("dec_layers",), act=("act",), flow_steps=("flow_steps",),
                      objective=("objective",), k=("k",), batch=("batch",), train_split=("train_split",),
                      train_size=("train_size",),
                      schedule=("schedule",), epochs=("epochs",), lr=("lr",), adam_eps=("adam_eps",),
                      warmup_epochs=("warmup_epochs", "no_warmup"), seed=("seed",), dtype=("dtype",))


def settings_to_continue(path, stored, asked, given, extend=False):
    """The config a rerun on checkpoint `path` trains with: `stored`, unless an option in `given`
    asks for another value (`asked`: the config the options describe), which is refused in one
    line naming the settings; with `extend`, only a larger --epochs of the plain schedule."""
    changed = [f for f, names in TRAIN_SETTINGS.items()
               if given.intersection(names) and getattr(asked, f) != getattr(stored, f)]
    if extend and "epochs" in changed:
        if stored.schedule != "plain" or asked.schedule != "plain":
            raise MinivaeError(f"--extend adds epochs to the plain schedule; {path} was trained with "
                               f"--schedule {stored.schedule} (3280 epochs, fixed)")
        if asked.epochs < stored.epochs:
            raise MinivaeError(f"--extend only raises --epochs: {path} was trained for {stored.epochs} "
                               f"epochs, more than --epochs {asked.epochs}")
        changed.remove("epochs")
        stored = stored.replace(epochs=asked.epochs)
    if changed:
        said = ", ".join(f"--{f.replace('_', '-')} {getattr(asked, f)} (checkpoint: {getattr(stored, f)})"
                         for f in changed)
        hint = "; add --extend to train for more --epochs" if changed == ["epochs"] else ""
        raise MinivaeError(f"{path} was trained with other settings: {said}. Rerun without them to "
                           f"continue it{hint}, or choose another --out")
    return stored


def saved_epoch(path):
    """Epochs finished in checkpoint `path` (0 when there is none)."""
    return io.load_checkpoint(path)["epoch"] if os.path.exists(path) else 0


def interrupted(e, path):
    """The interrupt `e` (SIGTERM stays SIGTERM) of a run training `path`, saying where it resumes."""
    done = saved_epoch(path)
    saved = f"{path} holds {done} finished epochs" if done else f"no epoch of {path} was saved yet"
    return type(e)(f"{saved}; the same command run again continues from epoch {done + 1}")


def training_data(cfg, data_dir=None):
    """(x_train, x_valid) as cfg asks: the train split, or train and valid together (the authors'
    code; the validation ELBO is then measured on images trained on), cut to cfg.train_size."""
    x_valid = data.load(cfg.dataset, "valid", data_dir)
    x_train = data.load(cfg.dataset, "train", data_dir)
    if cfg.train_split == "train+valid":
        x_train = np.concatenate([x_train, x_valid])
    elif cfg.train_split != "train":
        raise MinivaeError(f"unknown training split {cfg.train_split!r}: choose train or train+valid")
    return (x_train[:cfg.train_size] if cfg.train_size else x_train), x_valid
