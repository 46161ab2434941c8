"""Shipped models: paper:NAME wherever a checkpoint is read, `minivae models`, the shipped files."""
import h5py
import numpy as np
import pytest

from conftest import dataset_files, needs_data, run_cli
from minivae import io, pretrained
from minivae.model import model
from minivae.model.config import Config
from minivae.model.optim import adam_init

# models the package must carry (issue 15). The mnist-gray models read
# LeCun's idx files (not embedded): a machine without them skips its gaps runs, saying so.
SHIPPED = ("mnist-ffg", "mnist-flow", "mnist-gray-ffg", "mnist-gray-flow")
ON_DATA = [pytest.param(name, marks=needs_data(*dataset_files("mnist/")))
           if name.startswith("mnist-gray") else name for name in SHIPPED]


@pytest.fixture
def shelf(tmp_path, monkeypatch):
    """pretrained.DIR moved to a temp folder holding one tiny shipped model, paper:tiny."""
    monkeypatch.setattr(pretrained, "DIR", tmp_path / "pretrained")
    cfg = Config(latent=2, enc_hidden=8, dec_hidden=8, enc_layers=1, dec_layers=1, dtype="float64")
    params = model.init_params(cfg, np.random.default_rng(0))
    ckpt = tmp_path / "trained.h5"
    io.save_checkpoint(ckpt, params, cfg, epoch=7, adam=adam_init(params),
                       curves=dict(train_bound=np.array([-200.0, -150.5]), valid_elbo=np.array([-210.0, -160.25])))
    pretrained.ship(ckpt, "tiny", command="minivae train --q ffg", commit="abc1234", log="docs/x.log",
                    date="2026-12-02")
    return params


def test_a_shipped_model_is_float32_parameters_with_provenance(shelf):
    ck = io.load_checkpoint("paper:tiny")
    assert ck["adam"] is None and ck["epoch"] == 7 and ck["config"].dtype == "float32"
    assert set(ck["params"]) == set(shelf)
    for k, v in ck["params"].items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, shelf[k].astype(np.float32))
    np.testing.assert_array_equal(ck["curves"]["valid_elbo"], [-210.0, -160.25])
    [row] = [pretrained.describe(n, io.load_checkpoint(n)) for n in pretrained.names()]
    assert row["name"] == "paper:tiny" and row["commit"] == "abc1234" and row["valid_elbo"] == -160.25
    code, out = run_cli(["models"])
    assert code == 0
    assert "paper:tiny: mnist, q ffg, 7 epochs" in out and "trained by: minivae train --q ffg" in out
    assert "commit abc1234, 2026-12-02; log docs/x.log" in out


def test_every_command_reads_paper_names(shelf, tmp_path):
    code, out = run_cli(["iwae", "paper:tiny", "--n", "2", "--k", "5", "--out", str(tmp_path / "r.h5")])
    assert code == 0, out
    code, out = run_cli(["sample", "paper:tiny", "--n", "4", "--out", str(tmp_path / "s.png")])
    assert code == 0, out


def test_an_unknown_name_is_one_line_naming_the_choices(shelf, tmp_path):
    code, out = run_cli(["gaps", "paper:mnist-flwo", "--n", "2", "--out", str(tmp_path / "r.h5")])
    assert code == 2 and out.count("\n") == 1
    assert "no shipped model 'paper:mnist-flwo'" in out and "paper:tiny" in out


def test_a_damaged_shipped_model_is_one_line_in_models(shelf):
    path = pretrained.locate("paper:tiny")
    with h5py.File(path, "a") as f:
        del f["params"]
    code, out = run_cli(["models"])
    assert code == 2 and out.count("\n") == 1 and "incomplete or damaged" in out, out


@pytest.mark.parametrize("name", SHIPPED)
def test_the_package_ships_the_paper_models(name):
    path = pretrained.locate(f"paper:{name}")
    assert path.endswith(f"minivae/pretrained/{name}.h5")
    ck = io.load_checkpoint(f"paper:{name}")
    assert ck["adam"] is None and ck["epoch"] == 3280
    assert all(v.dtype == np.float32 for v in ck["params"].values())
    with h5py.File(path, "r") as f:
        assert all(f.attrs[k] for k in ("command", "commit", "date", "log"))


@pytest.mark.parametrize("name", ON_DATA)
def test_gaps_runs_on_a_shipped_model_offline(name, tmp_path, monkeypatch):
    """A few datapoints at reduced AIS and q* settings (the paper's settings: the slow test below)."""
    monkeypatch.setenv("MINIVAE_OFFLINE", "1")
    code, out = run_cli(["gaps", f"paper:{name}", "--n", "3", "--split", "train", "--k", "100",
                         "--chains", "4", "--steps", "20", "--qstar", "ffg", "--max-steps", "200",
                         "--out", str(tmp_path / "r.h5"), "--format", "json"])
    assert code == 0, out
    assert "nan" not in out.lower()


@pytest.mark.slow
@pytest.mark.parametrize("name", ON_DATA)
def test_gaps_on_a_shipped_model_at_the_paper_settings(name, tmp_path):
    code, out = run_cli(["gaps", f"paper:{name}", "--n", "10", "--split", "train", "--qstar", "ffg",
                         "--out", str(tmp_path / "r.h5")])
    assert code == 0, out
