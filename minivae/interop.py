"""Bring your own VAE: weights trained elsewhere <-> a minivae checkpoint (`import`, `export`).

A spec (JSON, or TOML) names the tensors of each Linear layer of an MLP VAE:

    {"layout": "pytorch", "dataset": "mnist", "likelihood": "bernoulli", "posterior": "ffg",
     "activation": "elu",
     "encoder": {"layers": [{"weight": "enc.0.weight", "bias": "enc.0.bias"}, ...,
                            {"heads": [{"weight": "mu.weight", ...}, {"weight": "lv.weight", ...}]}]},
     "decoder": {"layers": [{"weight": "dec.0.weight", "bias": "dec.0.bias"}, ...]}}

Layer i computes h_{i+1} = act(h_i W_i + b_i), no act after the last; W_i is (in, out) in layout
"minivae" (= "in_out"), (out, in) in "pytorch" (= "out_in", nn.Linear.weight). `heads` join
their outputs (the encoder's mu, then logvar). A layer, a net or the spec may set "layout"; a net
or the spec "activation". No "encoder": a decoder alone (cfg.encoder False). Posterior "flow"
adds "flow": {"steps": T, "nets": {"qv": net, "rv": net, "s0.s1": net, ...}} (flow.py's nets).
The result is an ordinary checkpoint: keys enc.fc{i}, dec.fc{i}, q.<net>.fc{i} ({W, b});
export.py writes the other way.
"""
import difflib
import json
import os

import numpy as np

from . import data, io
from .model import nn
from .model.config import Config
from .model.model import dec_sizes, enc_sizes
from .errors import SpecError
from .model.posteriors import get_family
from .model.validate import validate_params

FORMAT = "minivae-spec/1"
LAYOUTS = {"pytorch": "out_in", "out_in": "out_in", "minivae": "in_out", "in_out": "in_out",
           "jax": "in_out", "flax": "in_out"}
TOP_KEYS = {"format", "layout", "dataset", "likelihood", "obs_std", "posterior", "latent",
            "activation", "encoder", "decoder", "flow"}
NET_KEYS = {"layers", "layout", "activation"}
LAYER_KEYS = {"weight", "bias", "layout", "heads"}
NEEDS = dict(ffg="mu then logvar", flow="mu0 then logvar0",
             fullcov="mu, then L's lower triangle row by row with log diagonal")


def _must_exist(path, what):
    if not os.path.exists(path):
        raise SpecError(f"{what} file {path} does not exist: check the path")


def read_tensors(path):
    """{name: array} from a safetensors file (its NumPy API) or an .npz."""
    _must_exist(path, "weights")
    npz = path.endswith(".npz")
    try:
        if npz:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        from safetensors.numpy import load_file
        return load_file(path)
    except ImportError:
        raise SpecError("reading safetensors needs the safetensors package: pip install safetensors")
    except Exception as e:  # each reader raises its own types; the first line says what broke
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecError(f"{path} is not a readable {'.npz' if npz else 'safetensors'} file ({why}); "
                        "bfloat16 tensors: save them as float32")


def read_spec(path):
    """The spec as a dict, from JSON or (name ending .toml) TOML."""
    _must_exist(path, "spec")
    toml = path.endswith(".toml")
    try:
        if toml:
            import tomllib
            with open(path, "rb") as f:
                return tomllib.load(f)
        with open(path) as f:
            spec = json.load(f)
    except ValueError as e:  # JSONDecodeError and TOMLDecodeError both are
        raise SpecError(f"spec {path} is not valid {'TOML' if toml else 'JSON'}: {e}")
    if not isinstance(spec, dict):
        raise SpecError(f"spec {path} must be a JSON object at the top")
    return spec


def _check_keys(d, allowed, where):
    if not isinstance(d, dict):
        raise SpecError(f"spec: {where} must be an object, got {type(d).__name__}")
    extra = sorted(set(d) - allowed)
    if extra:
        raise SpecError(f"spec: unknown key {extra[0]!r} in {where} (known: {', '.join(sorted(allowed))})")


