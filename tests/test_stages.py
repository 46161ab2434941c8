"""The stage engine: numbers independent of --block and --n, one writer per file, no non-finite
estimate saved, a full disk or an interrupt loses no finished block, no temp file outlives a run."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import interrupt_after, run_cli
from minivae.estimators import ais, bdmc, iwae, localopt
from minivae import io, outputs, stages
from minivae.testing import lingauss
from minivae.errors import MinivaeError

LOCAL = dict(max_steps=200, samples=6, lr=0.02, check_every=20, patience=2, final_samples=60, seed=4)


def test_localopt_numbers_do_not_depend_on_block_or_n_float64(tmp_path):
    """Issue 11 item 8: noise was seeded per block, so --block 10 and 5 differed by nats."""
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=7)           # float64
    a = localopt.run(params, cfg, x, "ffg", tmp_path / "a.h5", {**LOCAL, "block": 7}, progress=False)
    b = localopt.run(params, cfg, x, "ffg", tmp_path / "b.h5", {**LOCAL, "block": 2}, progress=False)
    c = localopt.run(params, cfg, x[:3], "ffg", tmp_path / "c.h5", {**LOCAL, "block": 3}, progress=False)
    for k in ("elbo", "elbo_se", "steps", "trace"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        np.testing.assert_array_equal(a[k][:3], c[k], err_msg=k)


def test_flow_localopt_does_not_depend_on_block(tmp_path):
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=4)
    cfg = cfg.replace(flow_hidden=4) if hasattr(cfg, "flow_hidden") else cfg
    s = dict(LOCAL, max_steps=40, final_samples=10)
    a = localopt.run(params, cfg, x, "flow", tmp_path / "a.h5", {**s, "block": 4}, progress=False)
    b = localopt.run(params, cfg, x, "flow", tmp_path / "b.h5", {**s, "block": 1}, progress=False)
    np.testing.assert_array_equal(a["elbo"], b["elbo"])


def test_iwae_ais_bdmc_do_not_depend_on_block_or_n(tmp_path):
    cfg, params, x = lingauss.make(n=6)
    s = ais.Settings(chains=3, steps=6, leapfrog=2)
    for name, run in [("iwae", lambda xs, o, b: iwae.stage(params, cfg, xs, o, k=7, chunk=14, block=b,
                                                            progress=False)[1]),
                      ("ais", lambda xs, o, b: ais.run(params, cfg, xs, o, s, block=b, progress=False)["estimate"]),
                      ("bdmc", lambda xs, o, b: bdmc.run(params, cfg, len(xs), o, s, block=b,
                                                         progress=False)["lower"])]:
        whole = run(x, tmp_path / f"{name}-a.h5", 6)
        np.testing.assert_array_equal(whole, run(x, tmp_path / f"{name}-b.h5", 4), err_msg=name)
        np.testing.assert_array_equal(whole[:2], run(x[:2], tmp_path / f"{name}-c.h5", 1), err_msg=name)


def test_a_smaller_n_reuses_the_rows_and_a_larger_one_adds_only_the_missing(tmp_path):
    cfg, params, x = lingauss.make(n=6)
    out = tmp_path / "r.h5"
    full = iwae.stage(params, cfg, x, out, k=5, chunk=10, block=2, progress=False)[1]
    small = iwae.stage(params, cfg, x[:3], out, k=5, chunk=10, block=2, progress=False)[1]
    np.testing.assert_array_equal(small, full[:3])
    assert io.load_results(out, "iwae")[1]["n"] == 6                     # nothing dropped


def test_resuming_after_any_interrupt_gives_the_same_numbers(tmp_path):
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=5)
    s = {**LOCAL, "block": 2}
    whole = localopt.run(params, cfg, x, "ffg", tmp_path / "a.h5", s, progress=False)
    out = tmp_path / "b.h5"
    for m in (1, 1):
        with pytest.raises(KeyboardInterrupt):
            localopt.run(params, cfg, x, "ffg", out, s, progress=False, runner=interrupt_after(m))
    assert io.load_results(out, "localopt_ffg")[1]["n"] == 4
    again = localopt.run(params, cfg, x, "ffg", out, {**s, "block": 3}, progress=False)
    np.testing.assert_array_equal(again["elbo"], whole["elbo"])
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or p.endswith(".lock")]


def test_a_non_finite_estimate_is_not_saved_and_fails_the_run(tmp_path):
    cfg, params, x = lingauss.make(n=4)
    out = tmp_path / "r.h5"

    def fn(index, progress=None):
        return dict(estimate=np.where(index == 2, np.nan, index * 1.0))

    with pytest.raises(MinivaeError, match="datapoint 2 gave a non-finite estimate.*2 datapoints are"):
        stages.run(out, "toy", {}, 4, 2, fn, {}, finite=("estimate",), progress=False)
    arrays, _ = io.load_results(out, "toy")
    np.testing.assert_array_equal(arrays["index"], [0, 1])


def test_nan_parameters_fail_the_cli_instead_of_printing_nan(tiny_ckpt, tmp_path):
    ck = io.load_checkpoint(tiny_ckpt)
    ck["params"]["dec.fc1.W"][0, 0] = np.nan
    bad = tmp_path / "nan.h5"
    io.save_checkpoint(bad, ck["params"], ck["config"])
    for args in (["iwae", "--k", "3"], ["ais", "--chains", "2", "--steps", "3", "--leapfrog", "1"],
                 ["localopt", "--max-steps", "20", "--check-every", "10", "--samples", "2",
                  "--final-samples", "5"],
                 ["bdmc", "--chains", "2", "--steps", "3", "--leapfrog", "1"]):
        out = tmp_path / f"{args[0]}.h5"
        code, text = run_cli([args[0], str(bad), "--n", "2", "--out", str(out), *args[1:]])
        assert code == 2 and "dec.fc1.W holds NaN or inf" in text and "mean" not in text, text
        assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text


def test_a_full_disk_keeps_the_finished_blocks(tmp_path, monkeypatch):
    out = tmp_path / "r.h5"
    real, calls = io.save_results, []

    def save(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(io, "save_results", save)
    with pytest.raises(MinivaeError, match="No space left on device.*rerun to resume"):
        stages.run(out, "toy", {}, 6, 2, lambda index, progress=None: dict(v=index * 1.0), {}, progress=False)
    np.testing.assert_array_equal(io.load_results(out, "toy")[0]["index"], [0, 1])


def test_a_second_writer_gets_one_line_naming_the_holder(tmp_path):
    out = tmp_path / "r.h5"
    with outputs.claim(out, io.RESULTS_KIND):
        script = textwrap.dedent(f"""
            from minivae import io, outputs
            try:
                with outputs.claim({str(out)!r}, io.RESULTS_KIND):
                    print("got it")
            except outputs.OutputError as e:
                print(e)
        """)
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "is in use by pid" in res.stdout and str(os.getpid()) in res.stdout, res.stdout + res.stderr
    assert not os.path.exists(outputs.sidecar(out, "lock"))              # released and removed


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    out = tmp_path / "r.h5"
    script = ("import os; from minivae import io, outputs\n"
              f"c = outputs.claim({str(out)!r}, io.RESULTS_KIND); c.__enter__(); os._exit(9)")
    subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(__file__)))
    assert os.path.exists(outputs.sidecar(out, "lock"))
    open(outputs.sidecar(out, "tmp-abc.h5"), "w").close()               # a killed run's temp file
    stages.run(out, "toy", {}, 2, 2, lambda index, progress=None: dict(v=index * 1.0), {}, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["r.h5"]


@pytest.mark.parametrize("where,message", [
    (lambda d: d, "is a folder"),
    (lambda d: d / "file.txt" / "r.h5", "is a file, not a folder"),
    (lambda d: d / "notes.txt", "is not a minivae results file"),
])
def test_the_output_location_is_checked_before_any_compute(tmp_path, where, message):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "notes.txt").write_text("keep me")
    calls = []
    with pytest.raises(MinivaeError, match=message):
        stages.run(where(tmp_path), "toy", {}, 2, 2, lambda index, progress=None: calls.append(1), {},
                   progress=False)
    assert not calls and (tmp_path / "notes.txt").read_text() == "keep me"


def test_cli_refuses_an_unwritable_out_before_computing(tiny_ckpt, tmp_path):
    (tmp_path / "f").write_text("x")
    code, text = run_cli(["ais", tiny_ckpt, "--n", "2", "--out", str(tmp_path / "f" / "r.h5")])
    assert code == 2 and "is a file, not a folder" in text and len(text.strip().splitlines()) == 1


def test_sigterm_ends_a_cli_run_with_its_blocks_saved(tiny_ckpt, tmp_path):
    out = tmp_path / "r.h5"
    repo = os.path.dirname(os.path.dirname(__file__))
    proc = subprocess.Popen([sys.executable, "-c", "import cli; cli.main()", "localopt", tiny_ckpt, "--n", "40",
                             "--block", "1", "--max-steps", "400", "--check-every", "10", "--samples", "3",
                             "--final-samples", "5", "--out", str(out)], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or io.load_results(out, "localopt_ffg") is None):
        time.sleep(0.2)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Interrupted" in err and "Traceback" not in err
    n = io.load_results(out, "localopt_ffg")[1]["n"]
    assert 1 <= n < 40
    assert sorted(os.listdir(tmp_path)) == ["r.h5"]


def test_a_swallowed_interrupt_still_ends_the_run_after_the_next_save(tmp_path):
    """Issue 11 item 9: a signal's exception raised inside a weakref callback is printed and
    dropped by Python, and the run went on to exit 0. on_signal remembers it; the engine raises it."""
    import signal as sig
    from minivae import errors
    out = tmp_path / "r.h5"

    def fn(index, progress=None):
        if index[0] == 2:
            try:                                    # what Python does inside a weakref callback
                errors.on_signal(sig.SIGTERM, None)
            except KeyboardInterrupt:
                pass
        return dict(v=index * 1.0)

    with pytest.raises(errors.Terminated):
        stages.run(out, "toy", {}, 6, 2, fn, {}, progress=False)
    np.testing.assert_array_equal(io.load_results(out, "toy")[0]["index"], [0, 1, 2, 3])
    errors.clear_interrupt()


def test_a_dropped_interrupt_prints_no_traceback_and_is_raised_at_the_next_safe_point(capsys, monkeypatch):
    """CI caught it: SIGTERM arriving inside a weakref callback printed "Exception ignored ...
    Traceback" before the one-line "Interrupted". The CLI's unraisable hook keeps such a pending
    interrupt silent; any other exception Python drops is still printed."""
    import signal as sig
    import sys
    from minivae import errors
    monkeypatch.setattr(sys, "unraisablehook", errors.quiet_dropped_interrupts)

    class Dropping:
        def __init__(self, what):
            self.what = what

        def __del__(self):                          # Python drops what a finaliser raises
            self.what()

    Dropping(lambda: errors.on_signal(sig.SIGTERM, None))
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(errors.Terminated):
        errors.check_interrupt()
    Dropping(lambda: 1 / 0)                          # not an interrupt: printed as usual
    assert "ZeroDivisionError" in capsys.readouterr().err
    errors.clear_interrupt()


def test_a_stage_records_its_wall_time_over_every_run(tmp_path):
    """attrs["seconds"] adds up the runs that made a stage, so a resumed run reports its total."""
    import time
    out = str(tmp_path / "r.h5")

    def slow(index, progress=None):
        time.sleep(0.05)
        return dict(v=index * 1.0)

    stages.run(out, "toy", {}, 2, 2, slow, {}, progress=False)
    first = io.load_results(out, "toy")[1]["seconds"]
    stages.run(out, "toy", {}, 4, 2, slow, {}, progress=False)
    total = io.load_results(out, "toy")[1]["seconds"]
    assert first >= 0.05 and total >= first + 0.05
