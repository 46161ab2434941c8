import numpy as np
import pytest
from click.testing import CliRunner

from conftest import interrupt_after, tiny_model_file
from minivae import io
from minivae.testing import lingauss
from minivae.estimators import localopt
from minivae.model import model
from minivae.model.config import Config
from minivae.model.densities import LOG2PI
from minivae.errors import MinivaeError
from minivae.model import fastpath, objectives
from minivae.model.posteriors import get_family
from test_train_step import near, small

FAST = dict(samples=100, lr=0.02, check_every=50, patience=5)


def exact_ffg_elbo(params, cfg, x, h):
    """E_q[log p(x, z)] + H[q] for q = N(mu, diag exp(logvar)) on the linear-Gaussian model."""
    W, b, s2 = params["dec.fc0.W"], params["dec.fc0.b"], cfg.obs_std ** 2
    Z, D = W.shape
    mu, var = h[:, :Z], np.exp(h[:, Z:])
    r = x - mu @ W - b
    lik = -0.5 * (D * (LOG2PI + np.log(s2)) + ((r * r).sum(1) + var @ (W * W).sum(1)) / s2)
    prior = -0.5 * (Z * LOG2PI + (mu * mu + var).sum(1))
    entropy = 0.5 * (h[:, Z:] + 1 + LOG2PI).sum(1)
    return lik + prior + entropy


def exact_gauss_kl(mu, L, m, P):
    """KL(N(mu, L L^T) || N(m, P^-1)) per row."""
    Z = P.shape[0]
    S = L @ L.swapaxes(-1, -2)
    d = m - mu
    logdet_S = 2 * np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(-1)
    return 0.5 * (np.einsum("ij,nji->n", P, S) + np.einsum("ni,ij,nj->n", d, P, d) - Z
                  - np.linalg.slogdet(P)[1] - logdet_S)


def test_ffg_qstar_reaches_the_mean_field_optimum():
    cfg, params, x = lingauss.make(latent=3, data_dim=6, n=6)
    fit = localopt.fit_local(params, cfg, get_family(cfg), x, np.random.default_rng(0),
                             max_steps=5000, **FAST)
    _, _, best = lingauss.optimal_ffg(params, cfg, x)
    got = exact_ffg_elbo(params, cfg, x, fit["local"]["h"])
    assert np.all(got <= best + 1e-9) and np.all(best - got < 0.05), best - got
    assert fit["converged"].all() and np.all(fit["steps"] < 5000)


def test_final_elbo_estimate_matches_the_exact_elbo_of_the_fitted_q():
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=5, seed=3)
    family = get_family(cfg)
    fit = localopt.fit_local(params, cfg, family, x, np.random.default_rng(0), max_steps=3000, **FAST)
    est, se = localopt.local_elbo(params, cfg, family, x, fit["local"], np.random.default_rng(1),
                                  samples=4000, chunk=7)   # a small chunk: many chunks
    exact = exact_ffg_elbo(params, cfg, x, fit["local"]["h"])
    assert np.all(np.abs(est - exact) < 5 * se + 1e-9)


def test_stopping_rule_is_patience_checks_after_the_best_window_mean():
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=6)
    fit = localopt.fit_local(params, cfg, get_family(cfg), x, np.random.default_rng(1),
                             max_steps=4000, samples=20, lr=0.05, check_every=20, patience=4)
    for trace, steps, conv in zip(fit["trace"], fit["steps"], fit["converged"]):
        checks = steps // 20
        assert conv and steps % 20 == 0
        assert not np.isnan(trace[:checks]).any() and np.isnan(trace[checks:]).all()
        best = np.argmax(trace[:checks])
        assert checks - 1 - best == 4                                   # exactly `patience` after
        assert np.all(np.maximum.accumulate(trace[:checks])[best:] == trace[best])


def test_max_steps_bounds_the_run():
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=3)
    fit = localopt.fit_local(params, cfg, get_family(cfg), x, np.random.default_rng(0),
                             max_steps=130, samples=10, lr=1e-3, check_every=50, patience=10)
    assert not fit["converged"].any() and np.all(fit["steps"] == 100)
    assert fit["trace"].shape == (3, 2) and not np.isnan(fit["trace"]).any()


