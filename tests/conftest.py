import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

# Tests find the shared datasets relative to the repo (../shared/data), never an absolute path.
os.environ.setdefault("MINIVAE_DATA", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
os.environ.setdefault("MINIVAE_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def run_cli(args):
    """(exit code, output) of `minivae ARGS` run in-process."""
    import cli
    result = CliRunner().invoke(cli.main, args)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A small untrained checkpoint for the embedded MNIST (latent 2, one hidden layer each)."""
    from minivae import io, model
    from minivae.config import Config
    cfg = Config(latent=2, enc_hidden=8, dec_hidden=8, enc_layers=1, dec_layers=1, dtype="float32")
    path = tmp_path_factory.mktemp("ck") / "tiny.h5"
    io.save_checkpoint(path, model.init_params(cfg, np.random.default_rng(0)), cfg)
    return str(path)
