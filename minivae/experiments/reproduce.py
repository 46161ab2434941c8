"""`minivae reproduce`: the paper's experiments as named configurations, one command each.

Layout of --out DIR: models/<name>.h5 (checkpoints), results/<name>.h5 (per-datapoint bounds),
report.md, settings.json, figures. Reruns reuse finished models (or resume unfinished ones)
and finished result stages.
"""
import json
import os
import time

import numpy as np

from .. import data, io, outputs, train
from ..estimators import gaps
from ..model.config import Config
from ..errors import MinivaeError
from ..model.optim import total_epochs
from .paper import paper_numbers

EXPERIMENTS = ("table2", "table3", "table4", "table5", "table6", "table10", "fig2", "fig3")

BUDGETS = {
    # minutes, tiny: for tests
    "smoke": dict(train=dict(schedule="plain", epochs=1, train_size=500, warmup_epochs=0, lr=1e-3),
                  n=3, k=20, chunk=2000, ais=dict(chains=3, steps=10, leapfrog=3), ais_block=3,
                  localopt=dict(max_steps=100, samples=5, check_every=20, patience=2,
                                final_samples=50, block=3),
                  fig2=dict(epochs=1, train_size=1000, lr=1e-3, pool=40, max_steps=200, flow_samples=5000),
                  fig3=dict(epochs=2, every=1, small=200, n=3, k=20, ais=dict(chains=3, steps=10, leapfrog=3),
                            small_train=dict(epochs=2, every=1, warmup_epochs=0))),
    # a few hours on 2 cores: the first 5 stages of Burda's schedule (121 epochs), warm-up
    # scaled to the same fraction (400/3280 -> 15 epochs), 100 datapoints, full AIS and IWAE
    "cpu": dict(train=dict(schedule="burda", epochs=121, warmup_epochs=15),
                n=100, k=5000, chunk=20000, ais=dict(chains=100, steps=500, leapfrog=10), ais_block=10,
                # q*_Flow (per-datapoint nets) costs ~5x an FFG step: fewer samples, fewer steps
                localopt=dict(init="encoder", max_steps=10000, samples=100, check_every=100,
                              patience=10, final_samples=5000, block=100,
                              flow=dict(samples=20, max_steps=3000)),
                fig2=dict(epochs=200, train_size=0, lr=1e-3, pool=300, max_steps=20000, flow_samples=100000),
                fig3=dict(epochs=121, every=20, small=1000, n=100, k=1000,
                          ais=dict(chains=20, steps=200, leapfrog=10),
                          # 1000 images: an epoch is 10 steps (0.3 s), so the paper's full
                          # schedule fits, and with it the overfitting that Fig. 3b shows
                          small_train=dict(epochs=3280, every=410, warmup_epochs=400))),
    # the paper's settings
    "paper": dict(train=dict(schedule="burda", epochs=3280, warmup_epochs=400),
                  n=1000, k=5000, chunk=20000, ais=dict(chains=100, steps=500, leapfrog=10), ais_block=10,
                  localopt=dict(max_steps=100000, samples=100, check_every=100, patience=10,
                                final_samples=5000, block=100),
                  fig2=dict(epochs=3000, train_size=0, lr=1e-4, pool=1000, max_steps=100000,
                            flow_samples=200000),
                  fig3=dict(epochs=3280, every=100, small=1000, n=1000, k=5000,
                            ais=dict(chains=100, steps=500, leapfrog=10))),
}


# CIFAR-10 (Table 2's third pair of columns; paper 6.1.3): the conv model, 100 test datapoints
# in the paper. The paper trains with "a gradually decreasing learning rate" from 1e-3 and early
# stopping, numbers unstated; minivae has neither, so every budget uses a plain lr-1e-3 schedule
# of a fixed length, warm-up over its first epochs (the paper's 20 where the budget allows).
CIFAR_BUDGETS = {
    "smoke": dict(train=dict(schedule="plain", epochs=1, train_size=500, warmup_epochs=0, lr=1e-3)),
    # one epoch is about 3 min on one core: 20 epochs, 20 test datapoints, q* shortened
    "cpu": dict(train=dict(schedule="plain", epochs=20, warmup_epochs=2, lr=1e-3), n=20,
                ais=dict(chains=20, steps=100, leapfrog=10), k=1000,
                localopt=dict(init="encoder", max_steps=2000, samples=20, check_every=100, patience=5,
                              final_samples=1000, block=20, flow=dict(samples=10, max_steps=1000))),
    "paper": dict(train=dict(schedule="plain", epochs=200, warmup_epochs=20, lr=1e-3), n=100),
}
CIFAR_EXPERIMENTS = ("table2",)        # the paper reports CIFAR-10 in Table 2 only


def budget_for(budget, dataset):
    """The settings of `budget` for `dataset`: BUDGETS, with CIFAR-10's overrides."""
    b = dict(BUDGETS[budget])
    if dataset == "cifar10":
        b.update(CIFAR_BUDGETS[budget])
    return b


