"""Every numeric option is range-checked while click parses it: a bad value is one line naming
the option, exit code 2, no traceback, and nothing written (the command never starts)."""
import pytest

from conftest import run_cli

CK = "CKPT"    # replaced by the tiny checkpoint
# tiny sizes, so that a command which wrongly starts ends quickly
AIS = ["--chains", "2", "--steps", "3", "--leapfrog", "1", "--block", "2"]
LOCALOPT = ["--max-steps", "20", "--samples", "2", "--check-every", "10", "--patience", "1",
            "--final-samples", "4"]
BASE = {
    "train": ["train", "--epochs", "1", "--train-size", "100", "--batch", "50", "--latent", "2",
              "--enc-hidden", "8", "--dec-hidden", "8", "--enc-layers", "1", "--dec-layers", "1"],
    "iwae": ["iwae", CK, "--n", "2", "--k", "4"],
    "ais": ["ais", CK, "--n", "2", *AIS],
    "bdmc": ["bdmc", CK, "--n", "2", *AIS],
    "localopt": ["localopt", CK, "--n", "2", "--block", "2", *LOCALOPT],
    "gaps": ["gaps", CK, "--n", "2", "--k", "4", *AIS, "--qstar", "ffg", "--localopt-block", "2", *LOCALOPT],
    "sample": ["sample", CK, "--n", "4"],
    "reproduce": ["reproduce", "table2", "--budget", "smoke"],
}
OUT = {"sample": "out.png", "reproduce": "run"}

BAD = {
    "train": [("--seed", "-1"), ("--lr", "-1e-3"), ("--lr", "0"), ("--lr", "nan"), ("--lr", "inf"),
              ("--warmup-epochs", "-3"), ("--save-every", "0"), ("--dec-layers", "-1"),
              ("--enc-layers", "-1"), ("--latent", "0"), ("--enc-hidden", "0"), ("--dec-hidden", "0"),
              ("--flow-steps", "0"), ("--k", "0"), ("--batch", "0"), ("--epochs", "0"),
              ("--train-size", "0")],
    "iwae": [("--seed", "-1"), ("--n", "0"), ("--n", "-1"), ("--k", "0"), ("--chunk", "0")],
    "ais": [("--seed", "-1"), ("--n", "0"), ("--step0", "nan"), ("--step0", "inf"), ("--step0", "0"),
            ("--step0", "-0.1"), ("--target-accept", "nan"), ("--target-accept", "0"),
            ("--target-accept", "1"), ("--chains", "0"), ("--steps", "0"), ("--leapfrog", "0"),
            ("--block", "0")],
    "bdmc": [("--seed", "-1"), ("--n", "0"), ("--step0", "nan"), ("--target-accept", "-inf"),
             ("--chains", "0"), ("--block", "-2")],
    "localopt": [("--seed", "-1"), ("--n", "0"), ("--lr", "-1"), ("--lr", "nan"), ("--max-steps", "0"),
                 ("--max-steps", "5"), ("--samples", "0"), ("--check-every", "0"), ("--patience", "0"),
                 ("--final-samples", "0"), ("--block", "0")],
    "gaps": [("--seed", "-1"), ("--n", "0"), ("--k", "0"), ("--chunk", "0"), ("--localopt-block", "0"),
             ("--lr", "nan"), ("--step0", "nan"), ("--max-steps", "0"), ("--max-steps", "5"),
             ("--final-samples", "0")],
    "sample": [("--seed", "-1"), ("--n", "0")],
    "reproduce": [("--seed", "-1")],
}
CASES = [(command, option, value) for command, bad in BAD.items() for option, value in bad]


@pytest.mark.parametrize("command,option,value", CASES, ids=[" ".join(c) for c in CASES])
def test_a_bad_value_is_refused_while_parsing(tiny_ckpt, tmp_path, monkeypatch, command, option, value):
    monkeypatch.chdir(tmp_path)
    args = [tiny_ckpt if a == CK else a for a in BASE[command]]
    code, text = run_cli(args + ["--out", OUT.get(command, "out.h5"), option, value])
    assert code == 2, text
    assert "Traceback" not in text and text.strip().splitlines() == [text.strip()], text
    assert text.startswith(f"Error: Invalid value for '{option}'"), text
    assert not list(tmp_path.iterdir())                 # nothing written, not even a temp file


def test_finite_values_at_the_edges_are_accepted(tiny_ckpt, tmp_path):
    out = str(tmp_path / "r.h5")
    code, text = run_cli(["iwae", tiny_ckpt, "--n", "1", "--k", "1", "--chunk", "1", "--seed", "0",
                          "--out", out])
    assert code == 0, text
    code, text = run_cli(["ais", tiny_ckpt, "--n", "1", "--chains", "1", "--steps", "2", "--leapfrog", "1",
                          "--step0", "1e-3", "--target-accept", "0.99", "--seed", str(2**40), "--out", out])
    assert code == 0, text
