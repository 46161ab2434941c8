"""Output files get the user's umask (mkstemp alone would make every one 0600)."""
import os
import stat

import numpy as np
import pytest

from minivae import io
from minivae.model import model
from minivae.model.config import Config


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_checkpoint_and_results_follow_the_umask(tmp_path, umask022):
    cfg = Config(latent=2, enc_hidden=4, dec_hidden=4, enc_layers=1, dec_layers=1)
    ckpt, results = tmp_path / "model.h5", tmp_path / "results.h5"
    io.save_checkpoint(ckpt, model.init_params(cfg, np.random.default_rng(0)), cfg)
    io.save_results(results, "iwae", {"elbo": np.zeros(3)})
    assert mode(ckpt) == 0o644 and mode(results) == 0o644
    os.umask(0o077)
    io.save_results(results, "ais", {"estimate": np.zeros(3)})  # replacing keeps the file's mode
    assert mode(results) == 0o644
    io.save_checkpoint(tmp_path / "private.h5", model.init_params(cfg, np.random.default_rng(0)), cfg)
    assert mode(tmp_path / "private.h5") == 0o600


def test_umask_is_read_without_changing_it(umask022):
    assert io._umask() == 0o022 and os.umask(0o022) == 0o022
