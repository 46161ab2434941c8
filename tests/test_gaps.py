import csv
import io as _io
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from minivae.estimators import gaps
from minivae import io
from minivae.testing import lingauss
from minivae.model import model
from minivae.model.config import Config
from test_localopt import exact_ffg_elbo

FAKE = dict(iwae=[-90.0, -91.0, -92.0, -88.0], ais=[-89.5, -91.5, -91.0, -88.5],
            qstar_flow=[-90.2, -91.6, -92.5, -88.9], qstar_ffg=[-91.0, -92.5, -93.0, -89.0],
            elbo=[-92.0, -93.0, -95.0, -90.0])


def by_key(rows):
    return {r["key"]: r for r in rows}


def mean_se(v):
    v = np.asarray(v)
    return v.mean(), v.std(ddof=1) / math.sqrt(len(v))


@pytest.mark.parametrize("trained", ["ffg", "flow"])
def test_gap_table_arithmetic(trained):
    rows = by_key(gaps.gap_table(FAKE, trained))
    logp = np.array([-89.5, -91.0, -91.0, -88.0])               # per-datapoint max(IWAE, AIS)
    qstar = np.array(FAKE[f"qstar_{trained}"])
    expect = dict(logp=logp, qstar_ffg=FAKE["qstar_ffg"], qstar_flow=FAKE["qstar_flow"],
                  elbo=FAKE["elbo"], approximation=logp - qstar, amortization=qstar - FAKE["elbo"],
                  inference=logp - FAKE["elbo"], iwae=FAKE["iwae"], ais=FAKE["ais"])
    assert list(rows) == ["logp", "qstar_flow", "qstar_ffg", "elbo", "approximation",
                          "amortization", "inference", "iwae", "ais"]
    for key, v in expect.items():
        m, se = mean_se(v)
        assert rows[key]["mean"] == pytest.approx(m) and rows[key]["se"] == pytest.approx(se), key
        assert rows[key]["n"] == 4
    assert rows["inference"]["mean"] == pytest.approx(rows["approximation"]["mean"] + rows["amortization"]["mean"])


def test_gap_table_missing_stages_and_fullcov():
    rows = by_key(gaps.gap_table({k: FAKE[k] for k in ("iwae", "qstar_ffg", "elbo")}, "ffg"))
    assert rows["logp"]["mean"] == pytest.approx(np.mean(FAKE["iwae"]))     # IWAE alone
    assert rows["ais"]["mean"] is None and rows["qstar_flow"]["mean"] is None
    # fullcov-trained: the gaps need a local full-covariance q*; without it only bounds remain
    rows = by_key(gaps.gap_table(FAKE, "fullcov"))
    assert rows["qstar_fullcov"]["mean"] is None and rows["approximation"]["mean"] is None
    assert rows["amortization"]["mean"] is None and rows["inference"]["mean"] is not None
    rows = by_key(gaps.gap_table({**FAKE, "qstar_fullcov": FAKE["qstar_flow"]}, "fullcov"))
    assert rows["amortization"]["mean"] == pytest.approx(np.mean(np.subtract(FAKE["qstar_flow"], FAKE["elbo"])))
    with pytest.raises(ValueError, match="different numbers"):
        gaps.gap_table({**FAKE, "elbo": [-1.0]}, "ffg")


def test_formats():
    rows = gaps.gap_table({k: FAKE[k] for k in ("iwae", "ais", "qstar_ffg", "elbo")}, "ffg")
    table = gaps.format_rows(rows, "table", "ffg")
    assert "4 datapoints" in table and "n/a" in table and len(table.splitlines()) == len(rows) + 1
    assert "Amortization" in table and "Inference             2.62 +- 0.47" in table
    md = gaps.format_rows(rows, "markdown", "ffg").splitlines()
    assert md[1] == "| --- | ---: |" and len(md) == len(rows) + 2 and md[2].startswith("| log p^(x) |")
    doc = json.loads(gaps.format_rows(rows, "json", "ffg", dict(split="test")))
    assert doc["trained_q"] == "ffg" and doc["n"] == 4 and doc["split"] == "test"
    assert [r["key"] for r in doc["rows"]] == [r["key"] for r in rows]
    back = list(csv.DictReader(_io.StringIO(gaps.format_rows(rows, "csv", "ffg"))))
    for r, c in zip(rows, back):
        assert c["key"] == r["key"] and (float(c["mean"]) == r["mean"] if r["mean"] is not None
                                         else c["mean"] == "")
    with pytest.raises(ValueError):
        gaps.format_rows(rows, "html")