def _layout(value, where):
    if value not in LAYOUTS:
        raise SpecError(f"spec: layout {value!r} of {where} is unknown: choose pytorch (weight "
                        "(out, in)) or minivae (weight (in, out))")
    return LAYOUTS[value]


def _activation(name, where):
    if name is None:
        raise SpecError(f"spec: {where} has no activation: give \"activation\" (one of "
                        f"{', '.join(nn.ACTIVATIONS)}) in the spec or the net")
    act = {"identity": "linear", "none": "linear"}.get(str(name).lower(), str(name).lower())
    if act not in nn.ACTIVATIONS:
        raise SpecError(f"spec: activation {name!r} of {where} is unknown to minivae (it has "
                        f"{', '.join(nn.ACTIVATIONS)})")
    return act


def _tensor(tensors, name, what):
    """The named array, checked to be floating point and finite."""
    if not isinstance(name, str):
        raise SpecError(f"spec: {what} must be a tensor name, got {name!r}")
    if name not in tensors:
        close = difflib.get_close_matches(name, list(tensors), 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"tensor {name!r} ({what}) is missing from the weights file{hint}")
    a = np.asarray(tensors[name])
    if a.dtype.kind != "f":
        raise SpecError(f"tensor {name!r} ({what}) has dtype {a.dtype}: weights must be floating point")
    bad = a.size - int(np.isfinite(a).sum())
    if bad:
        raise SpecError(f"tensor {name!r} ({what}) has {bad} non-finite values (NaN or inf)")
    return a


def _linear(tensors, layer, layout, what):
    """(W (in, out), b (out,), name of the weight tensor) of one layer of the spec."""
    _check_keys(layer, LAYER_KEYS, what)
    layout = _layout(layer.get("layout", layout), what)
    if "heads" in layer:
        heads = layer["heads"]
        if set(layer) & {"weight", "bias"} or not isinstance(heads, list) or not heads:
            raise SpecError(f"spec: {what} needs either a list of heads or a weight, not both")
        parts = [_linear(tensors, h, layout, f"{what} head {j}") for j, h in enumerate(heads)]
        for W, _, name in parts[1:]:
            if W.shape[0] != parts[0][0].shape[0]:
                raise SpecError(f"tensor {name!r} ({what}) takes {W.shape[0]} inputs but head 0 "
                                f"({parts[0][2]!r}) takes {parts[0][0].shape[0]}")
        return (np.concatenate([p[0] for p in parts], 1), np.concatenate([p[1] for p in parts]),
                parts[0][2])
    if "weight" not in layer:
        raise SpecError(f"spec: {what} names no weight tensor")
    name = layer["weight"]
    W = _tensor(tensors, name, f"{what} weight")
    if W.ndim != 2:
        raise SpecError(f"tensor {name!r} ({what} weight) has shape {W.shape}: minivae imports "
                        "Linear layers, whose weight is 2-D")
    W = np.ascontiguousarray(W.T if layout == "out_in" else W)
    if layer.get("bias") is None:            # nn.Linear(bias=False)
        return W, np.zeros(W.shape[1], W.dtype), name
    b = _tensor(tensors, layer["bias"], f"{what} bias")
    if b.shape != (W.shape[1],):
        raise SpecError(f"tensor {layer['bias']!r} ({what} bias) has shape {b.shape} but its weight "
                        f"{name!r} has {W.shape[1]} outputs in layout {layout}")
    return W, b, name


