"""`minivae train --train-split train+valid`: the authors' training set (MNIST: all 60 000
images), stored in the config; checkpoints written before the option load with `train`."""
import dataclasses
import json

import numpy as np

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


def test_cli_stores_the_split_and_refuses_another_on_rerun(tmp_path):
    out = str(tmp_path / "m.h5")
    tiny = ["train", "--train-size", "100", "--batch", "50", "--latent", "2", "--enc-hidden", "8",
            "--dec-hidden", "8", "--enc-layers", "1", "--dec-layers", "1", "--epochs", "1", "--out", out]
    code, text = run_cli(tiny + ["--train-split", "train+valid"])
    assert code == 0, text
    assert "not held out" in text and io.load_checkpoint(out)["config"].train_split == "train+valid"
    code, text = run_cli(tiny + ["--train-split", "train"])
    assert code == 2 and "--train-split train (checkpoint: train+valid)" in text