@pytest.mark.parametrize("q", ["ffg", "flow"])
def test_frozen_datapoints_are_never_written_again(q):
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=8, seed=2)
    cfg = cfg.replace(q=q, flow_hidden=6)
    frozen = {}

    def snapshot(step, rows, local):
        for i in sorted(set(range(8)) - set(rows.tolist()) - set(frozen)):
            frozen[i] = {k: v[i].copy() for k, v in local.items()}

    fit = localopt.fit_local(params, cfg, get_family(cfg), x, np.random.default_rng(0),
                             max_steps=3000, samples=10, lr=0.02, check_every=20, patience=3,
                             on_check=snapshot)
    assert len(set(fit["steps"].tolist())) > 1          # they stopped at different steps
    assert sorted(frozen) == list(range(8))
    for i, snap in frozen.items():
        for k, v in snap.items():
            assert np.array_equal(fit["local"][k][i], v), (i, k)


def _poisoned(monkeypatch, at):
    """fit_local's gradient, with {step: (row, what)} made non-finite: what "logw" (one sample's
    log w) or "grad" (one entry of d/dh, log w finite)."""
    real, calls = localopt._gradient, [0]

    def gradient(*args):
        inner = real(*args)

        def step(work, x, eps, out=None):
            calls[0] += 1
            grads, logw = inner(work, x, eps, out=out)
            row, what = at.get(calls[0], (None, None))
            if what == "logw":
                logw[row, 3] = np.nan
            elif what == "grad":
                grads["h"][row, 0] = np.inf
            return grads, logw
        return step
    monkeypatch.setattr(localopt, "_gradient", gradient)


@pytest.mark.parametrize("q", ["ffg", "flow"])
def test_a_stopped_row_keeps_its_best_checks_parameters(monkeypatch, q):
    """Every row returns the parameters of its best check: those of a run cut off right there.
    Row 0's log w turns NaN at step 250, row 1's gradient inf at step 130 (while all 4 rows run,
    the call number is the step): each stops there (steps 250, 130); the others run on, bit for
    bit as in a clean run. Before, a row kept its last step's parameters, and the NaN reached
    row 0's and the inf row 1's."""
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=4, seed=2)
    cfg = cfg.replace(q=q, flow_hidden=6)
    kw = dict(max_steps=600, samples=10, lr=0.02, check_every=50, patience=4)
    rng = lambda: [np.random.default_rng([5, i]) for i in range(4)]   # noqa: E731
    clean = localopt.fit_local(params, cfg, get_family(cfg), x, rng(), **kw)
    _poisoned(monkeypatch, {250: (0, "logw"), 130: (1, "grad")})
    fit = localopt.fit_local(params, cfg, get_family(cfg), x, rng(), **kw)
    monkeypatch.undo()
    assert fit["steps"][:2].tolist() == [250, 130] and not fit["converged"][:2].any()
    assert localopt.diverged(fit["steps"], fit["converged"], 600, 50).tolist() == [1, 1, 0, 0]
    assert np.array_equal(fit["steps"][2:], clean["steps"][2:])
    assert np.array_equal(fit["trace"][2:], clean["trace"][2:], equal_nan=True)
    for row, checks in ((0, 4), (1, 2), (2, None), (3, None)):
        at = 50 * (1 + int(np.nanargmax((fit if checks else clean)["trace"][row, :checks])))
        assert at < fit["steps"][row] or checks
        cut = localopt.fit_local(params, cfg, get_family(cfg), x, rng(), **{**kw, "max_steps": at})
        for k, v in fit["local"].items():
            assert np.isfinite(v).all() and np.array_equal(v[row], cut["local"][k][row]), (row, k)


