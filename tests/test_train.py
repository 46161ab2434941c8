import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from minivae import io, train
from minivae.model import model, optim
from minivae.model.config import Config
from minivae.errors import CheckpointError


def tiny_cfg(**kw):
    base = dict(data_dim=784, latent=4, enc_hidden=16, dec_hidden=16, batch=20, schedule="plain",
                epochs=3, lr=1e-3, warmup_epochs=2, dtype="float64", seed=3)
    base.update(kw)
    return Config(**base)


def tiny_data(n=100, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 784)) < 0.2).astype(np.uint8)


def test_adam_matches_textbook_update():
    rng = np.random.default_rng(0)
    p0 = {"a": rng.standard_normal(5)}
    params = {"a": p0["a"].copy()}
    state = optim.adam_init(params)
    m = v = 0
    ref = p0["a"].copy()
    for t in range(1, 4):
        g = rng.standard_normal(5)
        optim.adam_step(params, {"a": g}, state, lr=0.1)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        ref = ref + 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(params["a"], ref, rtol=1e-12)


def test_batched_adam_equals_separate_adams_and_freezes_rows():
    rng = np.random.default_rng(1)
    p = {"w": rng.standard_normal((3, 4))}
    singles = [{"w": p["w"][i].copy()} for i in range(3)]
    sstates = [optim.adam_init(s) for s in singles]
    state = optim.batched_adam_init(p, 3)
    for step in range(4):
        g = rng.standard_normal((3, 4))
        active = np.array([True, step < 2, True])
        optim.batched_adam_step(p, {"w": g}, state, 0.05, active)
        for i in range(3):
            if active[i]:
                optim.adam_step(singles[i], {"w": g[i]}, sstates[i], 0.05)
    for i in range(3):
        np.testing.assert_allclose(p["w"][i], singles[i]["w"], rtol=1e-12)
    assert list(state["t"]) == [4, 2, 4]


def test_burda_schedule_and_warmup():
    sched = optim.burda_schedule()
    assert sum(n for n, _ in sched) == 3280
    cfg = Config(schedule="burda")
    assert optim.learning_rate(cfg, 0) == 1e-3
    assert np.isclose(optim.learning_rate(cfg, 1), 1e-3 * 10 ** (-1 / 7))
    assert np.isclose(optim.learning_rate(cfg, 3279), 1e-3 * 10 ** (-1))
    assert optim.entropy_weight(Config(warmup_epochs=400), 200) == 0.5
    assert optim.entropy_weight(Config(warmup_epochs=0), 0) == 1.0


