"""Does a checkpoint's parameter dict fit its config, and the family a command asks for?

Loading ffg weights as a flow (or a latent-50 model as latent-20) would otherwise fail deep
inside a matrix product, or silently run the wrong model; this names the first mismatch.
"""
import numpy as np

from . import model
from ..errors import CheckpointError
from .posteriors import get_family


def expected_shapes(cfg):
    """{key: shape} of every parameter of model.init_params(cfg)."""
    params = model.init_params(cfg.replace(dtype="float32"), np.random.default_rng(0))
    return {k: tuple(v.shape) for k, v in params.items()}


def guess_family(cfg, params):
    """Which family's parameters `params` holds (by its keys and encoder width), or None."""
    if any(k.startswith("q.") for k in params):
        return "flow"
    conv = cfg.arch == "conv"
    b = params.get("enc.fc.b" if conv else f"enc.fc{cfg.enc_layers}.b")
    W = params.get("dec.fc.W" if conv else "dec.fc0.W")
    if b is None or W is None:
        return None
    Z, width = W.shape[0], b.shape[-1]
    if width == 2 * Z:
        return "ffg"
    if width == Z + Z * (Z + 1) // 2:
        return "fullcov"
    return None


def validate_params(cfg, params, q=None, where="checkpoint"):
    """Raise a one-line CheckpointError at the first way `params` differs from what
    model.init_params(cfg) makes (keys, then shapes), or if `q` is given and is not cfg.q."""
    if q is not None and q != cfg.q:
        raise CheckpointError(f"{where} has q={cfg.q} but {q} parameters were requested: pass a "
                              f"checkpoint trained with --q {q}")
    get_family(cfg)  # an unknown family in the config is reported as such
    want = expected_shapes(cfg)
    held = guess_family(cfg, params)
    if held is not None and held != cfg.q and not (cfg.latent == 1 and {held, cfg.q} == {"ffg", "fullcov"}):
        raise CheckpointError(f"{where} holds q={held} parameters but its config says q={cfg.q}: "
                              "the file is inconsistent; retrain or pass another checkpoint")
    for k in want:                                    # init order: enc, dec, then q.*
        if k not in params:
            raise CheckpointError(f"{where} lacks parameter {k} that its config (q={cfg.q}, "
                                  f"latent={cfg.latent}) needs: retrain or pass another checkpoint")
    for k in sorted(params):
        if k not in want:
            raise CheckpointError(f"{where} has parameter {k} that its config (q={cfg.q}) does not "
                                  "use: it was written for another model")
    for k in want:
        got = tuple(params[k].shape)
        if got != want[k]:
            raise CheckpointError(f"{where}: {k} has shape {got} but its config (q={cfg.q}, "
                                  f"latent={cfg.latent}) needs {want[k]}: the sizes do not match")


def validate_checkpoint(cfg, params, adam=None, where="checkpoint"):
    """validate_params, then every tensor's dtype (the config's) and values (finite), and the
    Adam moments when present (the params' keys, shapes and dtype; finite; v >= 0)."""
    validate_params(cfg, params, where=where)
    dtype = np.dtype(cfg.dtype)
    tensors = [("", params)]
    if adam is not None:
        tensors += [(f"Adam {m} of ", adam[m]) for m in ("m", "v")]
    for what, arrays in tensors:
        for k in params:
            if k not in arrays:
                raise CheckpointError(f"{where} lacks {what}{k}: the file is damaged; retrain or "
                                      "pass another checkpoint")
        for k in sorted(arrays):
            if k not in params:
                raise CheckpointError(f"{where} has {what}{k}, a parameter its model does not have: "
                                      "the file is damaged")
            a = arrays[k]
            if a.shape != params[k].shape:
                raise CheckpointError(f"{where}: {what}{k} has shape {a.shape} but the parameter has "
                                      f"{params[k].shape}: the file is damaged")
            if a.dtype != dtype:
                raise CheckpointError(f"{where}: {what}{k} has dtype {a.dtype} but its config says "
                                      f"{dtype}: the file is damaged or was not written by minivae")
            if not np.isfinite(a).all():
                raise CheckpointError(f"{where}: {what}{k} holds NaN or inf values (training diverged "
                                      "or the file is damaged): retrain or pass another checkpoint")
            if what.startswith("Adam v") and (a < 0).any():
                raise CheckpointError(f"{where}: {what}{k} holds negative second moments: the file is "
                                      "damaged")