def models(experiment):
    """[(name, Config overrides)] trained for an experiment; (q* families evaluated)."""
    if experiment in ("table2", "table6"):
        specs = [("ffg", dict(q="ffg")), ("flow", dict(q="flow"))]
    elif experiment == "table3":
        specs = [("ffg", dict(q="ffg", enc_hidden=500)), ("flow", dict(q="flow", enc_hidden=500))]
    elif experiment == "table4":
        # a VAE, then new encoders with no hidden layer (D_X - 2 D_Z) on its fixed decoder
        specs = [("base", dict(q="ffg")),
                 ("small_ffg", dict(q="ffg", enc_layers=0, freeze="dec")),
                 ("small_flow", dict(q="flow", enc_layers=0, freeze="dec"))]
    elif experiment == "table5":
        specs = [(f"dec{n}", dict(q="ffg", dec_layers=n)) for n in (0, 2, 4)]
    elif experiment == "table10":
        specs = [("fullcov", dict(q="fullcov"))]
    else:
        raise MinivaeError(f"unknown experiment {experiment!r}: choose one of {', '.join(EXPERIMENTS)}")
    qstar = ("ffg",) if experiment == "table5" else ("ffg", "flow")
    return specs, qstar


def model_config(dataset, budget, overrides, seed, experiment):
    t = budget_for(budget, dataset)["train"]
    warmup = 0 if experiment == "table6" else t["warmup_epochs"]
    # the dataset's model (cifar10: the conv VAE, latent 32, 4 flow steps) and likelihood
    arch = {k: v for k, v in train.DATASET_DEFAULTS.get(dataset, {}).items() if k != "warmup_epochs"}
    return Config(dataset=dataset, likelihood=data.info(dataset)["likelihood"], schedule=t["schedule"],
                  epochs=t["epochs"], lr=t.get("lr", 1e-3), warmup_epochs=warmup,
                  train_size=t.get("train_size", 0), seed=seed, **{**arch, **overrides})


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
                return state["params"], 0.0
            log(f"resuming {path} at epoch {state['epoch']}")
        else:
            state = None
        t0 = time.perf_counter()
        xt = x_train[:cfg.train_size] if cfg.train_size else x_train
        state = train.train(cfg, xt, x_valid, path, state, init=init, progress=True, save_every=5)
        return state["params"], time.perf_counter() - t0


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


def run_table(experiment, dataset, budget, out, seed=0, log=print, runner=None):
    """Train the experiment's models, compute their gap tables, write report.md; returns tables.
    runner: a stages runner (minivae.cluster): the models that do not depend on another train
    at once on its cluster, then every evaluation stage runs as its tasks."""
    from ..estimators import ais, evaluate
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


def _fmt(mean, se=None):
    if mean is None:
        return ""
    return f"{mean:.2f}" + (f" ± {se:.2f}" if se is not None and np.isfinite(se) else "")


def table_markdown(experiment, dataset, tables):
    """Our numbers beside the paper's, one pair of columns per model."""
    paper = paper_numbers(experiment, dataset) or {}
    names = list(tables)
    labels = []
    for _, rows in tables.values():
        for r in rows:
            if r["mean"] is not None and r["label"] not in labels:
                labels.append(r["label"])
    head = ["bound / gap"]
    for name in names:
        head += [f"{name} (ours)"] + ([f"{name} (paper)"] if name in paper else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label in labels:
        cells = [label]
        for name in names:
            row = next((r for r in tables[name][1] if r["label"] == label), None)
            cells.append(_fmt(row["mean"], row["se"]) if row else "")
            if name in paper:
                cells.append(_fmt(_paper_value(paper[name], label)))
        lines.append("| " + " | ".join(cells) + " |")
    note = "" if paper else (f"\nThe paper's text has no numbers for {experiment} on {dataset}; "
                             "ours are shown alone.\n")
    return "\n".join(lines) + "\n" + note


def _paper_value(col, label):
    key = {"log p^(x)": "log p(x)", "L_VAE[q*_Flow]": "L[q*_Flow]", "L_VAE[q*_FFG]": "L[q*_FFG]",
           "L_VAE[q]": "L[q]"}.get(label, label)
    return col.get(key)


def write_report(experiment, dataset, budget, out, tables, timings, seed, figures=(), extra=""):
    settings = dict(experiment=experiment, dataset=dataset, budget=budget, seed=seed,
                    **budget_for(budget, dataset))
    text = [f"# {experiment} on {dataset}, budget `{budget}`", ""]
    if tables:
        text += ["Means over evaluation datapoints ± their standard error, in nats. "
                 "log p^(x) = max(IWAE, AIS) per datapoint; gaps use q* of the family the model "
                 "was trained with.", "", table_markdown(experiment, dataset, tables)]
    for fig in figures:
        text += [f"![{fig}]({fig})", ""]
    if extra:
        text += [extra]
    text += ["## Wall time", "", "| stage | seconds |", "| --- | --- |"]
    text += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    text += ["", "## Settings", "", "```json", json.dumps(settings, indent=1), "```", ""]
    os.makedirs(out, exist_ok=True)
    for name, content in (("report.md", "\n".join(text)), ("settings.json", json.dumps(settings, indent=1))):
        path = os.path.join(out, name)
        with io.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write(content)


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
        from .figures import run_fig2
        return run_fig2(dataset, budget, out, seed, log)
    if experiment == "fig3":
        from .figures import run_fig3
        return run_fig3(dataset, budget, out, seed, log)
    return run_table(experiment, dataset, budget, out, seed, log, runner)