def test_checkpoint_roundtrip_is_exact(tmp_path):
    cfg = tiny_cfg(dtype="float32")
    params = model.init_params(cfg, np.random.default_rng(0))
    adam = optim.adam_init(params)
    adam["t"] = 7
    path = tmp_path / "c.h5"
    io.save_checkpoint(path, params, cfg, 5, adam, {"a": 1}, {"valid_elbo": np.arange(3.0)})
    ck = io.load_checkpoint(path)
    assert ck["config"] == cfg and ck["epoch"] == 5 and ck["adam"]["t"] == 7
    for k in params:
        assert ck["params"][k].dtype == params[k].dtype
        np.testing.assert_array_equal(ck["params"][k], params[k])
    np.testing.assert_array_equal(ck["curves"]["valid_elbo"], np.arange(3.0))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        io.load_checkpoint(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(CheckpointError, match="not a readable HDF5"):
        io.load_checkpoint(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(CheckpointError, match="not a minivae checkpoint"):
        io.load_checkpoint(tmp_path / "other.h5")


def test_failed_write_leaves_nothing_behind(tmp_path):
    path = tmp_path / "c.h5"
    with pytest.raises(RuntimeError):
        with io.atomic_path(path) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_training_improves_the_bound_and_stores_curves(tmp_path):
    x = tiny_data(200)
    cfg = tiny_cfg(epochs=4, lr=3e-3)
    state = train.train(cfg, x, x[:50], tmp_path / "m.h5", progress=False)
    curves = state["curves"]
    assert list(curves["epoch"]) == [1, 2, 3, 4]
    assert curves["valid_elbo"][-1] > curves["valid_elbo"][0] + 5
    assert np.allclose(curves["lam"], [0.5, 1, 1, 1])
    assert io.load_checkpoint(tmp_path / "m.h5")["epoch"] == 4


def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(tmp_path):
    x = tiny_data(100)
    cfg = tiny_cfg(epochs=3)
    full = train.train(cfg, x, x[:20], tmp_path / "full.h5", progress=False)
    train.train(cfg, x, x[:20], tmp_path / "part.h5", progress=False, stop_after=1)
    cfg2, state = train.load_state(tmp_path / "part.h5")
    assert cfg2 == cfg and state["epoch"] == 1
    resumed = train.train(cfg2, x, x[:20], tmp_path / "part.h5", state, progress=False)
    for k in full["params"]:
        np.testing.assert_array_equal(full["params"][k], resumed["params"][k])
    np.testing.assert_array_equal(full["curves"]["valid_elbo"], resumed["curves"]["valid_elbo"])


def test_same_seed_same_numbers_different_seed_different(tmp_path):
    x = tiny_data(60)
    a = train.train(tiny_cfg(epochs=1), x, x[:20], None, progress=False)
    b = train.train(tiny_cfg(epochs=1), x, x[:20], None, progress=False)
    c = train.train(tiny_cfg(epochs=1, seed=4), x, x[:20], None, progress=False)
    np.testing.assert_array_equal(a["params"]["dec.fc0.W"], b["params"]["dec.fc0.W"])
    assert not np.array_equal(a["params"]["dec.fc0.W"], c["params"]["dec.fc0.W"])


def run_cli(args):
    result = CliRunner().invoke(cli.main, args)
    return result.exit_code, result.output


def test_cli_train_on_embedded_mnist_and_resume(tmp_path):
    out = str(tmp_path / "m.h5")
    code, text = run_cli(["train", "--epochs", "1", "--train-size", "500", "--latent", "4",
                          "--enc-hidden", "20", "--dec-hidden", "20", "--out", out])
    assert code == 0, text
    assert "test ELBO" in text and io.load_checkpoint(out)["epoch"] == 1
    ck = io.load_checkpoint(out)
    ck2 = dict(ck)
    io.save_checkpoint(out, ck["params"], ck["config"].replace(epochs=2), 1, ck["adam"],
                       ck["rng_state"], ck["curves"])
    code, text = run_cli(["train", "--resume", out])
    assert code == 0, text
    assert "resuming" in text and io.load_checkpoint(out)["epoch"] == 2
    del ck2


@pytest.mark.parametrize("args,message", [
    (["train", "--epochs", "0"], "Invalid value for '--epochs'"),
    (["train", "--latent", "0", "--epochs", "1"], "Invalid value for '--latent'"),
    (["train", "--adam-eps", "0", "--epochs", "1"], "Invalid value for '--adam-eps'"),
    (["train", "--schedule", "plain"], "needs --epochs"),
    (["train", "--dataset", "nope", "--epochs", "1"], "nope"),
    (["train", "--resume", "missing.h5"], "does not exist"),
    (["train", "--device", "gpu", "--epochs", "1"], "--device gpu"),
])
def test_cli_bad_input_is_one_line_without_traceback(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, text = run_cli(args)
    assert code != 0
    assert message in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_frozen_decoder_stays_fixed_while_a_new_encoder_trains():
    x = tiny_data(100)
    base = train.train(tiny_cfg(epochs=1), x, x[:20], None, progress=False)
    dec = {k: v for k, v in base["params"].items() if k.startswith("dec.")}
    cfg = tiny_cfg(epochs=2, enc_layers=0, freeze="dec", seed=9)
    new = train.train(cfg, x, x[:20], None, progress=False, init=dec)
    for k, v in dec.items():
        np.testing.assert_array_equal(new["params"][k], v)
    assert new["params"]["enc.fc0.W"].shape == (784, 8)
    assert new["curves"]["valid_elbo"][-1] > new["curves"]["valid_elbo"][0]
