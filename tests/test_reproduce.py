import numpy as np
import pytest
from click.testing import CliRunner

import cli
from minivae.experiments import budgets, fig2
from minivae.experiments.report import table_markdown


def test_second_mode_needs_a_dip_between_peaks():
    g = np.linspace(-5, 5, 61)
    X, Y = np.meshgrid(g, g)
    one = np.exp(-((X - 1) ** 2 + Y ** 2) / 0.5)
    two = one + 0.5 * np.exp(-((X + 2) ** 2 + Y ** 2) / 0.5)
    noisy = one * (1 + 1e-3 * np.random.default_rng(0).standard_normal(one.shape))
    assert fig2._second_mode(one) == 0 and fig2._second_mode(noisy) == 0
    ridge = np.zeros((61, 61))
    ridge[30, 30], ridge[30, 32], ridge[30, 31] = 1.0, 0.9, 0.1      # aliasing: peaks 2 cells apart
    assert fig2._second_mode(ridge) == 0
    assert abs(fig2._second_mode(two) - 0.5) < 1e-6


def test_posterior_summary_of_a_gaussian_grid():
    g = np.linspace(-6, 6, 241)
    X, Y = np.meshgrid(g, g, indexing="xy")
    cov = np.array([[1.0, 0.6], [0.6, 0.8]])
    P = np.linalg.inv(cov)
    d = np.stack([X - 0.5, Y + 1], -1)
    lj = -0.5 * np.einsum("...i,ij,...j", d, P, d) - np.log(2 * np.pi) - 0.5 * np.log(np.linalg.det(cov)) + 3.0
    s = fig2.posterior_summary(lj[None], g)
    assert abs(s["logpx"][0] - 3.0) < 1e-6
    np.testing.assert_allclose(s["mean"][0], [0.5, -1], atol=1e-6)
    assert abs(s["corr"][0] - 0.6 / np.sqrt(0.8)) < 1e-4


def test_pick_four_gives_four_different_datapoints():
    summ = dict(mode_ratio=np.array([0, 0, 0, 0.5, 0, 0.1]), corr=np.array([0.1, 0.9, 0.2, 0.3, 0.1, 0.0]))
    gap = np.array([0.5, 1.0, 9.0, 2.0, 0.4, 3.0])
    a, b, c, d = fig2.pick_four(summ, gap)
    assert (a, b, c, d) == (4, 1, 2, 3)


def test_report_table_puts_ours_beside_the_papers():
    rows = [dict(key="logp", label="log p^(x)", mean=-90.0, se=0.5, n=10),
            dict(key="approximation", label="Approximation", mean=1.2, se=0.1, n=10),
            dict(key="ais", label="L_AIS", mean=None, se=None, n=0)]
    text = table_markdown("table2", "mnist", {"ffg": ("ffg", rows)})
    assert "| log p^(x) | -90.00 ± 0.50 | -89.80 |" in text
    assert "| Approximation | 1.20 ± 0.10 | 1.43 |" in text and "L_AIS" not in text
    assert "no numbers" in table_markdown("table4", "mnist", {"base": ("ffg", rows)})
    gray = table_markdown("table2", "mnist-gray", {"ffg": ("ffg", rows)})   # beside the paper's MNIST
    assert "| log p^(x) | -90.00 ± 0.50 | -89.80 |" in gray and "no numbers" not in gray


def test_every_experiment_names_models_and_budgets_are_complete():
    for e in budgets.EXPERIMENTS:
        if e.startswith("table"):
            specs, qstar = budgets.models(e)
            assert specs and set(qstar) <= {"ffg", "flow"}
    for b in budgets.BUDGETS.values():
        assert {"train", "n", "k", "ais", "localopt", "fig2", "fig3"} <= set(b)


