"""`minivae train --train-split train+valid`: the authors' training set (MNIST: all 60 000
images), stored in the config; checkpoints written before the option load with `train`.
The same for `--adam-eps` (the authors' code: 1e-4)."""
import dataclasses
import json

import numpy as np
import pytest

from conftest import run_cli
from minivae import data, io
from minivae import train as training
from minivae.model.config import Config


def test_train_plus_valid_appends_the_validation_images():
    x_train, x_valid = training.training_data(Config())
    both, valid = training.training_data(Config(train_split="train+valid"))
    assert (len(x_train), len(both)) == (50000, 60000)
    np.testing.assert_array_equal(both[:50000], x_train)
    np.testing.assert_array_equal(both[50000:], valid)
    np.testing.assert_array_equal(valid, data.load("mnist", "valid"))
    assert len(training.training_data(Config(train_split="train+valid", train_size=70))[0]) == 70


def test_a_config_without_the_field_loads_with_the_train_split():
    old = dataclasses.asdict(Config(latent=3))
    del old["train_split"]
    cfg = Config.from_json(json.dumps(old))
    assert cfg.train_split == "train" and cfg.latent == 3


@pytest.mark.parametrize("option,first,second,field", [
    ("--train-split", "train+valid", "train", "train_split"),
    ("--adam-eps", "0.0001", "1e-08", "adam_eps"),            # the authors' Adam epsilon, and ours
])
def test_cli_stores_the_setting_and_refuses_another_on_rerun(tmp_path, option, first, second, field):
    out = str(tmp_path / "m.h5")
    tiny = ["train", "--train-size", "100", "--batch", "50", "--latent", "2", "--enc-hidden", "8",
            "--dec-hidden", "8", "--enc-layers", "1", "--dec-layers", "1", "--epochs", "1", "--out", out]
    code, text = run_cli(tiny + [option, first])
    assert code == 0, text
    assert str(getattr(io.load_checkpoint(out)["config"], field)) == first
    code, text = run_cli(tiny + [option, second])
    assert code == 2 and f"{option} {second} (checkpoint: {first})" in text, text
