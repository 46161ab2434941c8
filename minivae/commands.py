"""The commands behind cli.py, one function per command, each taking the parsed options as a
dict: the shared preamble (check options, load the checkpoint, the first --n rows of --split,
the metadata tying results to the checkpoint) is written once here, then one call into the
library and one summary line. cli.py imports this module inside each command, after --threads."""
import os
import sys
import time

import numpy as np

from . import data, interop, io, outputs, pretrained, stages
from . import export as exporting, sample as sampling, train as training
from .estimators import ais as annealing, bdmc as bidirectional, evaluate, gaps as gap, iwae as iw
from .estimators import localopt as local
from .backend import device_xp
from .errors import MinivaeError
from .experiments import reproduce as repro
from .model import model
from .model.optim import total_epochs
from .model.posteriors import get_family


def _model(opts, **positive):
    """(params, cfg, xp) of --ckpt in --dtype on --device, after checking the `positive` options."""
    evaluate.check_options(**positive)
    return evaluate.load_model(opts["ckpt"], opts["device"], opts["dtype"])


def _data(opts, cfg, xp):
    """The first --n rows of --split, and the metadata stored with every stage made from them."""
    x = evaluate.load_data(cfg, opts["split"], opts["n"], opts["data_dir"], xp)
    return x, dict(checkpoint=evaluate.file_digest(opts["ckpt"]), split=opts["split"], dataset=cfg.dataset)


def _ais_settings(opts):
    s = annealing.Settings(**{k: opts[k] for k in annealing.Settings.__dataclass_fields__})
    annealing.check_settings(s)
    return s


def _localopt_settings(opts):
    return {k: opts[k] for k in local.DEFAULTS if k in opts}


def _note(line):
    print(line, file=sys.stderr)


def train(opts, given=None):
    """`minivae train`: a new run, or the same command again on the same --out continues it.
    given: names of the options given on the command line (None: all of them); they must agree
    with an existing checkpoint's config, except a larger --epochs with --extend."""
    given = set(opts if given is None else given)
    xp = device_xp(opts["device"])
    asked = training.config_from_options(opts)
    out = opts["out"]
    if opts.get("resume"):
        out = opts["resume"]
        if "out" in given and os.path.abspath(opts["out"]) != os.path.abspath(out):
            raise MinivaeError(f"--resume {out} continues that checkpoint in place, not into --out "
                               f"{opts['out']}: drop one of them (copy the file first to continue a copy)")
        if not os.path.exists(out):
            raise MinivaeError(f"checkpoint {out} does not exist: check the path, or drop --resume "
                               "to start a new run with --out")
    with outputs.claim(out, io.CHECKPOINT_KIND):        # held for the whole run, before any compute
        if os.path.exists(out):
            stored, state = training.load_state(out, xp)
            cfg = training.settings_to_continue(out, stored, asked, given, opts.get("extend", False))
            if state["epoch"] >= total_epochs(cfg):
                more = " (--epochs N --extend trains more)" if cfg.schedule == "plain" else ""
                print(f"{out} is already complete ({state['epoch']} of {total_epochs(cfg)} epochs): "
                      f"nothing to do{more}")
                return
            print(f"resuming {out} at epoch {state['epoch'] + 1} of {total_epochs(cfg)}")
        else:
            cfg, state = asked, None
        if cfg.train_split == "train+valid":
            print("training on train+valid: the validation ELBO is not held out")
        get_family(cfg)  # fail early on an unsupported family
        model.check_arch(cfg)  # or an arch without the dataset's likelihood
        try:
            x_train, x_valid = training.training_data(cfg, opts["data_dir"])
            cfg = cfg.replace(data_dim=x_train.shape[1])
            state = training.train(cfg, x_train, x_valid, out, state, xp, opts["save_every"],
                                   impl=opts.get("impl", "auto"))
        except KeyboardInterrupt as e:
            raise training.interrupted(e, out) from None
    x_test = data.load(cfg.dataset, "test", opts["data_dir"])
    test = training.evaluate_elbo(state["params"], cfg, x_test, seed=[cfg.seed, 10**6], xp=xp)
    print(f"done: {state['epoch']} epochs, test ELBO {test.mean():.3f} "
          f"(1 sample per image, {len(test)} images); checkpoint {out}")