def test_the_stage_saves_a_diverged_row_and_says_so(monkeypatch, tmp_path):
    """Through the stage: the row whose log w turned NaN is saved with a finite ELBO (before the
    guard the stage refused its block), and the note names it."""
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=3)
    s = dict(max_steps=400, samples=10, lr=0.02, check_every=20, patience=1000, final_samples=200,
             block=3, seed=5)
    _poisoned(monkeypatch, {70: (1, "logw")})
    e = localopt.run(params, cfg, x, "ffg", tmp_path / "r.h5", s, progress=False)
    assert np.isfinite(e["elbo"]).all() and e["steps"].tolist() == [400, 70, 400]
    assert not e["converged"].any()
    arrays, attrs = io.load_results(tmp_path / "r.h5", "localopt_ffg")
    note = localopt.stop_note("ffg", arrays["converged"], arrays["steps"], attrs)
    assert note == ("note: q*_ffg converged by the stopping rule for 0/3 datapoints; of the others, 2 "
                    "stopped at --max-steps 400, 1 stopped early where log w or its gradient turned "
                    "non-finite")


def test_local_fullcov_qstar_has_no_approximation_gap():
    cfg, params, x = lingauss.make(latent=3, data_dim=6, n=4, seed=1)
    family = get_family(cfg.replace(q="fullcov"))
    fit = localopt.fit_local(params, cfg, family, x, np.random.default_rng(0),
                             max_steps=8000, **FAST)
    m, P = lingauss.posterior(params, cfg, x)
    kl = exact_gauss_kl(fit["local"]["h"][:, :3], family.cholesky(fit["local"]["h"]), m, P)
    assert np.all(kl < 0.05), kl                          # ELBO = log p(x) - KL
    _, _, ffg = lingauss.optimal_ffg(params, cfg, x)
    assert np.all(lingauss.log_px(params, cfg, x) - kl > ffg)