def _net(tensors, net, where, layout, act):
    """[(W, b, name)] of a net whose layers chain, and its activation."""
    _check_keys(net, NET_KEYS, where)
    layers = net.get("layers")
    if not isinstance(layers, list) or not layers:
        raise SpecError(f"spec: {where} needs a non-empty list \"layers\"")
    layout = net.get("layout", layout)
    act = _activation(net.get("activation", act), where)
    out = [_linear(tensors, layer, layout, f"{where} layer {i}") for i, layer in enumerate(layers)]
    for i in range(1, len(out)):
        (W0, _, n0), (W1, _, n1) = out[i - 1], out[i]
        if W1.shape[0] != W0.shape[1]:
            raise SpecError(f"tensor {n1!r} ({where} layer {i}) takes {W1.shape[0]} inputs but layer "
                            f"{i - 1} ({n0!r}) outputs {W0.shape[1]}: check the layer order and layout")
    return out, act


def _sizes(layers):
    return [layers[0][0].shape[0]] + [W.shape[1] for W, _, _ in layers]


def _hidden(layers, where):
    """The one hidden width of a net (None without hidden layers); minivae's MLPs have one."""
    widths = _sizes(layers)[1:-1]
    if len(set(widths)) > 1:
        raise SpecError(f"{where}: hidden widths {'-'.join(map(str, widths))} differ (tensor "
                        f"{layers[1][2]!r}): minivae's MLPs have one width per net; unsupported")
    return widths[0] if widths else None


def _flow_nets(tensors, spec, latent, layout, act, params):
    """Check and store the flow's nets q.<net>.fc{i}; returns (steps, hidden)."""
    flow = spec.get("flow")
    _check_keys(flow, {"steps", "nets", "layout", "activation"}, "flow")
    steps = flow.get("steps")
    if not isinstance(steps, int) or steps < 1:
        raise SpecError(f"spec: flow steps must be a positive integer, got {steps!r}")
    nets = flow.get("nets")
    _check_keys(nets, set(nets or {}), "flow nets")
    family = get_family(Config(q="flow", latent=latent, flow_steps=steps))
    want = {prefix[2:]: n_out for prefix, n_out in family.nets()}
    for k in list(nets) + list(want):
        if k not in want:
            raise SpecError(f"spec: flow net {k!r} is unknown: a flow of {steps} steps has "
                            "nets qv, rv and s{t}.{s1,m1,s2,m2}")
        if k not in nets:
            raise SpecError(f"spec: flow net {k!r} is missing: a flow of {steps} steps has "
                            "nets qv, rv and s{t}.{s1,m1,s2,m2}")
    hidden = None
    for k, n_out in want.items():
        layers, a = _net(tensors, nets[k], f"flow net {k}", flow.get("layout", layout),
                         flow.get("activation", act))
        if a != act:
            raise SpecError(f"spec: flow net {k} activation {a} differs from the decoder's {act}: "
                            "minivae uses one activation in every net; unsupported")
        hidden = hidden or _sizes(layers)[1]
        got, need = _sizes(layers), [latent, hidden, hidden, n_out]
        if got != need:
            raise SpecError(f"flow net {k} (tensor {layers[0][2]!r}): layer sizes {'-'.join(map(str, got))} "
                            f"but minivae's flow nets are Z-H-H-out = {'-'.join(map(str, need))}")
        _store(params, f"q.{k}", layers)
    return steps, hidden


def _store(params, prefix, layers):
    for i, (W, b, _) in enumerate(layers):
        params[f"{prefix}.fc{i}.W"], params[f"{prefix}.fc{i}.b"] = W, b