def localopt(opts):
    """`minivae localopt`: q* per datapoint, stage localopt_<q>."""
    params, cfg, xp = _model(opts, n=opts["n"])
    get_family(cfg.replace(q=opts["q"]))  # fail early on an unsupported family
    x, meta = _data(opts, cfg, xp)
    with stages.executor(opts["workers"], opts["scheduler"]) as runner:
        e = local.run(params, cfg, x, opts["q"], opts["out"], _localopt_settings(opts), meta, runner=runner)
    se = f" +- {e['elbo'].std(ddof=1) / np.sqrt(len(e['elbo'])):.4f}" if len(e["elbo"]) > 1 else ""
    print(f"localopt {opts['q']}: n={len(e['elbo'])}  mean L_VAE[q*_{opts['q']}]={e['elbo'].mean():.4f}"
          f"{se}  converged {int(e['converged'].sum())}/{len(e['elbo'])}, median "
          f"{int(np.median(e['steps']))} steps -> {opts['out']} [localopt_{opts['q']}]")
    settings = {**local.DEFAULTS, **_localopt_settings(opts)}
    note = local.stop_note(opts["q"], e["converged"], e["steps"], settings)
    if note:
        _note(note)


def sample(opts):
    """`minivae sample`: a grid of decoder means as a PNG."""
    sampling.run(opts["ckpt"], opts["n"], opts["out"], opts["seed"], opts["device"], opts["dtype"])
    print(f"{opts['n']} samples from {opts['ckpt']} -> {opts['out']}")


def iwae(opts):
    """`minivae iwae`: L_VAE[q] and L_IWAE[q] per datapoint, stage iwae."""
    params, cfg, xp = _model(opts, k=opts["k"], n=opts["n"])
    model.require_encoder(cfg, "minivae iwae (L_VAE[q], L_IWAE[q])")
    chunk = evaluate.decoder_chunk(opts["chunk"], cfg)
    x, meta = _data(opts, cfg, xp)
    t0 = time.perf_counter()
    with stages.executor(opts["workers"], opts["scheduler"]) as runner:
        elbo, bound = iw.stage(params, cfg, x, opts["out"], opts["k"], opts["seed"], chunk, meta, runner=runner)
    print(f"iwae: n={len(x)} k={opts['k']}  mean L_VAE[q]={elbo.mean():.4f}  "
          f"mean L_IWAE[q]={bound.mean():.4f}  ({time.perf_counter() - t0:.1f}s) -> {opts['out']} [iwae]")


def ais(opts):
    """`minivae ais`: AIS lower bounds on log p(x) per datapoint, stage ais."""
    s = _ais_settings(opts)
    params, cfg, xp = _model(opts, n=opts["n"], block=opts["block"])
    x, meta = _data(opts, cfg, xp)
    t0 = time.perf_counter()
    with stages.executor(opts["workers"], opts["scheduler"]) as runner:
        r = annealing.run(params, cfg, x, opts["out"], s, opts["seed"], opts["block"], meta, runner=runner)
    print(f"ais: n={len(r['estimate'])} chains={s.chains} steps={s.steps} leapfrog={s.leapfrog}  "
          f"mean log p(x) >= {r['estimate'].mean():.4f}  accept={r['accept'].mean():.3f}  "
          f"min ESS={r['ess'].min():.1f}  NaN rejects={int(r['nan'].sum())}  "
          f"({time.perf_counter() - t0:.1f}s) -> {opts['out']} [ais]")


def bdmc(opts):
    """`minivae bdmc`: the AIS sandwich on data simulated from the model, stage bdmc."""
    s = _ais_settings(opts)
    params, cfg, xp = _model(opts, n=opts["n"], block=opts["block"])
    meta = dict(checkpoint=evaluate.file_digest(opts["ckpt"]))     # no split: the data are simulated
    t0 = time.perf_counter()
    with stages.executor(opts["workers"], opts["scheduler"]) as runner:
        r = bidirectional.run(params, cfg, opts["n"], opts["out"], s, opts["seed"], opts["block"], meta, runner=runner)
    print(f"bdmc: n={len(r['lower'])} chains={s.chains} steps={s.steps} leapfrog={s.leapfrog}  "
          f"mean lower={r['lower'].mean():.4f}  mean upper={r['upper'].mean():.4f}  "
          f"mean width={r['width'].mean():.4f}  max width={r['width'].max():.4f}  "
          f"NaN rejects={int(r['nan'].sum())}  ({time.perf_counter() - t0:.1f}s) -> {opts['out']} [bdmc]")


