"""Progress: tqdm's bar on a terminal, plain timed lines in a log, nothing when disabled;
training prints "epoch i of N" with an ETA."""
import io
import re
import time

from conftest import run_cli
from minivae.progress import Progress, epoch_line


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run_bar(stream, **kw):
    bar = Progress(10, "iwae datapoints", stream=stream, **kw)
    for _ in range(4):
        time.sleep(0.01)  # a measurable rate, so the ETA is a time, not "?"
        bar.update(2, iwae=-95.123456)
    bar.close()
    return stream.getvalue()


def test_a_log_gets_plain_lines_with_count_rate_and_eta():
    text = run_bar(io.StringIO(), every=0)
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text and len(lines) >= 2
    assert re.search(r"^iwae datapoints 4/10 \(40%\) elapsed 00:00 ETA 00:0\d \[.*/s, iwae=-95.12\]$",
                     text, re.M), text
    assert lines[-1].startswith("iwae datapoints 8/10") and "ETA" in lines[-1]


def test_a_log_gets_nothing_from_a_stage_shorter_than_the_interval(monkeypatch):
    assert run_bar(io.StringIO()) == ""  # default: a line every 30 s
    monkeypatch.setenv("MINIVAE_PROGRESS_EVERY", "0")
    assert "8/10" in run_bar(io.StringIO())


def test_a_terminal_gets_a_redrawn_bar():
    text = run_bar(Terminal())
    assert "\r" in text and "8/10" in text and "iwae=-95.12" in text


def test_disabled_prints_nothing():
    for stream in (io.StringIO(), Terminal()):
        assert run_bar(stream, enabled=False, every=0) == ""


def test_epoch_line_counts_epochs_and_gives_an_eta():
    line = epoch_line(3, 10, [100.0, 50.0, 60.0], "valid ELBO -99.000")
    assert line == "epoch 3 of 10: valid ELBO -99.000  (60.0s, ETA 08:10)"  # 7 epochs of 70 s


def test_train_prints_epoch_i_of_n(tmp_path):
    code, text = run_cli(["train", "--epochs", "2", "--train-size", "200", "--latent", "2", "--enc-hidden", "8",
                          "--dec-hidden", "8", "--out", str(tmp_path / "m.h5")])
    assert code == 0, text
    assert re.search(r"^epoch 1 of 2: train bound .* ETA \d\d:\d\d\)$", text, re.M), text
    assert re.search(r"^epoch 2 of 2: .* ETA 00:00\)$", text, re.M), text