def test_resume_after_an_interruption_gives_identical_results(tmp_path):
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=7)
    s = dict(max_steps=400, samples=10, lr=0.02, check_every=20, patience=3, final_samples=200,
             block=3, seed=5)
    whole = localopt.run(params, cfg, x, "ffg", tmp_path / "a.h5", s, progress=False)
    with pytest.raises(KeyboardInterrupt):
        localopt.run(params, cfg, x, "ffg", tmp_path / "b.h5", s, progress=False, runner=interrupt_after(1))
    assert io.load_results(tmp_path / "b.h5", "localopt_ffg")[1]["n"] == 3
    again = localopt.run(params, cfg, x, "ffg", tmp_path / "b.h5", s, progress=False)
    for k in whole:
        assert np.array_equal(whole[k], again[k], equal_nan=k != "converged" and k != "steps"), k
    arrays, attrs = io.load_results(tmp_path / "b.h5", "localopt_ffg")
    assert attrs["n"] == 7 and attrs["lr"] == 0.02 and attrs["q"] == "ffg"
    with pytest.raises(MinivaeError, match="other settings.*lr"):
        localopt.run(params, cfg, x, "ffg", tmp_path / "b.h5", {**s, "lr": 0.01}, progress=False)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random (untrained) tiny MNIST model, float64."""
    return tiny_model_file(tmp_path_factory.mktemp("ck"), "float64")


def invoke(*args):
    from cli import main
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_localopt_runs_and_resumes(tiny_checkpoint, tmp_path):
    out = tmp_path / "r.h5"
    args = ["localopt", tiny_checkpoint, "--n", 4, "--out", out, "--max-steps", 200, "--samples", 5,
            "--check-every", 20, "--patience", 2, "--final-samples", 50, "--block", 2]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert "mean L_VAE[q*_ffg]" in res.output
    first, attrs = io.load_results(out, "localopt_ffg")
    assert first["elbo"].shape == (4,) and attrs["split"] == "test" and attrs["n"] == 4
    assert invoke(*args).exit_code == 0                     # all blocks done: reused as is
    assert np.array_equal(io.load_results(out, "localopt_ffg")[0]["elbo"], first["elbo"])


@pytest.mark.parametrize("args,message", [
    (["--q", "bogus"], "Invalid value for '--q'"),
    (["--n", 100000], "--n 100000 is larger than the mnist test split"),
    (["--n", 0], "Invalid value for '--n'"),
    (["--max-steps", 10], "'--max-steps': 10 is less than --check-every (100)"),
])
def test_cli_localopt_bad_input(tiny_checkpoint, tmp_path, args, message):
    res = invoke("localopt", tiny_checkpoint, "--out", tmp_path / "r.h5", *args)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert message in res.output and res.output.count("Error:") == 1


def test_cli_localopt_missing_checkpoint(tmp_path):
    res = invoke("localopt", tmp_path / "nope.h5", "--out", tmp_path / "r.h5")
    assert res.exit_code != 0 and res.output.startswith("Error: ") and "does not exist" in res.output
    assert len(res.output.strip().splitlines()) == 1


# --- the fused q*_FFG step (fastpath.QStarFFG) and Flow q* equal the reference ---------------

def test_qstar_ffg_step_is_log_weights_backward():
    cfg, params, x, rng = small()
    family = get_family(cfg)
    h = 0.5 * rng.standard_normal((6, 6))
    eps = rng.standard_normal((6, 5, 3))
    logw, back = objectives.log_weights(params, cfg, family, x, h, eps, decoder_grads=False)
    dh, _ = back(np.full(logw.shape, 1 / 5))
    step = fastpath.QStarFFG(params, 7, 5)
    dh2, logw2 = step(params, x, h, eps)
    near(logw2, logw)
    near(dh2, dh)


@pytest.mark.parametrize("dec_layers", [2, 0])
def test_fit_local_fast_path_follows_the_reference(monkeypatch, dec_layers):
    cfg, params, x, _ = small(dec_layers=dec_layers, n=5)
    family = get_family(cfg)
    settings = dict(max_steps=120, samples=4, lr=0.05, check_every=10, patience=2)
    calls = []
    monkeypatch.setattr(fastpath.QStarFFG, "__call__", lambda self, *a, _f=fastpath.QStarFFG.__call__:
                        calls.append(1) or _f(self, *a))
    fast = localopt.fit_local(params, cfg, family, x, np.random.default_rng(3), **settings)
    assert calls
    ref = localopt.fit_local(params, cfg, family, x, np.random.default_rng(3), impl="ref", **settings)
    np.testing.assert_array_equal(fast["steps"], ref["steps"])
    np.testing.assert_array_equal(fast["converged"], ref["converged"])
    assert len(set(fast["steps"])) > 1                                   # rows were compacted
    near(fast["local"]["h"], ref["local"]["h"], 1e-9)
    near(np.nan_to_num(fast["trace"]), np.nan_to_num(ref["trace"]), 1e-10)


def test_flow_fit_local_fused_decoder_and_adam_follow_the_reference():
    cfg, params, x, _ = small(n=4)
    cfg = cfg.replace(q="flow", flow_hidden=5)
    family = get_family(cfg)
    settings = dict(max_steps=40, samples=3, lr=0.02, check_every=10, patience=1)
    fast = localopt.fit_local(params, cfg, family, x, np.random.default_rng(4), **settings)
    ref = localopt.fit_local(params, cfg, family, x, np.random.default_rng(4), impl="ref", **settings)
    np.testing.assert_array_equal(fast["steps"], ref["steps"])
    for k in ref["local"]:
        near(fast["local"][k], ref["local"][k], 1e-9)


def test_fit_local_keeps_the_reference_for_other_models():
    cfg, params, x, _ = small()
    for c in (cfg.replace(act="tanh"), cfg.replace(q="flow", flow_hidden=4)):
        assert not fastpath.supports(c, get_family(c))
    assert fastpath.supports(cfg, get_family(cfg))


def test_rows_are_views_of_one_flat_buffer_and_compact_in_place():
    rng = np.random.default_rng(0)
    arrays = {"h": rng.standard_normal((5, 4)), "q.W": rng.standard_normal((5, 2, 3))}
    rows = localopt._Rows(arrays, np)
    buf = rows.buf
    assert rows.flat.shape == (5, 10) and all(np.shares_memory(v, buf) for v in rows.views.values())
    rows.take(np.array([1, 3, 4]))
    assert rows.buf is buf and rows.flat.shape == (3, 10)
    for k, v in arrays.items():
        np.testing.assert_array_equal(rows.views[k], v[[1, 3, 4]])