def build(spec, tensors):
    """(params, cfg) of the minivae model that `spec` makes of `tensors` ({name: array})."""
    _check_keys(spec, TOP_KEYS, "the spec")
    if spec.get("format", FORMAT) != FORMAT:
        raise SpecError(f"spec format {spec['format']!r} is not {FORMAT!r}")
    if "layout" not in spec:
        raise SpecError("spec: give \"layout\": \"pytorch\" (weight (out, in)) or \"minivae\" (in, out)")
    layout, act = spec["layout"], spec.get("activation")
    _layout(layout, "the spec")
    lik, q = spec.get("likelihood", "bernoulli"), spec.get("posterior", "ffg")
    if lik not in ("bernoulli", "gaussian"):
        raise SpecError(f"spec: likelihood {lik!r} is unsupported for import (minivae's discretized "
                        "logistic belongs to its conv model): use bernoulli or gaussian")
    if q not in NEEDS:
        raise SpecError(f"spec: posterior {q!r} is unknown: choose ffg, fullcov or flow")
    if "decoder" not in spec:
        raise SpecError("spec: no \"decoder\": minivae needs at least the decoder's layers")
    dec, act = _net(tensors, spec["decoder"], "decoder", layout, act)
    latent, D = _sizes(dec)[0], _sizes(dec)[-1]
    if spec.get("latent", latent) != latent:
        raise SpecError(f"tensor {dec[0][2]!r} (decoder layer 0) takes {latent} inputs but the spec "
                        f"says latent {spec['latent']}")
    dataset = spec.get("dataset", "mnist")
    if data.info(dataset)["D"] != D:
        raise SpecError(f"tensor {dec[-1][2]!r} (decoder layer {len(dec) - 1}) outputs {D} values but "
                        f"dataset {dataset} has {data.info(dataset)['D']} per row")
    params = {}
    cfg = Config(dataset=dataset, data_dim=D, likelihood=lik, obs_std=float(spec.get("obs_std", 1.0)),
                 q=q, latent=latent, dec_layers=len(dec) - 1, act=act, encoder="encoder" in spec)
    cfg = cfg.replace(dec_hidden=_hidden(dec, "decoder") or cfg.dec_hidden)
    if cfg.encoder:
        enc, a = _net(tensors, spec["encoder"], "encoder", layout, spec.get("activation"))
        if a != act:
            raise SpecError(f"spec: encoder activation {a} differs from the decoder's {act}: "
                            "minivae uses one activation in every net; unsupported")
        if _sizes(enc)[0] != D:
            raise SpecError(f"tensor {enc[0][2]!r} (encoder layer 0) takes {_sizes(enc)[0]} inputs "
                            f"but the decoder outputs {D}")
        n_out = get_family(cfg).n_out
        if _sizes(enc)[-1] != n_out:
            raise SpecError(f"tensor {enc[-1][2]!r} (encoder layer {len(enc) - 1}) outputs "
                            f"{_sizes(enc)[-1]} values but posterior {q} with latent {latent} needs "
                            f"{n_out} ({NEEDS[q]})")
        cfg = cfg.replace(enc_layers=len(enc) - 1, enc_hidden=_hidden(enc, "encoder") or cfg.enc_hidden)
        _store(params, "enc", enc)
    else:
        cfg = cfg.replace(enc_layers=0)
    _store(params, "dec", dec)
    if q == "flow":
        if "flow" not in spec:
            raise SpecError("spec: posterior flow needs \"flow\": {\"steps\": T, \"nets\": {...}}")
        steps, hidden = _flow_nets(tensors, spec, latent, layout, act, params)
        cfg = cfg.replace(flow_steps=steps, flow_hidden=hidden)
    elif "flow" in spec:
        raise SpecError(f"spec: \"flow\" is given but the posterior is {q}: set \"posterior\": \"flow\"")
    dtype = np.result_type(*params.values(), np.float32)   # float16 -> float32, exactly
    cfg = cfg.replace(dtype=np.dtype(dtype).name)
    params = {k: v.astype(dtype) for k, v in params.items()}
    validate_params(cfg, params, where="imported model")
    return params, cfg


def import_model(weights, spec_path, out):
    """Read WEIGHTS and SPEC, check them, write checkpoint `out`; returns a one-line summary."""
    params, cfg = build(read_spec(spec_path), read_tensors(weights))
    io.save_checkpoint(out, params, cfg)
    enc = "-".join(map(str, enc_sizes(cfg, get_family(cfg).n_out))) if cfg.encoder else "none"
    return (f"imported {weights}: encoder {enc}, decoder {'-'.join(map(str, dec_sizes(cfg)))}, "
            f"q={cfg.q}, {cfg.act}, {cfg.likelihood}, {cfg.dtype} -> {out}")
