"""`minivae reproduce`: the paper's experiments as named configurations, one command each.

Layout of --out DIR: models/<name>.h5 (checkpoints), results/<name>.h5 (per-datapoint bounds),
report.md, settings.json, figures. Reruns reuse finished models (or resume unfinished ones)
and finished result stages.
"""
import json
import os
import time

from .. import data
from ..errors import MinivaeError
from ..estimators import ais, evaluate, gaps
from .budgets import BUDGETS, CIFAR_EXPERIMENTS, budget_for, model_config, models
from .figures import run_fig2, run_fig3
from .report import write_report
from .training import train_models


def run_table(experiment, dataset, budget, out, seed=0, log=print, runner=None):
    """Train the experiment's models, compute their gap tables, write report.md; returns tables.
    runner: a stages runner (minivae.cluster): the models that do not depend on another train
    at once on its cluster, then every evaluation stage runs as its tasks."""
    b = budget_for(budget, dataset)
    specs, qstar = models(experiment)
    x_train, x_valid = data.load(dataset, "train"), data.load(dataset, "valid")
    x_eval = data.load(dataset, "test")[:b["n"]]
    tables, timings = {}, {}
    cfgs = {name: model_config(dataset, budget, overrides, seed, experiment).replace(data_dim=x_train.shape[1])
            for name, overrides in specs}
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
        t0 = time.perf_counter()
        xe = data.to_float(x_eval, cfg.likelihood, cfg.dtype)
        meta = dict(split="test", dataset=dataset, checkpoint=name)
        chunk = min(b["chunk"], evaluate.decoder_chunk(None, cfg))     # conv decoders: memory
        results = gaps.collect(params_of[name], cfg, xe, os.path.join(out, "results", f"{name}.h5"),
                               b["k"], chunk, ais.Settings(**b["ais"]), b["ais_block"],
                               qstar, b["localopt"], seed, meta, progress=True, runner=runner)
        timings[f"{name}: bounds"] = time.perf_counter() - t0
        tables[name] = (cfg.q, gaps.gap_table(results, cfg.q))
    write_report(experiment, dataset, budget, out, tables, timings, seed)
    return tables


def run(experiment, dataset, budget, out, seed=0, log=print, runner=None):
    if budget not in BUDGETS:
        raise MinivaeError(f"unknown budget {budget!r}: choose smoke, cpu or paper")
    if dataset not in ("mnist", "fashion", "cifar10"):
        raise MinivaeError(f"reproduce runs on mnist, fashion or cifar10, not {dataset!r}")
    if dataset == "cifar10" and experiment not in CIFAR_EXPERIMENTS:
        raise MinivaeError(f"the paper runs {experiment} on MNIST and Fashion-MNIST only: use "
                           "--dataset mnist or fashion (CIFAR-10: table2)")
    log(f"{experiment} on {dataset}, budget {budget}: settings\n"
        + json.dumps(budget_for(budget, dataset), indent=1))
    if experiment == "fig2":
        return run_fig2(dataset, budget, out, seed, log)
    if experiment == "fig3":
        return run_fig3(dataset, budget, out, seed, log)
    return run_table(experiment, dataset, budget, out, seed, log, runner)