def test_amortization_gap_of_a_zero_encoder_matches_closed_form(tmp_path):
    """q = N(0, I) for every x: L[q] and L[q*_FFG] are closed form on the linear-Gaussian model."""
    cfg, params, x = lingauss.make(latent=2, data_dim=5, n=8, seed=4, scale=0.5, obs_std=1.0)
    params["enc.fc1.W"][:] = 0
    params["enc.fc1.b"][:] = 0
    lo = dict(max_steps=3000, samples=50, lr=0.02, check_every=50, patience=5, final_samples=2000)
    r = gaps.collect(params, cfg, x, tmp_path / "r.h5", k=5000, qstar=("ffg", "fullcov"),
                     localopt_settings=lo, seed=1, progress=False)
    rows = by_key(gaps.gap_table(r, "ffg"))
    _, _, best = lingauss.optimal_ffg(params, cfg, x)
    lq = exact_ffg_elbo(params, cfg, x, np.zeros((8, 4)))
    assert (best - lq).mean() > 2                                   # a real amortization gap
    assert rows["amortization"]["mean"] == pytest.approx((best - lq).mean(), abs=0.08)
    assert rows["elbo"]["mean"] == pytest.approx(lq.mean(), abs=0.08)
    assert rows["qstar_ffg"]["mean"] == pytest.approx(best.mean(), abs=0.03)
    assert rows["qstar_fullcov"]["mean"] == pytest.approx(lingauss.log_px(params, cfg, x).mean(), abs=0.03)
    # rerun on the same file: every stage reused, the same numbers
    again = gaps.collect(params, cfg, x, tmp_path / "r.h5", k=5000, qstar=("ffg", "fullcov"),
                         localopt_settings=lo, seed=1, progress=False)
    assert all(np.array_equal(r[k], again[k]) for k in r)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = Config(latent=2, enc_hidden=8, dec_hidden=8, enc_layers=1, dec_layers=1, flow_hidden=4,
                 dtype="float64")
    path = tmp_path_factory.mktemp("ck") / "m.h5"
    io.save_checkpoint(path, model.init_params(cfg, np.random.default_rng(0)), cfg)
    return str(path)


TINY = ["--n", 3, "--k", 40, "--chains", 3, "--steps", 6, "--leapfrog", 2, "--max-steps", 60,
        "--samples", 4, "--check-every", 20, "--patience", 2, "--final-samples", 40,
        "--localopt-block", 2]


def invoke(*args):
    from cli import main
    try:
        runner = CliRunner(mix_stderr=False)     # click 8.1
    except TypeError:
        runner = CliRunner()                     # click >= 8.2 keeps stderr apart
    return runner.invoke(main, [str(a) for a in args])


def test_cli_gaps_end_to_end_and_reuse(tiny_checkpoint, tmp_path):
    out = tmp_path / "r.h5"
    res = invoke("gaps", tiny_checkpoint, "--out", out, "--format", "json", *TINY)
    assert res.exit_code == 0, res.output + res.stderr
    doc = json.loads(res.stdout)
    rows = by_key(doc["rows"])
    assert doc["trained_q"] == "ffg" and doc["n"] == 3
    assert all(rows[k]["mean"] is not None and rows[k]["n"] == 3 for k in rows)
    assert rows["inference"]["mean"] == pytest.approx(rows["approximation"]["mean"] + rows["amortization"]["mean"])
    for stage in ("iwae", "ais", "localopt_ffg", "localopt_flow"):
        assert io.load_results(out, stage) is not None, stage
    # the same command again reuses every stage: the same table, in another format
    res = invoke("gaps", tiny_checkpoint, "--out", out, "--format", "csv", *TINY)
    assert res.exit_code == 0, res.output + res.stderr
    again = {r["key"]: r for r in csv.DictReader(_io.StringIO(res.stdout))}
    assert all(float(again[k]["mean"]) == rows[k]["mean"] for k in rows)
    res = invoke("gaps", tiny_checkpoint, "--out", out, "--format", "markdown", *TINY)
    assert res.exit_code == 0 and "| L_VAE[q*_Flow] |" in res.stdout
    # other settings on the same file: a clear error, nothing recomputed
    res = invoke("gaps", tiny_checkpoint, "--out", out, *TINY, "--k", 50)
    assert res.exit_code != 0 and "other settings" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("args,message", [
    (["--qstar", "ffg,bogus"], "unknown posterior family 'bogus'"),
    (["--n", 100000], "--n 100000 is larger than"),
    (["--format", "html"], "Invalid value for '--format'"),
    (["--chains", 0], "Invalid value for '--chains'"),
])
def test_cli_gaps_bad_input(tiny_checkpoint, tmp_path, args, message):
    res = invoke("gaps", tiny_checkpoint, "--out", tmp_path / "r.h5", *TINY, *args)
    assert res.exit_code != 0 and message in res.stderr and res.stderr.count("Error:") == 1
    assert "Traceback" not in res.stderr + res.stdout


def test_cli_gaps_missing_checkpoint(tmp_path):
    res = invoke("gaps", tmp_path / "nope.h5", "--out", tmp_path / "r.h5")
    assert res.exit_code != 0 and res.stderr.startswith("Error: ") and len(res.stderr.splitlines()) == 1