def gaps(opts):
    """`minivae gaps`: every bound of the gap table (reused or run), then the table on stdout."""
    if opts["format"] not in gap.FORMATS:
        raise MinivaeError(f"unknown --format {opts['format']!r}: choose one of {', '.join(gap.FORMATS)}")
    params, cfg, xp = _model(opts, n=opts["n"], k=opts["k"])
    chunk = evaluate.decoder_chunk(opts["chunk"], cfg)
    qstar = [q.strip() for q in opts["qstar"].split(",") if q.strip()]
    if cfg.q not in qstar:
        qstar.append(cfg.q)                      # the gaps need q* of the trained family
    for q in qstar:
        get_family(cfg.replace(q=q))             # fail early on an unknown family
    if not cfg.encoder:
        if opts["no_ais"]:
            raise MinivaeError("--no-ais: this model was imported without an encoder, so log p^(x) "
                               "has no L_IWAE[q] and needs AIS; drop --no-ais")
        if opts["init"] == "encoder":
            raise MinivaeError("--init encoder needs an encoder, and this model was imported "
                               "without one: use --init prior")
        _note("note: the model has no encoder: L_VAE[q], L_IWAE[q] and the amortization and "
              "inference gaps are n/a")
    s = None if opts["no_ais"] else _ais_settings(opts)
    x, meta = _data(opts, cfg, xp)
    lo = _localopt_settings({**opts, "block": opts["localopt_block"]})
    with stages.executor(opts["workers"], opts["scheduler"]) as runner:
        results = gap.collect(params, cfg, x, opts["out"], opts["k"], chunk, s, opts["block"],
                               qstar, lo, opts["seed"], meta, progress=True, runner=runner)
    rows = gap.gap_table(results, cfg.q)
    print(gap.format_rows(rows, opts["format"], cfg.q, dict(split=opts["split"], dataset=cfg.dataset)))
    for q in qstar:                              # on stderr: stdout stays parseable
        arrays, attrs = io.load_results(opts["out"], f"localopt_{q}")
        keep = arrays["index"] < len(x)
        note = local.stop_note(q, arrays["converged"][keep], arrays["steps"][keep], attrs)
        if note:
            _note(note)


def summary(path, fmt, trained=None):
    """`minivae summary`: the gap table of a results file as it stands, over the datapoints every
    stage there holds; what each stage holds on stderr."""
    results, q, held, stops, meta = gap.stored(path, trained)
    rows = gap.gap_table(results, q)
    print(gap.format_rows(rows, fmt, q, meta))
    n = max(r["n"] for r in rows)
    _note(f"note: over the {n} datapoints every stage holds ("
          + ", ".join(f"{s} {k}" for s, k in held.items()) + ")")
    for line in stops:
        _note(line)


def reproduce(experiment, dataset, budget, out, seed, split, workers, scheduler, only=""):
    """`minivae reproduce`: one of the paper's experiments, its report in OUT/report.md."""
    names = [name.strip() for name in only.split(",") if name.strip()]
    with stages.executor(workers, scheduler) as runner:
        repro.run(experiment, dataset, budget, out or f"runs/{experiment}-{dataset}-{budget}", seed,
                  runner=runner, split=split, only=names)


def import_model(weights, spec, out):
    """`minivae import`: weights trained elsewhere into a new checkpoint (an existing --out is
    never replaced); returns the summary line."""
    if os.path.exists(out):
        raise outputs.OutputError(f"{out} exists: minivae import writes a new checkpoint; choose another "
                                  "--out or delete it")
    with outputs.claim(out, io.CHECKPOINT_KIND):
        return interop.import_model(weights, spec, out)


def export(ckpt, out, layout):
    """`minivae export`: a checkpoint as safetensors (or npz) plus its spec; returns the summary line."""
    return exporting.export_model(ckpt, out, layout)


def models():
    """`minivae models`: the shipped models, each with its provenance; returns the text."""
    # a damaged shipped file is one CheckpointError line
    rows = [pretrained.describe(name, io.load_checkpoint(name)) for name in pretrained.names()]
    if not rows:
        return "no models are shipped with this installation"
    lines = []
    for r in rows:
        bounds = ", ".join(f"{k.replace('_', ' ')} {r[k]}" for k in ("train_bound", "valid_elbo") if k in r)
        lines += [f"{r['name']}: {r['dataset']}, q {r['q']}, {r['epochs']} epochs ({bounds}), {r['mb']} MB",
                  f"    trained by: {r['command']}",
                  f"    commit {r['commit']}, {r['date']}" + (f"; log {r['log']}" if r["log"] else "")]
    return "\n".join(lines)
