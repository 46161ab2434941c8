"""CIFAR-10 wiring: data scaling, `minivae train --dataset cifar10` defaults, BDMC's simulation
of the discretized logistic, and every command end to end on a tiny synthetic CIFAR tarball."""
import hashlib
import tarfile

import numpy as np
import pytest

import cli
from conftest import run_cli
from minivae.estimators import bdmc
from minivae import data, io, train
from minivae.model.densities import discretized_logistic


def default_train_options(**given):
    """`train`'s options as click resolves them, not `param.default`: click 8.5 gives a flag's
    default as a sentinel object (truthy), which turned `--no-warmup` on."""
    return {**cli.train.make_context("train", []).params, **given}


def test_to_float_scales_cifar_pixels_to_bin_edges():
    x = np.array([[0, 1, 255]], np.uint8)
    assert np.array_equal(data.to_float(x, "logistic", "float32"), np.array([[0, 1 / 256, 255 / 256]], np.float32))
    assert np.array_equal(data.to_float(x[:, :2], "bernoulli", "float64"), np.array([[0.0, 1.0]]))


def test_cifar_train_defaults_and_overrides():
    assert default_train_options()["no_warmup"] is False  # a flag's default, on every click
    cfg = train.config_from_options(default_train_options(dataset="cifar10", q="flow", epochs=3))
    assert (cfg.arch, cfg.likelihood, cfg.latent, cfg.warmup_epochs, cfg.flow_steps) == ("conv", "logistic", 32, 20, 4)
    cfg = train.config_from_options(default_train_options(dataset="cifar10", latent=8, flow_steps=2,
                                                          warmup_epochs=5))
    assert (cfg.latent, cfg.flow_steps, cfg.warmup_epochs) == (8, 2, 5)
    cfg = train.config_from_options(default_train_options())          # MNIST: unchanged defaults
    assert (cfg.arch, cfg.likelihood, cfg.latent, cfg.flow_steps, cfg.warmup_epochs) == ("mlp", "bernoulli", 50, 2, 400)


def test_simulated_pixels_follow_the_discretized_logistic():
    n = 60000
    mean, log_scale = np.full((1, 3 * n), 0.3), np.array([[-4.0, -2.5, 0.5]])
    u = np.random.default_rng(0).random((1, 3 * n))
    x = bdmc._simulate_logistic((mean, log_scale), u).reshape(3, n)
    assert np.array_equal(x, np.floor(x * 256) / 256) and x.min() >= 0 and x.max() <= 255 / 256
    bins = np.arange(256)[:, None] / 256
    for c in range(3):
        freq = np.bincount(np.rint(x[c] * 256).astype(int), minlength=256) / n
        p = np.exp(discretized_logistic(bins, np.full_like(bins, 0.3), np.full_like(bins, log_scale[0, c]))[0])
        assert np.abs(freq - p).max() < 0.01


def trust_synthetic_cifar(folder, monkeypatch):
    """The commands check md5s against the real CIFAR-10; accept the synthetic files' instead."""
    tar = folder / data.CIFAR_TAR
    monkeypatch.setitem(data.MD5, data.CIFAR_TAR, hashlib.md5(tar.read_bytes()).hexdigest())
    with tarfile.open(tar) as t:
        for m in t:
            monkeypatch.setitem(data.MD5, m.name, hashlib.md5(t.extractfile(m).read()).hexdigest())


def test_every_command_runs_on_cifar(tmp_path, cifar, monkeypatch):
    trust_synthetic_cifar(tmp_path, monkeypatch)
    d, ck, res = str(tmp_path), str(tmp_path / "m.h5"), str(tmp_path / "r.h5")
    ais = ["--chains", "2", "--steps", "4", "--leapfrog", "2", "--block", "2"]
    local = ["--max-steps", "2", "--check-every", "1", "--patience", "1", "--samples", "2", "--final-samples", "4"]

    def ok(*args):
        code, out = run_cli(list(args))
        assert code == 0, out
        return out

    out = ok("train", "--dataset", "cifar10", "--data-dir", d, "--epochs", "1", "--train-size", "40",
             "--batch", "20", "--out", ck)
    assert "test ELBO" in out
    cfg = io.load_checkpoint(ck)["config"]
    assert (cfg.arch, cfg.likelihood, cfg.latent, cfg.data_dim) == ("conv", "logistic", 32, 3072)
    ok("iwae", ck, "--n", "2", "--k", "4", "--data-dir", d, "--out", res)
    ok("ais", ck, "--n", "2", *ais, "--data-dir", d, "--out", res)
    ok("localopt", ck, "--n", "2", "--block", "2", *local, "--data-dir", d, "--out", res)
    out = ok("gaps", ck, "--n", "2", "--k", "4", *ais, "--qstar", "ffg", "--localopt-block", "2", *local,
             "--data-dir", d, "--out", res, "--format", "json")
    assert "amortization" in out
    out = ok("bdmc", ck, "--n", "2", *ais, "--out", str(tmp_path / "b.h5"))
    assert "mean lower" in out
    pytest.importorskip("matplotlib")
    ok("sample", ck, "--n", "4", "--out", str(tmp_path / "s.png"))


def test_a_config_from_before_arch_loads_as_the_mlp_model():
    import json

    from minivae.model.config import Config
    old = json.loads(Config().to_json())
    del old["arch"]
    cfg = Config.from_json(json.dumps(old))
    assert cfg.arch == "mlp" and cfg == Config()


def test_colour_grid_puts_channels_last():
    from minivae import sample
    imgs = np.arange(2 * 12, dtype=float).reshape(2, 12) / 24      # two 3 x 2 x 2 images
    g = sample.grid(imgs, channels=3)
    assert g.shape == (2, 5, 3)
    assert np.array_equal(g[:, :2], imgs[0].reshape(3, 2, 2).transpose(1, 2, 0))
    assert np.all(g[:, 2] == 1) and np.array_equal(g[:, 3:], imgs[1].reshape(3, 2, 2).transpose(1, 2, 0))


def test_reproduce_table2_on_cifar_smoke(tmp_path, monkeypatch):
    from conftest import CIFAR_NAMES, cifar_batch, write_cifar_tar
    from minivae.experiments import budgets
    monkeypatch.setattr(data, "CIFAR_VALID_SIZE", 5)
    write_cifar_tar(tmp_path / data.CIFAR_TAR, {n: cifar_batch(i, 30) for i, n in enumerate(CIFAR_NAMES)})
    trust_synthetic_cifar(tmp_path, monkeypatch)                # 145 training images: one batch
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path))
    out = tmp_path / "run"
    code, text = run_cli(["reproduce", "table2", "--dataset", "cifar10", "--budget", "smoke", "--out", str(out)])
    assert code == 0, text
    report = (out / "report.md").read_text()
    assert "-14913.15" in report and "ffg (ours)" in report and "Amortization" in report
    cfg = io.load_checkpoint(out / "models" / "flow.h5")["config"]
    assert (cfg.arch, cfg.likelihood, cfg.latent, cfg.flow_steps) == ("conv", "logistic", 32, 4)
    assert budgets.model_config("mnist", "smoke", dict(q="ffg"), 0, "table2").arch == "mlp"
    code, text = run_cli(["reproduce", "table3", "--dataset", "cifar10", "--budget", "smoke", "--out", str(out)])
    assert code != 0 and "table2" in text and "Traceback" not in text
