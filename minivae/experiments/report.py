"""DIR/report.md and DIR/settings.json: our numbers beside the paper's, figures, wall times."""
import json
import os

import numpy as np

from .. import io
from .budgets import budget_for
from .paper import paper_numbers

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
    text += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    text += ["", "## Settings", "", "```json", json.dumps(settings, indent=1), "```", ""]
    os.makedirs(out, exist_ok=True)
    for name, content in (("report.md", "\n".join(text)), ("settings.json", json.dumps(settings, indent=1))):
        path = os.path.join(out, name)
        with io.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write(content)