def smoke(tmp_path, experiment):
    out = tmp_path / experiment
    result = CliRunner().invoke(cli.main, ["reproduce", experiment, "--budget", "smoke", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "## Wall time" in report and "## Settings" in report
    return out, report


def test_smoke_table2(tmp_path):
    out, report = smoke(tmp_path, "table2")
    assert "ffg (paper)" in report and "Amortization" in report
    # issue 15: the authors' protocol by default: training datapoints, MNIST trained on train+valid
    assert "## Protocol" in report and "first 3 training datapoints of mnist" in report
    assert "training and validation images together" in report
    from minivae import io
    assert io.load_results(out / "results" / "ffg.h5", "iwae")[1]["split"] == "train"
    assert io.load_checkpoint(out / "models" / "ffg.h5")["config"].train_split == "train+valid"
    # a rerun reuses the finished models and results, and its report keeps their wall times
    # (training: the checkpoint's per-epoch seconds; each stage: its seconds over every run)
    def wall(text):
        rows = text.split("## Wall time")[1].split("## Settings")[0].splitlines()
        return {r.split(" | ")[0][2:]: float(r.split(" | ")[1].rstrip(" |")) for r in rows
                if r.startswith("| ") and not r.startswith(("| stage", "| ---"))}
    first = wall(report)
    assert {"ffg: train", "ffg: iwae", "ffg: ais", "ffg: localopt_ffg", "flow: localopt_flow"} <= set(first)
    assert all(v >= 0 for v in first.values()) and sum(first.values()) > 0
    result = CliRunner().invoke(cli.main, ["reproduce", "table2", "--budget", "smoke", "--out", str(out)])
    assert result.exit_code == 0 and "reusing" in result.output
    assert wall((out / "report.md").read_text()) == first


def test_only_runs_the_named_models_and_a_full_run_reuses_them(tmp_path):
    out = tmp_path / "t"
    args = ["reproduce", "table2", "--budget", "smoke", "--out", str(out)]
    result = CliRunner().invoke(cli.main, args + ["--only", "ffg"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "models").iterdir() if p.suffix == ".h5") == ["ffg.h5"]
    assert "ffg (ours)" in (out / "report.md").read_text() and "flow (ours)" not in (out / "report.md").read_text()
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0 and "reusing mnist" not in result.output
    assert f"reusing {out / 'models' / 'ffg.h5'}" in result.output and "flow (ours)" in (out / "report.md").read_text()
    # the gaps command with the budget's settings adds to the same stages: here it reuses them all
    gaps = ["gaps", str(out / "models" / "ffg.h5"), "--split", "train", "--n", "3", "--k", "20",
            "--chains", "3", "--steps", "10", "--leapfrog", "3", "--block", "3", "--max-steps", "100",
            "--samples", "5", "--check-every", "20", "--patience", "2", "--final-samples", "50",
            "--out", str(out / "results" / "ffg.h5")]
    before = (out / "results" / "ffg.h5").read_bytes()
    result = CliRunner().invoke(cli.main, gaps)
    assert result.exit_code == 0, result.output
    assert (out / "results" / "ffg.h5").read_bytes() == before
    # table4's small encoders need their base model's decoder: asking for one trains the base too
    from minivae.experiments import budgets, reproduce
    specs, _ = reproduce.select(*budgets.models("table4"), ["small_flow"], "table4")
    assert [name for name, _ in specs] == ["base", "small_flow"]
    for bad in (["--only", "fgg"], ["--only", "ffg", "--out", str(tmp_path / "f")]):
        result = CliRunner().invoke(cli.main, (args + bad) if bad[0] == "--only" and len(bad) == 2
                                    else ["reproduce", "fig2", "--budget", "smoke"] + bad)
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output


def test_smoke_fig2(tmp_path):
    out, report = smoke(tmp_path, "fig2")
    assert (out / "fig2.png").stat().st_size > 1000 and "fig2.png" in report


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["table3", "table4", "table5", "table6", "table10", "fig3"])
def test_smoke_other_experiments(tmp_path, experiment):
    smoke(tmp_path, experiment)


def test_unknown_budget_is_one_line(tmp_path):
    result = CliRunner().invoke(cli.main, ["reproduce", "table2", "--budget", "huge"])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_missing_data_is_one_line_before_any_output(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("MINIVAE_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.main, ["reproduce", "table2", "--dataset", "fashion", "--out", str(out)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "missing fashion-mnist/train-images-idx3-ubyte.gz" in result.output and not out.exists()


def test_best_of_starts_keeps_each_datapoints_best_fit(monkeypatch):
    from minivae.model.config import Config
    cfg = Config(latent=2)
    x = np.zeros((3, 784), np.float32)
    # start "a" wins datapoint 0 and 2, start "b" datapoint 1; every fit's h records its start
    elbos = dict(a=np.array([-1.0, -5.0, -2.0]), b=np.array([-3.0, -4.0, -2.5]))
    seen = []

    def fake_fit(params, cfg, family, x, rng, *args, h0=None, **kw):
        seen.append(None if h0 is None else h0.copy())
        tag = float(len(seen))
        return dict(local=dict(h=np.full((3, 4), tag)), steps=np.full(3, 10 * len(seen)))

    monkeypatch.setattr(fig2, "fit_local", fake_fit)
    monkeypatch.setattr(fig2, "local_elbo", lambda p, c, f, x, local, rng, n:
                        (elbos["ab"[int(local["h"][0, 0]) - 1]], None))
    starts = dict(a=None, b=np.arange(12.0).reshape(3, 4))
    r = fig2.best_of_starts({}, cfg, x, starts, np.random.default_rng(0), dict(
        max_steps=100, samples=2, lr=1e-3, check_every=10, patience=2))
    assert seen[0] is None and seen[1].dtype == np.float32 and seen[1][2, 3] == 11
    np.testing.assert_array_equal(r["local"]["h"][:, 0], [1, 2, 1])
    np.testing.assert_array_equal(r["steps"], [10, 20, 10])
    np.testing.assert_array_equal(r["elbo"], [-1.0, -4.0, -2.0])
    assert [s.decode() for s in r["start"]] == ["a", "b", "a"]


def test_refined_summary_gets_narrow_posteriors_right_where_the_wide_grid_cannot():
    from minivae.testing import lingauss
    # posterior std about 0.03: a third of the wide grid's 0.1 spacing
    cfg, params, x = lingauss.make(latent=2, data_dim=30, obs_std=0.5, scale=3.0, n=3)
    exact = lingauss.log_px(params, cfg, x)
    m, P = lingauss.posterior(params, cfg, x)
    assert np.sqrt(np.diag(np.linalg.inv(P))).max() < 0.05
    lj, g = fig2.grid_log_joint(params, cfg, x, -8, 8, 161)
    assert np.abs(fig2.posterior_summary(lj, g)["logpx"] - exact).max() > 0.1    # the coarse grid
    s = fig2.refined_summary(params, cfg, x)
    np.testing.assert_allclose(s["logpx"], exact, atol=1e-4)
    np.testing.assert_allclose(s["mean"], m, atol=1e-4)


def test_smoke_table2_on_two_workers_equals_the_serial_run(tmp_path):
    """Issue 13: the models train at once on the cluster, then every stage runs as its tasks.
    The smoke models are float32 and a worker trains with one thread where this process may
    use two, so the last bits of the trained weights may differ: equal to float32 rounding
    (the bit-for-bit float64 check of the stages on workers is tests/test_cluster.py)."""
    pytest.importorskip("dask.distributed")
    serial, _ = smoke(tmp_path / "s", "table2")
    args = ["reproduce", "table2", "--budget", "smoke", "--out", str(tmp_path / "d"), "--workers", "2"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    from minivae import io
    for name in ("ffg", "flow"):
        for stage in ("iwae", "ais", "localopt_ffg"):
            a = io.load_results(serial / "results" / f"{name}.h5", stage)[0]
            b = io.load_results(tmp_path / "d" / "results" / f"{name}.h5", stage)[0]
            for k in a:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5, err_msg=f"{name} {stage}.{k}")


def test_the_report_lists_every_difference_from_the_authors_protocol():
    from minivae.experiments.reproduce import QSTAR_DIFFERENCES, protocol
    paper = protocol("mnist", "train", 1000, "train+valid")
    assert "first 1000 training datapoints" in paper and "none in the data protocol" not in paper
    assert "grey-level `mnist.pkl`" in paper and paper.count("\n- ") == 1 + len(QSTAR_DIFFERENCES)
    test = protocol("mnist", "test", 100, "train")
    assert "--split test" in test and "100 datapoints, not 1000" in test
    fashion = protocol("fashion", "train", 1000, "train")
    assert "(intensity / 255 >= 0.5)" in fashion and "none in the data protocol" in fashion
    gray = protocol("mnist-gray", "train", 1000, "train+valid")   # what the authors' loader reads
    assert "grey levels" in gray and "Larochelle's binarized MNIST (`--dataset mnist`)" in gray
    assert "training and validation images together" in gray and gray.count("\n- ") == 1 + len(QSTAR_DIFFERENCES)


def test_the_grey_level_table_trains_what_the_authors_trained():
    """`reproduce --dataset mnist-gray`: the authors' 60 000 images, grey levels, their schedule."""
    from minivae.experiments.budgets import model_config
    cfg = model_config("mnist-gray", "paper", dict(q="ffg"), 0, "table2")
    assert (cfg.dataset, cfg.likelihood, cfg.train_split) == ("mnist-gray", "bernoulli", "train+valid")
    assert (cfg.schedule, cfg.epochs, cfg.warmup_epochs) == ("burda", 3280, 400)
