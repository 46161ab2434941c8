"""Figures 2 and 3 of the paper, run by `minivae reproduce fig2|fig3`.

fig2: the 2-D latent VAE (decoder 2-100-784, encoder 784-100-4, tanh, batch 50) and its
posteriors for four training datapoints (see fig2.py).
fig3: VAE, IWAE and AIS bounds on train and test data during training, for FFG and Flow, on
the full training set and on a 1000-datapoint training set.
"""
import os
import time

import numpy as np

from .. import data, io
from . import fig2
from ..estimators import ais, iwae
from ..model.config import Config
from ..plots.plotting import pyplot
from .budgets import BUDGETS
from .report import write_report
from .training import train_or_reuse


def run_fig2(dataset, budget, out, seed=0, log=print):
    b = BUDGETS[budget]["fig2"]
    cfg = Config(dataset=dataset, latent=2, enc_hidden=100, enc_layers=1, dec_hidden=100,
                 dec_layers=1, act="tanh", batch=50, schedule="plain", epochs=b["epochs"],
                 lr=b["lr"], warmup_epochs=0, train_size=b["train_size"], seed=seed)
    x_train, x_valid = data.load(dataset, "train"), data.load(dataset, "valid")
    timings = {}
    params, timings["train"] = train_or_reuse(os.path.join(out, "models", "latent2.h5"), cfg,
                                              x_train, x_valid, log=log)
    t0 = time.perf_counter()
    result = fig2.compute(params, cfg, x_train[:b["pool"]], seed,
                          localopt=dict(max_steps=b["max_steps"]), flow_samples=b["flow_samples"])
    timings["posteriors (grid, q* FFG and Flow)"] = time.perf_counter() - t0
    fig2.plot(result, os.path.join(out, "fig2.png"))
    io.save_results(os.path.join(out, "results", "fig2.h5"), "fig2",
                    {k: v for k, v in result.items()})
    lines = ["| datapoint | training index | log p(x) (grid) | L[q*_Flow] (start) | L[q*_FFG] (start) "
             "| L[q] amortized | correlation | 2nd mode / 1st |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in range(4):
        lines.append(f"| {'ABCD'[c]} | {result['index'][c]} | {result['logpx'][c]:.2f} | "
                     f"{result['optimal_flow_elbo'][c]:.2f} ({result['optimal_flow_start'][c].decode()}) | "
                     f"{result['optimal_ffg_elbo'][c]:.2f} ({result['optimal_ffg_start'][c].decode()}) | "
                     f"{result['amortized_elbo'][c]:.2f} | {result['corr'][c]:.2f} | "
                     f"{result['mode_ratio'][c]:.2f} |")
    lines.append("\nq* was fitted from three starts per datapoint (the paper's N(0, I), the amortized "
                 "q, the grid posterior's moments); the panel shows the one with the highest L[q*] "
                 "(5000 samples), and the start it came from is in brackets.")
    write_report("fig2", dataset, budget, out, {}, timings, seed, figures=["fig2.png"],
                 extra="\n".join(lines) + "\n")
    return result


def curve_points(params, cfg, x, k, ais_settings, seed):
    """Mean L_VAE, L_IWAE (k samples) and AIS over the rows of x."""
    xe = x.astype(cfg.dtype)
    index = np.arange(len(x))
    elbo, iw = iwae.bounds(params, cfg, xe, index, k, seed)
    stats = ais.forward(params, cfg, xe, index, seed, ais.Settings(**ais_settings))[0]
    return float(elbo.mean()), float(iw.mean()), float(stats["estimate"].mean())


def run_fig3(dataset, budget, out, seed=0, log=print):
    b = BUDGETS[budget]
    f = b["fig3"]
    x_train, x_valid = data.load(dataset, "train"), data.load(dataset, "valid")
    x_test = data.load(dataset, "test")[:f["n"]]
    timings, curves = {}, {}
    for q in ("ffg", "flow"):
        for size in ("full", "small"):
            name = f"{q}_{size}"
            # the 1000-image models may train longer (budget "small_train"): epochs are cheap
            t = {**dict(epochs=f["epochs"], every=f["every"], warmup_epochs=b["train"]["warmup_epochs"]),
                 **(f.get("small_train", {}) if size == "small" else {})}
            cfg = Config(dataset=dataset, q=q, schedule=b["train"]["schedule"], epochs=t["epochs"],
                         lr=b["train"].get("lr", 1e-3), warmup_epochs=t["warmup_epochs"],
                         train_size=f["small"] if size == "small" else b["train"].get("train_size", 0),
                         seed=seed)
            path = os.path.join(out, "models", f"{name}.h5")
            results = os.path.join(out, "results", "fig3.h5")
            prev = io.load_results(results, name)
            rows = prev[0]["rows"].tolist() if prev else []
            t0 = time.perf_counter()
            for epoch in range(t["every"], t["epochs"] + 1, t["every"]):
                if any(r[0] == epoch for r in rows):
                    continue
                params, _ = train_or_reuse(path, cfg.replace(epochs=epoch), x_train, x_valid, log=log)
                xt = (x_train[:cfg.train_size] if cfg.train_size else x_train)[:f["n"]]
                rows.append([epoch, *curve_points(params, cfg, xt, f["k"], f["ais"], seed),
                             *curve_points(params, cfg, x_test, f["k"], f["ais"], seed)])
                io.save_results(results, name, dict(rows=np.array(rows)),
                                dict(columns="epoch,train_vae,train_iwae,train_ais,test_vae,test_iwae,test_ais"))
            timings[name] = time.perf_counter() - t0
            curves[name] = np.array(rows)
    plot_fig3(curves, os.path.join(out, "fig3.png"))
    write_report("fig3", dataset, budget, out, {}, timings, seed, figures=["fig3.png"],
                 extra="The paper's text gives no numbers for these curves; ours are shown alone.\n")
    return curves


def plot_fig3(curves, path):
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 8), sharex="col")
    names = ["VAE", "IWAE", "AIS"]
    for c, size in enumerate(("full", "small")):
        for r, q in enumerate(("ffg", "flow")):
            ax, rows = axes[r, c], curves[f"{q}_{size}"]
            for j, n in enumerate(names):
                ax.plot(rows[:, 0], rows[:, 1 + j], "-", label=f"{n} train", color=f"C{j}")
                ax.plot(rows[:, 0], rows[:, 4 + j], "--", label=f"{n} test", color=f"C{j}")
            ax.set_title(f"{q.upper()}, {'full training set' if size == 'full' else '1000 training points'}")
            ax.set_xlabel("epoch")
            ax.set_ylabel("nats")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
