"""`minivae reproduce`: the paper's experiments as named configurations, one command each.

Layout of --out DIR: models/<name>.h5 (checkpoints), results/<name>.h5 (per-datapoint bounds),
report.md, settings.json, figures. Reruns reuse finished models (or resume unfinished ones)
and finished result stages.
"""
import json
import os

from .. import data, io, train
from ..errors import MinivaeError
from ..estimators import ais, evaluate, gaps
from .budgets import BUDGETS, CIFAR_EXPERIMENTS, EVAL_SPLIT, budget_for, model_config, models
from .figures import run_fig2, run_fig3
from .report import write_report
from .training import train_models


def run_table(experiment, dataset, budget, out, seed=0, log=print, runner=None, split=EVAL_SPLIT, only=()):
    """Train the experiment's models, compute their gap tables on the first n datapoints of
    `split` (the authors' protocol: training datapoints), write report.md; returns tables.
    runner: a stages runner (minivae.cluster): the models that do not depend on another train
    at once on its cluster, then every evaluation stage runs as its tasks. only: names of the
    models to train and evaluate (the model a frozen decoder comes from is trained too)."""
    b = budget_for(budget, dataset)
    specs, qstar = select(*models(experiment), only, experiment)
    cfgs = {name: model_config(dataset, budget, overrides, seed, experiment) for name, overrides in specs}
    x_train, x_valid = train.training_data(next(iter(cfgs.values())).replace(train_size=0))
    x_eval = data.load(dataset, split)[:b["n"]]
    tables, timings = {}, {}
    cfgs = {name: cfg.replace(data_dim=x_train.shape[1]) for name, cfg in cfgs.items()}
    path = {name: os.path.join(out, "models", f"{name}.h5") for name, _ in specs}
    client = getattr(runner, "client", None)
    first = [(name, path[name], cfgs[name], None) for name, ov in specs if ov.get("freeze") != "dec"]
    trained = train_models(first, x_train, x_valid, client, log)
    for name, overrides in specs:                       # a frozen decoder waits for its base model
        if name not in trained:
            init = {k: v for k, v in trained["base"][0].items() if k.startswith("dec.")}
            trained.update(train_models([(name, path[name], cfgs[name], init)], x_train, x_valid, None, log))
    params_of = {name: p for name, (p, _) in trained.items()}
    timings.update({f"{name}: train": t for name, (_, t) in trained.items()})
    for name, _ in specs:
        cfg = cfgs[name]
        xe = data.to_float(x_eval, cfg.likelihood, cfg.dtype)
        # the stages' metadata is the gaps command's: `minivae gaps models/NAME.h5 --split SPLIT
        # --out results/NAME.h5` with this budget's settings adds to the same stages, and back
        meta = dict(split=split, dataset=dataset, checkpoint=evaluate.file_digest(path[name]))
        chunk = min(b["chunk"], evaluate.decoder_chunk(None, cfg))     # conv decoders: memory
        results_path = os.path.join(out, "results", f"{name}.h5")
        results = gaps.collect(params_of[name], cfg, xe, results_path,
                               b["k"], chunk, ais.Settings(**b["ais"]), b["ais_block"],
                               qstar, b["localopt"], seed, meta, progress=True, runner=runner)
        # each stage's wall seconds over every run that made it (a resumed or reused stage too)
        timings.update({f"{name}: {stage}": s for stage, s in io.stage_seconds(results_path).items()})
        tables[name] = (cfg.q, gaps.gap_table(results, cfg.q))
    write_report(experiment, dataset, budget, out, tables, timings, seed,
                 extra=protocol(dataset, split, b["n"], cfgs[specs[0][0]].train_split))
    return tables


def select(specs, qstar, only, experiment):
    """The experiment's (specs, qstar) restricted to the models named in `only` (all if empty)."""
    names = [name for name, _ in specs]
    unknown = [name for name in only if name not in names]
    if unknown:
        raise MinivaeError(f"--only {','.join(unknown)}: {experiment} trains {', '.join(names)}")
    if not only:
        return specs, qstar
    needs = set(only) | {"base" for name, ov in specs if name in only and ov.get("freeze") == "dec"}
    return [(name, ov) for name, ov in specs if name in needs], qstar