def test_collect_applies_per_family_localopt_settings(monkeypatch):
    from minivae.estimators import gaps, iwae, localopt
    seen = {}
    monkeypatch.setattr(iwae, "stage", lambda *a, **k: (np.zeros(2), np.zeros(2)))
    monkeypatch.setattr(localopt, "run", lambda params, cfg, x, q, out, s, meta, progress, runner=None:
                        seen.setdefault(q, s) and {"elbo": np.zeros(2)} or {"elbo": np.zeros(2)})
    from minivae.model.config import Config
    gaps.collect({}, Config(), np.zeros((2, 3)), "unused.h5", qstar=("ffg", "flow"), seed=3,
                 localopt_settings=dict(samples=100, max_steps=50, flow=dict(samples=20)))
    assert seen["ffg"] == dict(samples=100, max_steps=50, seed=3)
    assert seen["flow"] == dict(samples=20, max_steps=50, seed=3)
    # a Flow model's q*_Flow runs before the extra q*_FFG row, whatever order is asked
    seen.clear()
    gaps.collect({}, Config(q="flow"), np.zeros((2, 3)), "unused.h5", qstar=("ffg", "flow"))
    assert list(seen) == ["flow", "ffg"]


def _stage(path, stage, index, attrs=None, **arrays):
    meta = {**dict(checkpoint="abc", split="train", dataset="mnist"), **(attrs or {})}
    io.save_results(path, stage, {"index": np.asarray(index), **arrays}, meta)


def test_cli_summary_of_a_run_in_progress(tmp_path):
    """The table over the datapoints every stage holds: iwae and ais hold 6, q*_FFG the 3 it has
    finished (stored out of order); the same numbers as gap_table on those 3."""
    rng = np.random.default_rng(0)
    out = tmp_path / "r.h5"
    elbo, iw, est, qs = (rng.normal(-90, 2, 6) for _ in range(4))
    _stage(out, "iwae", np.arange(6), dict(q="ffg"), elbo=elbo, iwae=iw)
    _stage(out, "ais", np.arange(6), estimate=est)
    _stage(out, "localopt_ffg", [4, 1, 2], dict(max_steps=1000, check_every=100), elbo=qs[[4, 1, 2]],
           converged=np.array([1, 0, 1], bool), steps=np.array([300, 400, 500]))   # 1 diverged
    res = invoke("summary", out, "--format", "json")
    assert res.exit_code == 0, res.output + res.stderr
    doc = json.loads(res.stdout)
    keep = [1, 2, 4]
    want = by_key(gaps.gap_table(dict(elbo=elbo[keep], iwae=iw[keep], ais=est[keep],
                                      qstar_ffg=qs[keep]), "ffg"))
    rows = by_key(doc["rows"])
    assert doc["n"] == 3 and doc["split"] == "train" and doc["trained_q"] == "ffg"
    for k, r in want.items():
        assert rows[k]["mean"] == (None if r["mean"] is None else pytest.approx(r["mean"], abs=1e-12)), k
    assert "iwae 6, ais 6, localopt_ffg 3" in res.stderr
    assert "q*_ffg converged by the stopping rule for 2/3 datapoints; of the others, 1 stopped early " \
           "where log w or its gradient turned non-finite" in res.stderr
    # --trained picks the column; a flow column without q*_Flow has no gaps
    res = invoke("summary", out, "--format", "json", "--trained", "flow")
    assert by_key(json.loads(res.stdout)["rows"])["approximation"]["mean"] is None


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist or holds no stage"),
    ("mixed", "made from different checkpoints"),
    ("no-iwae", "pass --trained"),
    ("disjoint", "no datapoint"),
    ("not-hdf5", "not a readable HDF5 file"),
    ("damaged", "lacks its 'converged' array"),
])
def test_cli_summary_bad_input(tmp_path, case, message):
    out = tmp_path / "r.h5"
    one = dict(elbo=np.zeros(2), converged=np.ones(2, bool))
    if case == "mixed":
        _stage(out, "iwae", [0, 1], dict(q="ffg"), elbo=np.zeros(2), iwae=np.zeros(2))
        _stage(out, "localopt_ffg", [0, 1], dict(checkpoint="other"), **one)
    elif case == "no-iwae":
        _stage(out, "localopt_ffg", [0, 1], **one)
    elif case == "damaged":
        _stage(out, "iwae", [0, 1], dict(q="ffg"), elbo=np.zeros(2), iwae=np.zeros(2))
        _stage(out, "localopt_ffg", [0, 1], elbo=np.zeros(2))
    elif case == "disjoint":
        _stage(out, "iwae", [0, 1], dict(q="ffg"), elbo=np.zeros(2), iwae=np.zeros(2))
        _stage(out, "localopt_ffg", [2, 3], **one)
    elif case == "not-hdf5":
        out.write_text("not a results file")
    res = invoke("summary", out)
    assert res.exit_code == 2 and message in res.stderr and res.stderr.count("Error:") == 1
    assert "Traceback" not in res.stderr + res.stdout
