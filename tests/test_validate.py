import numpy as np
import pytest

from minivae.model import model
from minivae.model.config import Config
from minivae.errors import CheckpointError
from minivae.model.validate import validate_params


def make(q="ffg", **kw):
    cfg = Config(**{**dict(data_dim=12, latent=3, enc_hidden=5, dec_hidden=4, enc_layers=1,
                           dec_layers=1, flow_hidden=4, q=q), **kw})
    return cfg, model.init_params(cfg, np.random.default_rng(0))


@pytest.mark.parametrize("q", ["ffg", "fullcov", "flow"])
def test_matching_params_pass(q):
    cfg, params = make(q)
    validate_params(cfg, params)
    validate_params(cfg, params, q=q)


@pytest.mark.parametrize("held,says", [("ffg", "flow"), ("flow", "ffg"), ("ffg", "fullcov"),
                                       ("fullcov", "ffg"), ("fullcov", "flow"), ("flow", "fullcov")])
def test_params_of_another_family_are_named(held, says):
    _, params = make(held)
    cfg, _ = make(says)
    with pytest.raises(CheckpointError, match=f"holds q={held} parameters but its config says q={says}"):
        validate_params(cfg, params, where="checkpoint m.h5")


def test_requested_family_must_be_the_checkpoints():
    cfg, params = make("ffg")
    with pytest.raises(CheckpointError, match="checkpoint m.h5 has q=ffg but flow parameters were requested"):
        validate_params(cfg, params, q="flow", where="checkpoint m.h5")


def test_size_mismatches_and_stray_keys():
    cfg, params = make("flow")
    with pytest.raises(CheckpointError, match=r"q.qv.fc0.W has shape \(3, 4\) but .* needs \(3, 5\)"):
        validate_params(cfg.replace(flow_hidden=5), params)
    with pytest.raises(CheckpointError, match="lacks parameter q.s2.s1.fc0.W"):
        validate_params(cfg.replace(flow_steps=3), params)
    with pytest.raises(CheckpointError, match="has parameter q.s1.m1.fc0.W that its config"):
        validate_params(cfg.replace(flow_steps=1), params)
    cfg, params = make("ffg")
    with pytest.raises(CheckpointError, match=r"dec.fc0.W has shape \(3, 4\) but .* needs \(3, 6\)"):
        validate_params(cfg.replace(dec_hidden=6), params)
    with pytest.raises(CheckpointError, match="lacks parameter"):
        validate_params(cfg, {k: v for k, v in params.items() if k != "dec.fc1.b"})
