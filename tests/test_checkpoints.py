"""Every command checks the checkpoint it loads (io.load_checkpoint): a missing or extra
parameter, a wrong shape or dtype, a config that disagrees with the weights, NaN or inf in a
parameter or an Adam moment is one line naming the file and the tensor, exit code 2, and
nothing computed or written."""
import json
import re
import shutil

import h5py
import numpy as np
import pytest

from minivae import io, train
from minivae.model import model, optim
from minivae.experiments import training
from minivae.backend import rng_state
from minivae.model.config import Config
from minivae.errors import CheckpointError
from conftest import run_cli


def replace(f, name, array):
    del f[name]
    f[name] = array


def set_value(f, name, index, value):
    a = f[name][()]
    a[index] = value
    f[name][...] = a


def set_config(f, **changes):
    f.attrs["config"] = json.dumps({**json.loads(f.attrs["config"]), **changes})


# damage -> (how, the tensor the error must name)
DAMAGE = {
    "deleted": (lambda f: f.__delitem__("params/dec/fc1/W"), "dec.fc1.W"),
    "extra": (lambda f: f.create_dataset("params/dec/fc2/W", data=np.zeros((8, 784), np.float32)), "dec.fc2.W"),
    "shape": (lambda f: replace(f, "params/dec/fc1/W", np.zeros((8, 700), np.float32)), "dec.fc1.W"),
    "dtype": (lambda f: replace(f, "params/enc/fc0/b", np.zeros(8, np.int32)), "enc.fc0.b"),
    "float64": (lambda f: replace(f, "params/enc/fc0/b", np.zeros(8, np.float64)), "enc.fc0.b"),
    "config": (lambda f: set_config(f, latent=3), "enc.fc1.W"),
    "nan": (lambda f: set_value(f, "params/dec/fc1/W", (0, 0), np.nan), "dec.fc1.W"),
    "inf": (lambda f: set_value(f, "params/enc/fc0/W", (3, 3), -np.inf), "enc.fc0.W"),
}
AIS = ["--chains", "2", "--steps", "3", "--leapfrog", "1", "--block", "2"]
LOCALOPT = ["--max-steps", "20", "--samples", "2", "--check-every", "10", "--patience", "1",
            "--final-samples", "4"]
COMMANDS = {
    "iwae": ["iwae", "CKPT", "--n", "2", "--k", "4", "--out", "out.h5"],
    "ais": ["ais", "CKPT", "--n", "2", *AIS, "--out", "out.h5"],
    "bdmc": ["bdmc", "CKPT", "--n", "2", *AIS, "--out", "out.h5"],
    "localopt": ["localopt", "CKPT", "--n", "2", "--block", "2", *LOCALOPT, "--out", "out.h5"],
    "gaps": ["gaps", "CKPT", "--n", "2", "--k", "4", *AIS, "--qstar", "ffg", "--localopt-block", "2",
             *LOCALOPT, "--out", "out.h5"],
    "sample": ["sample", "CKPT", "--n", "4", "--out", "out.png"],
    "train": ["train", "--resume", "CKPT"],
}


def damaged(source, folder, damage):
    path = folder / "damaged.h5"
    shutil.copy(source, path)
    with h5py.File(path, "r+") as f:
        DAMAGE[damage][0](f)
    return path


def assert_refused(code, text, path, tensor):
    assert code == 2, text
    assert "Traceback" not in text and text.strip().splitlines() == [text.strip()], text
    assert text.startswith("Error: ") and str(path) in text and tensor in text, text


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_one_line_naming_file_and_tensor(tiny_ckpt, tmp_path, monkeypatch,
                                                                  command, damage):
    monkeypatch.chdir(tmp_path)
    path = damaged(tiny_ckpt, tmp_path, damage)
    before = path.read_bytes()
    code, text = run_cli([str(path) if a == "CKPT" else a for a in COMMANDS[command]])
    assert_refused(code, text, path, DAMAGE[damage][1])
    assert [p.name for p in tmp_path.iterdir()] == ["damaged.h5"]     # no output, no temp file
    assert path.read_bytes() == before


