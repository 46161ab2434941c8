"""`minivae export`: a minivae MLP checkpoint as safetensors (or .npz) and a spec beside it that
`minivae import` reads back bit for bit (interop.py has the spec's format).

Tensor names follow nn.Sequential(Linear, act, Linear, ...): encoder.{2i}.weight,
decoder.{2i}.bias, flow.<net>.{2i}.weight; in layout "pytorch" a weight is (out, in), so
`nn.Sequential(...).load_state_dict` takes them as they are.
"""
import json
import os

import numpy as np

from . import io
from .errors import SpecError
from .interop import FORMAT, LAYOUTS
from .model.posteriors import get_family
from .model.validate import validate_params


def to_spec(params, cfg, layout="pytorch"):
    """(spec, tensors) of a minivae MLP model (params with W (in, out))."""
    if cfg.arch != "mlp":
        raise SpecError(f"export: arch {cfg.arch} is unsupported: export writes MLP models only")
    if layout not in LAYOUTS:
        raise SpecError(f"export: layout {layout!r} is unknown: choose pytorch or minivae")
    out_in = LAYOUTS[layout] == "out_in"
    tensors = {}

    def net(prefix, name, n_layers):
        layers = []
        for i in range(n_layers):
            w, b = f"{name}.{2 * i}.weight", f"{name}.{2 * i}.bias"
            W = np.asarray(params[f"{prefix}.fc{i}.W"])
            tensors[w] = np.ascontiguousarray(W.T if out_in else W)
            tensors[b] = np.ascontiguousarray(params[f"{prefix}.fc{i}.b"])
            layers.append(dict(weight=w, bias=b))
        return dict(layers=layers)

    spec = dict(format=FORMAT, layout=layout, dataset=cfg.dataset, likelihood=cfg.likelihood,
                posterior=cfg.q, latent=cfg.latent, activation=cfg.act)
    if cfg.likelihood == "gaussian":
        spec["obs_std"] = cfg.obs_std
    if cfg.encoder:
        spec["encoder"] = net("enc", "encoder", cfg.enc_layers + 1)
    spec["decoder"] = net("dec", "decoder", cfg.dec_layers + 1)
    if cfg.q == "flow":
        spec["flow"] = dict(steps=cfg.flow_steps, nets={p[2:]: net(p, f"flow.{p[2:]}", 3)
                                                        for p, _ in get_family(cfg).nets()})
    return spec, tensors


def spec_path_for(out):
    """model.safetensors -> model.spec.json (beside it)."""
    root, ext = os.path.splitext(out)
    return (root if ext in (".safetensors", ".npz") else out) + ".spec.json"


def export_model(ckpt, out, layout="pytorch"):
    """Write checkpoint `ckpt` as weights `out` (.safetensors or .npz) and its spec beside it;
    returns a one-line summary."""
    ck = io.load_checkpoint(ckpt)
    validate_params(ck["config"], ck["params"], where=f"checkpoint {ckpt}")
    spec, tensors = to_spec(ck["params"], ck["config"], layout)
    spec_path = spec_path_for(out)
    with io.atomic_path(out) as tmp:
        if out.endswith(".npz"):
            np.savez(tmp, **tensors)
        else:
            from safetensors.numpy import save_file
            save_file(tensors, tmp)
    with io.atomic_path(spec_path) as tmp, open(tmp, "w") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")
    return f"exported {ckpt} ({len(tensors)} tensors, layout {layout}) -> {out}, {spec_path}"
