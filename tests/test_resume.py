"""`minivae train` resumes like every long command: the same command on the same --out continues
where it stopped (bit for bit), changed settings are refused in one line, more epochs need
--extend, and a file the run did not write is never replaced."""
import os
import signal

import h5py
import numpy as np
import pytest

from conftest import run_cli
from minivae import io, outputs
from minivae import train as training

TINY = ["train", "--train-size", "200", "--batch", "50", "--latent", "2", "--enc-hidden", "8",
        "--dec-hidden", "8", "--enc-layers", "1", "--dec-layers", "1"]


def tiny(out, epochs=2, *more):
    return TINY + ["--epochs", str(epochs), "--out", str(out), *more]


def snapshot(path):
    with open(path, "rb") as f:
        return f.read(), os.stat(path).st_mtime_ns


def assert_same_training(a, b):
    """Checkpoints a and b hold the same params, Adam state, RNG state, epoch and curves."""
    ca, cb = io.load_checkpoint(a), io.load_checkpoint(b)
    assert ca["epoch"] == cb["epoch"] and ca["config"] == cb["config"]
    assert ca["rng_state"] == cb["rng_state"] and ca["adam"]["t"] == cb["adam"]["t"]
    for k in ca["params"]:
        np.testing.assert_array_equal(ca["params"][k], cb["params"][k])
        np.testing.assert_array_equal(ca["adam"]["m"][k], cb["adam"]["m"][k])
        np.testing.assert_array_equal(ca["adam"]["v"][k], cb["adam"]["v"][k])
    for k in training.CURVES:
        if k != "seconds":
            np.testing.assert_array_equal(ca["curves"][k], cb["curves"][k])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run of the tiny model (not to be modified by tests)."""
    out = tmp_path_factory.mktemp("finished") / "m.h5"
    code, text = run_cli(tiny(out))
    assert code == 0, text
    return out


@pytest.fixture
def copy_of_finished(finished, tmp_path):
    out = tmp_path / "m.h5"
    out.write_bytes(finished.read_bytes())
    return out


def interrupt_at(monkeypatch, epoch):
    """Ctrl-C at the start of (0-based) `epoch`; returns the list of epochs that were started."""
    started = []

    def learning_rate(cfg, e):
        if e == epoch:
            raise KeyboardInterrupt
        started.append(e)
        return cfg.lr

    monkeypatch.setattr(training, "learning_rate", learning_rate)
    return started


def test_interrupted_run_rerun_continues_and_equals_an_uninterrupted_one(finished, tmp_path, monkeypatch):
    out = tmp_path / "m.h5"
    interrupt_at(monkeypatch, 1)
    code, text = run_cli(tiny(out))
    assert code == 130
    assert "continues from epoch 2" in text and io.load_checkpoint(out)["epoch"] == 1
    started = interrupt_at(monkeypatch, None)
    code, text = run_cli(tiny(out))                       # the same command again
    assert code == 0, text
    assert started == [1], "the rerun must train only the missing epoch"
    assert "resuming" in text and "at epoch 2 of 2" in text
    assert_same_training(out, finished)
    assert not [p for p in os.listdir(tmp_path) if p != "m.h5"], "no lock or temp files left"


def test_an_interrupted_reproduce_says_which_model_and_epoch_it_continues_from(tmp_path, monkeypatch):
    """reproduce trains its models through the same loop: the interrupt names the checkpoint and
    the epoch a rerun continues from, not only "finished blocks are saved"."""
    interrupt_at(monkeypatch, 0)
    code, text = run_cli(["reproduce", "table2", "--budget", "smoke", "--out", str(tmp_path / "r")])
    assert code == 130, text
    assert f"no epoch of {tmp_path / 'r' / 'models'}" in text and "continues from epoch 1" in text


def test_sigterm_stops_training_like_ctrl_c(tmp_path, monkeypatch):
    def unhandled(signum, frame):
        raise RuntimeError("SIGTERM reached the test's handler: the CLI did not handle it")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        def learning_rate(cfg, e):
            if e == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return cfg.lr

        monkeypatch.setattr(training, "learning_rate", learning_rate)
        code, text = run_cli(tiny(tmp_path / "m.h5"))
        assert code == 143, text
        assert "continues from epoch 2" in text and io.load_checkpoint(tmp_path / "m.h5")["epoch"] == 1
        assert signal.getsignal(signal.SIGTERM) is unhandled, "the CLI restores the handler it replaced"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_finished_run_rerun_does_nothing(copy_of_finished, monkeypatch):
    before = snapshot(copy_of_finished)
    started = interrupt_at(monkeypatch, None)
    for args in (tiny(copy_of_finished),                  # the same command
                 ["train", "--out", str(copy_of_finished)],   # options left out: the checkpoint's
                 ["train", "--resume", str(copy_of_finished)]):
        code, text = run_cli(args)
        assert code == 0, text
        assert "already complete (2 of 2 epochs)" in text and "test ELBO" not in text
    assert started == [] and snapshot(copy_of_finished) == before


@pytest.mark.parametrize("change,named", [
    (["--epochs", "3"], "--epochs 3 (checkpoint: 2)"),
    (["--lr", "0.01"], "--lr 0.01 (checkpoint: 0.001)"),
    (["--q", "flow"], "--q flow (checkpoint: ffg)"),
    (["--latent", "3", "--seed", "1"], "--latent 3 (checkpoint: 2), --seed 1 (checkpoint: 0)"),
])
def test_changed_settings_are_refused_naming_them(copy_of_finished, change, named):
    before = snapshot(copy_of_finished)
    args = tiny(copy_of_finished)
    i = args.index(change[0]) if change[0] in args else len(args)
    args = args[:i] + change + args[i + 2:] if change[0] in args else args + change
    for cmd in (args, ["train", "--resume", str(copy_of_finished)] + change):
        code, text = run_cli(cmd)
        assert code == 2, text
        assert named in text and "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert snapshot(copy_of_finished) == before


def test_extend_trains_more_epochs_like_a_longer_run(copy_of_finished, tmp_path, monkeypatch):
    code, text = run_cli(tiny(tmp_path / "three.h5", 3))
    assert code == 0, text
    started = interrupt_at(monkeypatch, None)
    code, text = run_cli(tiny(copy_of_finished, 3, "--extend"))
    assert code == 0, text
    assert started == [2]
    assert_same_training(copy_of_finished, tmp_path / "three.h5")
    code, text = run_cli(tiny(copy_of_finished, 3, "--extend"))     # rerun: complete
    assert code == 0 and "already complete (3 of 3 epochs)" in text
    code, text = run_cli(tiny(copy_of_finished, 2, "--extend"))     # --extend never shrinks
    assert code == 2 and "only raises --epochs" in text


def test_resume_into_another_out_is_refused(copy_of_finished, tmp_path):
    before = snapshot(copy_of_finished)
    other = tmp_path / "b.h5"
    code, text = run_cli(["train", "--resume", str(copy_of_finished), "--out", str(other)])
    assert code == 2 and "continues that checkpoint in place" in text
    assert not other.exists() and snapshot(copy_of_finished) == before


def write_png(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))


def write_results(path):
    io.save_results(path, "iwae", {"elbo": np.zeros(3)})


def write_foreign_h5(path):
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)


@pytest.mark.parametrize("write", [write_png, write_results, write_foreign_h5])
def test_train_never_replaces_a_file_it_did_not_write(tmp_path, monkeypatch, write):
    out = tmp_path / "x.h5"
    write(out)
    before = snapshot(out)
    started = interrupt_at(monkeypatch, None)
    code, text = run_cli(tiny(out))
    assert code == 2, text
    assert "will not replace it" in text and len(text.strip().splitlines()) == 1
    assert started == [] and snapshot(out) == before


def test_a_second_run_on_the_same_out_is_refused_naming_the_holder(copy_of_finished, monkeypatch):
    before = snapshot(copy_of_finished)
    started = interrupt_at(monkeypatch, None)
    fd, lock = outputs._lock(str(copy_of_finished))   # another run holds it (a second lock, this process)
    try:
        code, text = run_cli(tiny(copy_of_finished, 3, "--extend"))
    finally:
        os.close(fd)
        os.remove(lock)
    assert code == 2 and f"in use by pid {os.getpid()}" in text
    assert started == [] and snapshot(copy_of_finished) == before