@pytest.mark.parametrize("q", ["ffg", "fullcov", "flow"])
def test_the_loader_checks_every_family(tmp_path, q):
    cfg = Config(data_dim=12, latent=3, enc_hidden=5, dec_hidden=4, enc_layers=1, dec_layers=1,
                 flow_hidden=4, q=q)
    params = model.init_params(cfg, np.random.default_rng(0))
    path = tmp_path / "m.h5"
    io.save_checkpoint(path, params, cfg)
    assert set(io.load_checkpoint(path)["params"]) == set(params)
    key = sorted(k for k in params if k.startswith("q.") or k == "enc.fc1.W")[-1]
    with h5py.File(path, "r+") as f:
        set_value(f, "params/" + key.replace(".", "/"), 0, np.nan)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: {key} holds NaN")):
        io.load_checkpoint(path)


# ---- the optimiser state of a resumable checkpoint (train --resume, reproduce's reuse) ------------

@pytest.fixture
def resumable(tmp_path):
    """A checkpoint after 1 of 2 epochs, with Adam moments and the RNG state."""
    cfg = Config(latent=2, enc_hidden=8, dec_hidden=8, enc_layers=1, dec_layers=1, schedule="plain",
                 epochs=2, warmup_epochs=0, batch=50, train_size=100)
    params = model.init_params(cfg, np.random.default_rng(0))
    adam = optim.adam_init(params)
    adam.update(t=2, m={k: v + 0.1 for k, v in adam["m"].items()}, v={k: v + 0.1 for k, v in adam["v"].items()})
    path = tmp_path / "model.h5"
    io.save_checkpoint(path, params, cfg, 1, adam, rng_state(np.random.default_rng(0)),
                       {k: np.zeros(1) for k in train.CURVES})
    return cfg, path


ADAM_DAMAGE = {
    "nan": (lambda f: set_value(f, "adam/m/dec/fc1/W", (0, 0), np.nan), "Adam m of dec.fc1.W"),
    "negative": (lambda f: set_value(f, "adam/v/enc/fc0/b", 2, -1.0), "Adam v of enc.fc0.b"),
    "deleted": (lambda f: f.__delitem__("adam/v/dec/fc0/b"), "Adam v of dec.fc0.b"),
    "shape": (lambda f: replace(f, "adam/m/enc/fc1/W", np.zeros((4, 8), np.float32)), "Adam m of enc.fc1.W"),
    "params": (lambda f: set_value(f, "params/dec/fc0/W", (1, 1), np.inf), "dec.fc0.W"),
}


def test_an_undamaged_checkpoint_resumes(resumable, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, text = run_cli(["train", "--resume", str(resumable[1])])
    assert code == 0 and "resuming" in text, text


@pytest.mark.parametrize("damage", list(ADAM_DAMAGE))
def test_train_resume_checks_the_optimiser_state(resumable, tmp_path, monkeypatch, damage):
    monkeypatch.chdir(tmp_path)
    _, path = resumable
    with h5py.File(path, "r+") as f:
        ADAM_DAMAGE[damage][0](f)
    before = path.read_bytes()
    code, text = run_cli(["train", "--resume", str(path)])
    assert_refused(code, text, path, ADAM_DAMAGE[damage][1])
    assert path.read_bytes() == before


@pytest.mark.parametrize("damage", list(ADAM_DAMAGE))
def test_reproduce_checks_a_model_it_would_reuse(resumable, damage):
    cfg, path = resumable
    with h5py.File(path, "r+") as f:
        ADAM_DAMAGE[damage][0](f)
    x = np.zeros((100, 784), np.uint8)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {path}") + ".*" + re.escape(ADAM_DAMAGE[damage][1])):
        training.train_or_reuse(str(path), cfg, x, x[:10], log=lambda _: None)