def protocol(dataset, split, n, train_split):
    """The report's statement of the evaluation protocol and where it differs from the authors'."""
    which = "training" if split == "train" else f"{split}-split"
    lines = ["## Protocol", "",
             f"Evaluated on the first {n} {which} datapoints of {dataset}; trained on "
             f"{'the training and validation images together' if train_split == 'train+valid' else 'the training split'}.",
             "The authors' code (lxuechen/inference-suboptimality, `utils/helper.py`, `loader.py`) evaluates "
             "the first 1000 training datapoints (CIFAR-10: 100) and trains MNIST on all 60 000 images.",
             *(["Fashion-MNIST is binarized as the authors did, pixel = (intensity / 255 >= 0.5), "
                "with their split: train the first 55 000 training images, valid the last 5 000."]
               if dataset == "fashion" else []), "",
             "Differences from the authors' code:"]
    if split != "train":
        lines.append(f"- evaluated on the {split} split (`--split {split}`), not on training datapoints;")
    if n != (100 if dataset == "cifar10" else 1000):
        lines.append(f"- {n} datapoints, not {100 if dataset == 'cifar10' else 1000} (this budget's n);")
    if dataset == "mnist":
        lines.append("- the images, perhaps: minivae uses Larochelle's binarized MNIST, as the paper's text says; "
                     "the authors' `loader.py` reads `datasets/mnist.pkl` as `mnist[0][0]`, the (images, labels) "
                     "layout of deeplearning.net's grey-level `mnist.pkl` (binarized MNIST has no labels), so their "
                     "models may have been trained on grey levels (`minivae train --dataset mnist-gray`; "
                     "evidence in `docs/table2-mnist-paper.md`);")
    if dataset == "mnist-gray":
        lines.append("- none in the images, it seems, but not the paper's text: grey levels (LeCun's images in "
                     "their order, intensity / 256, as deeplearning.net's `mnist.pkl` that the authors' "
                     "`loader.py` reads), with the Bernoulli likelihood as a cross-entropy; the paper says "
                     "Larochelle's binarized MNIST (`--dataset mnist`); evidence in `docs/table2-mnist-paper.md`;")
    if dataset == "cifar10":
        lines.append("- the conv model has no batch norm and a 4x4 first decoder layer (README, CIFAR-10);")
    if lines[-1] == "Differences from the authors' code:":
        lines.append("- none in the data protocol.")
    lines += QSTAR_DIFFERENCES
    return "\n".join(lines) + "\n"


# How q* is fitted, against the authors' local_ffg.py and local_flow.py (lxuechen/inference-
# suboptimality), read for issue 15. minivae follows the paper's text, one q* per datapoint.
QSTAR_DIFFERENCES = [
    "- q*_FFG: the authors fit 100 datapoints together, with one Gaussian per sample (mean and "
    "logvar of shape (100 x 100, Z)), each on its own one-sample ELBO; the batch stops when its mean "
    "has not improved for 11 checks, and L[q*] is the mean of one sample from each Gaussian. minivae "
    "fits one Gaussian per datapoint on a 100-sample ELBO, stops each datapoint on its own after 10 "
    "checks without improvement, and estimates L[q*] with 5000 samples from it;",
    "- q*_Flow: the authors' local flow has a per-sample v0 Gaussian, Z-200-200-2Z nets for q(z0|v0) "
    "and r(vT|zT), coupling nets with 200 tanh units, and optimises the nets' weights but not their "
    "biases; minivae's q*_Flow is the paper's flow family (the trained model's architecture) with "
    "every parameter fitted per datapoint;",
    "- which parameters a stopped q* keeps: the authors' scripts keep the last step's and average "
    "L[q*] over batches with np.nanmean, so a batch whose fit went NaN (local_ffg.py: 100 "
    "datapoints; local_flow.py: one) drops out of the mean; minivae keeps each datapoint's best "
    "check (so a fit that runs away late keeps what it had found), stops a datapoint at its first "
    "non-finite log w or gradient, and counts every datapoint in the mean (the gaps command's note "
    "says how many stopped that way).",
]


def run(experiment, dataset, budget, out, seed=0, log=print, runner=None, split=EVAL_SPLIT, only=()):
    if budget not in BUDGETS:
        raise MinivaeError(f"unknown budget {budget!r}: choose smoke, cpu or paper")
    if dataset not in ("mnist", "mnist-gray", "fashion", "cifar10"):
        raise MinivaeError(f"reproduce runs on mnist, mnist-gray, fashion or cifar10, not {dataset!r}")
    if dataset == "cifar10" and experiment not in CIFAR_EXPERIMENTS:
        raise MinivaeError(f"the paper runs {experiment} on MNIST and Fashion-MNIST only: use "
                           "--dataset mnist or fashion (CIFAR-10: table2)")
    if only and experiment in ("fig2", "fig3"):
        raise MinivaeError(f"--only selects the models of a table; {experiment} has no choice of models")
    if only:                                                         # an unknown name: before any work
        select(*models(experiment), only, experiment)
    data.load(dataset, "train")                                    # missing data: before any output
    log(f"{experiment} on {dataset}, budget {budget}: settings\n"
        + json.dumps(budget_for(budget, dataset), indent=1))
    if experiment == "fig2":
        return run_fig2(dataset, budget, out, seed, log)
    if experiment == "fig3":
        return run_fig3(dataset, budget, out, seed, log)
    return run_table(experiment, dataset, budget, out, seed, log, runner, split, only)
