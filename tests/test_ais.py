import os
import tracemalloc

import numpy as np
import pytest

import cli
from minivae.estimators import ais, evaluate, hmc
from minivae import io, stages
from minivae.testing import lingauss
from minivae.model import model
from minivae.model.config import Config
from minivae.model.densities import softplus
from minivae.errors import CheckpointError, MinivaeError
from conftest import interrupt_after, run_cli


def quadratic_target(A):
    """l(z) = -z^T A z / 2, so f = N(0, (I + beta A)^-1): a correlated Gaussian."""
    def target(z, need_value=True):
        Az = z @ A
        return -0.5 * (z * Az).sum(-1), -Az
    return target


def random_spd(Z, seed=0):
    M = np.random.default_rng(seed).standard_normal((Z, Z))
    return M @ M.T + 0.5 * np.eye(Z)


# ---- the HMC transition ---------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_hmc_leaves_the_target_invariant(beta):
    Z, R = 3, 20000
    A = random_spd(Z)
    cov = np.linalg.inv(np.eye(Z) + beta * A)
    rng = np.random.default_rng(1)
    z = rng.standard_normal((R, Z)) @ np.linalg.cholesky(cov).T        # exact samples of f
    target = quadratic_target(A)
    ll, gll = target(z)
    step = rng.uniform(0.2, 0.9, R)
    accepted = 0
    for _ in range(15):
        z, ll, gll, acc, bad, _ = hmc.hmc_transition(z, ll, gll, target, beta, step, rng.standard_normal((R, Z)),
                                                     np.log(rng.random(R)), 5)
        accepted += acc.mean()
        assert not bad.any()
    assert 0.3 < accepted / 15 < 0.99                                   # the accept test matters
    se = np.sqrt(np.diag(cov) / R)
    assert np.all(np.abs(z.mean(0)) < 5 * se)
    np.testing.assert_allclose(np.cov(z.T), cov, atol=6 * np.sqrt(2 / R) * np.abs(cov).max())
    np.testing.assert_allclose(ll, target(z)[0])                        # carried state stays right


def test_leapfrog_is_reversible_and_second_order():
    Z, R, L = 4, 6, 20
    A = random_spd(Z, 2)
    target = quadratic_target(A)
    rng = np.random.default_rng(3)
    z, p = rng.standard_normal((R, Z)), rng.standard_normal((R, Z))
    step = np.full(R, 0.01)
    z1, p1, ll1, g1 = hmc.leapfrog(z, p, target(z)[1], target, 0.8, step, L)
    z2, p2, _, _ = hmc.leapfrog(z1, -p1, g1, target, 0.8, step, L)
    np.testing.assert_allclose(z2, z, atol=1e-12)
    np.testing.assert_allclose(-p2, p, atol=1e-12)

    def energy_error(s, n):                                             # same trajectory length s * n
        zn, pn, lln, _ = hmc.leapfrog(z, p, target(z)[1], target, 0.8, np.full(R, s), n)
        H0 = -hmc.log_f(z, target(z)[0], 0.8) + 0.5 * (p * p).sum(1)
        return np.abs(-hmc.log_f(zn, lln, 0.8) + 0.5 * (pn * pn).sum(1) - H0)

    ratio = energy_error(0.01, L) / energy_error(0.005, 2 * L)
    assert np.all((ratio > 3) & (ratio < 5))                            # error ~ step^2


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_nan_proposals_are_rejected_counted_and_not_propagated(poison):
    Z, R = 2, 8
    bad_rows = np.zeros(R, bool)
    bad_rows[[1, 4, 5]] = True
    clean = quadratic_target(np.eye(Z))

    def target(z, need_value=True):
        ll, g = clean(z)
        return np.where(bad_rows, poison, ll), np.where(bad_rows[:, None], poison, g)

    rng = np.random.default_rng(0)
    z = rng.standard_normal((R, Z))
    ll, gll = clean(z)
    zn, lln, gn, acc, nan, _ = hmc.hmc_transition(z, ll, gll, target, 1.0, np.full(R, 0.1),
                                                  rng.standard_normal((R, Z)), np.full(R, -50.0), 3)
    np.testing.assert_array_equal(nan, bad_rows)
    assert not acc[bad_rows].any() and acc[~bad_rows].all()
    np.testing.assert_array_equal(zn[bad_rows], z[bad_rows])
    assert np.isfinite(zn).all() and np.isfinite(lln).all() and np.isfinite(gn).all()


def test_step_size_adaptation_settles_at_the_target_acceptance():
    Z, R = 10, 400
    target = quadratic_target(np.diag(np.linspace(1, 30, Z)))
    rng = np.random.default_rng(5)
    z = rng.standard_normal((R, Z)) * 0.2
    ll, gll = target(z)
    for start in (0.01, 2.0):                                           # from too small and too large
        step, rates = np.full(R, start), []
        for t in range(400):
            z, ll, gll, acc, _, step = hmc.hmc_transition(z, ll, gll, target, 1.0, step,
                                                          rng.standard_normal((R, Z)), np.log(rng.random(R)), 5,
                                                          target_accept=0.65)
            rates.append(acc.mean())
        assert abs(np.mean(rates[-150:]) - 0.65) < 0.05
    up = hmc.adapt_step(np.ones(3), np.ones(3, bool), 0.65)
    down = hmc.adapt_step(np.ones(3), np.zeros(3, bool), 0.65)
    assert np.all(up > 1) and np.all(down < 1)


# ---- AIS --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sigmoid", "linear"])
def test_schedule_runs_from_zero_to_one(kind):
    b = ais.schedule(50, kind)
    assert b[0] == 0 and b[-1] == 1 and np.all(np.diff(b) > 0) and len(b) == 51
    if kind == "sigmoid":                                               # small steps near the ends
        d = np.diff(b)
        assert d[0] < d[25] / 10 and d[-1] < d[25] / 10


def small_mlp(likelihood="bernoulli", latent=2, data_dim=20, hidden=16, seed=0, scale=1.0):
    cfg = Config(data_dim=data_dim, latent=latent, dec_hidden=hidden, dec_layers=1, enc_hidden=8,
                 enc_layers=1, act="tanh", likelihood=likelihood, obs_std=0.7, dtype="float64")
    rng = np.random.default_rng(seed)
    params = model.init_params(cfg, rng)
    for k in params:
        if k.startswith("dec."):
            params[k] = scale * (params[k] + 0.5 * rng.standard_normal(params[k].shape))
    return cfg, params


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_likelihood_target_matches_the_model(likelihood):
    cfg, params = small_mlp(likelihood)
    rng = np.random.default_rng(1)
    x = (rng.random((5, 20)) < 0.5).astype(float)
    z = rng.standard_normal((5, 2))
    target = ais.likelihood_target(params, cfg, x)
    ll, g = target(z)
    lj, dz = model.log_joint(params, cfg, x, z, beta=1.0)
    np.testing.assert_allclose(ll, model.log_lik(params, cfg, x, z)[0], rtol=1e-12)
    np.testing.assert_allclose(g, dz + z, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(target(z, need_value=False)[1], g, rtol=1e-12)


@pytest.mark.parametrize("adapt", ["per-chain", "tune-then-freeze"])
def test_ais_on_the_linear_gaussian_model_matches_the_exact_log_px(adapt):
    cfg, params, x = lingauss.make(latent=2, data_dim=5, n=30)
    exact = lingauss.log_px(params, cfg, x)
    s = ais.Settings(chains=20, steps=100, leapfrog=10, adapt=adapt)
    stats, logw, _ = ais.forward(params, cfg, x, range(30), 0, s)
    assert abs((stats["estimate"] - exact).mean()) < 0.1
    assert logw.shape == (30, 20) and np.all(stats["nan"] == 0)
    assert np.all((stats["ess"] >= 1) & (stats["ess"] <= 20)) and np.all(stats["accept"] > 0.3)


def grid_log_px(params, cfg, x, lim=7.0, n=301):
    """log p(x) of a 2-D latent Bernoulli model by quadrature on a grid (x: 0/1)."""
    g = np.linspace(-lim, lim, n)
    z = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)                 # (G, 2)
    logits, _ = model.decode(params, cfg, z)                            # (G, D)
    ll = x @ logits.T - softplus(logits).sum(1)                         # (N, G): sum_d log Bernoulli
    lj = ll - 0.5 * (z * z).sum(1) - np.log(2 * np.pi)
    return evaluate.logmeanexp(lj, 1) + np.log(len(z) * (g[1] - g[0]) ** 2)


def test_grid_quadrature_is_converged():
    cfg, params = small_mlp("bernoulli", scale=1.5)
    x = (np.random.default_rng(0).random((3, 20)) < 0.5).astype(float)
    np.testing.assert_allclose(grid_log_px(params, cfg, x), grid_log_px(params, cfg, x, 8.0, 501), atol=1e-8)


@pytest.mark.parametrize("act", ["tanh", "elu"])
def test_ais_on_a_2d_bernoulli_decoder_matches_quadrature(act):
    """tanh: the reference path; elu: the fused path (fastpath.Decoder and the HMC kernels)."""
    cfg, params = small_mlp("bernoulli", scale=1.5) if act == "tanh" else elu_model(1, data_dim=20)[:2]
    assert (ais.likelihood_target(params, cfg, np.zeros((1, 20))).fused is None) == (act == "tanh")
    rng = np.random.default_rng(2)
    z = rng.standard_normal((24, 2))
    logits, _ = model.decode(params, cfg, z)
    x = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(float)
    exact = grid_log_px(params, cfg, x)
    stats, _, _ = ais.forward(params, cfg, x, range(24), 0, ais.Settings(chains=50, steps=200, leapfrog=10))
    assert abs((stats["estimate"] - exact).mean()) < 0.05, stats["estimate"] - exact


def test_ais_counts_nan_rejects_and_keeps_finite_weights():
    cfg, params, x = lingauss.make(latent=2, data_dim=5, n=3)
    clean = ais.likelihood_target(params, cfg, np.repeat(x, 10, axis=0))

    def target(z, need_value=True):                                     # NaN far out on one axis
        ll, g = clean(z, need_value)
        far = z[:, 0] > 1.0
        return (None if ll is None else np.where(far, np.nan, ll)), np.where(far[:, None], np.nan, g)

    rngs = stages.streams(0, range(3), 0)
    z0 = np.concatenate([r.standard_normal((10, 2)) * 0.3 for r in rngs])
    logw, info = ais.anneal(target, z0, ais.schedule(30), rngs, ais.Settings(chains=10, step0=0.5),
                            np.full(30, 0.5))
    assert info["nan"].sum() > 0 and np.isfinite(logw).all()


# ---- blocks, resume, same numbers ------------------------------------------------------------

FAST = ais.Settings(chains=5, steps=12, leapfrog=3)


def test_numbers_do_not_depend_on_the_block_size(tmp_path):
    cfg, params, x = lingauss.make(n=7)
    a = ais.run(params, cfg, x, tmp_path / "a.h5", FAST, block=2, progress=False)
    b = ais.run(params, cfg, x, tmp_path / "b.h5", FAST, block=7, progress=False)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_an_interrupted_run_resumes_to_identical_numbers(tmp_path, monkeypatch):
    cfg, params, x = lingauss.make(n=8)
    full = ais.run(params, cfg, x, tmp_path / "full.h5", FAST, block=2, progress=False)
    out = tmp_path / "part.h5"
    with pytest.raises(KeyboardInterrupt):
        ais.run(params, cfg, x, out, FAST, block=2, progress=False, runner=interrupt_after(2))
    assert io.load_results(out, "ais")[1]["n"] == 4
    calls = []
    orig = ais.forward
    monkeypatch.setattr(ais, "forward", lambda *a, **k: calls.append(a[3]) or orig(*a, **k))
    again = ais.run(params, cfg, x, out, FAST, block=2, progress=False)
    assert [list(c) for c in calls] == [[4, 5], [6, 7]]                  # only the missing blocks
    for k in full:
        np.testing.assert_array_equal(again[k], full[k])
    with pytest.raises(CheckpointError, match="another --out"):
        ais.run(params, cfg, x, out, ais.Settings(chains=5, steps=13, leapfrog=3), block=2, progress=False)


@pytest.mark.parametrize("bad", [dict(chains=0), dict(steps=0), dict(leapfrog=-1), dict(target_accept=1.5),
                                 dict(schedule="cosine"), dict(adapt="never")])
def test_bad_settings_are_user_errors(bad, tmp_path):
    cfg, params, x = lingauss.make(n=2)
    with pytest.raises(MinivaeError):
        ais.run(params, cfg, x, tmp_path / "r.h5", ais.Settings(**bad), progress=False)


# ---- command line -----------------------------------------------------------------------------

def test_cli_ais_runs_saves_and_resumes(tiny_ckpt, tmp_path):
    out = str(tmp_path / "r.h5")
    args = ["ais", tiny_ckpt, "--n", "3", "--chains", "4", "--steps", "6", "--leapfrog", "2",
            "--block", "2", "--out", out]
    code, text = run_cli(args)
    assert code == 0, text
    arrays, attrs = io.load_results(out, "ais")
    assert set(arrays) >= {"estimate", "ess", "logw_std", "accept", "step", "nan", "index"}
    assert len(arrays["index"]) == 3 and attrs["chains"] == 4 and attrs["schedule"] == "sigmoid"
    code, text2 = run_cli(args)                                         # all done: same numbers
    assert code == 0 and text2.split("(")[0] == text.split("(")[0]
    code, text = run_cli(args[:-2] + ["--steps", "7", "--out", out])
    assert code != 0 and "another --out" in text and len(text.strip().splitlines()) == 1




@pytest.mark.parametrize("command", ["ais", "iwae", "bdmc"])
def test_cli_bad_checkpoint_is_one_line(tmp_path, command):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    for path in (str(bad), str(tmp_path / "missing.h5")):
        code, text = run_cli([command, path, "--n", "2", "--out", str(tmp_path / "r.h5")])
        assert code != 0 and "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert not (tmp_path / "r.h5").exists()


def test_cli_checkpoint_for_other_data_is_one_line(tmp_path):
    cfg = Config(data_dim=20, latent=2, enc_hidden=4, dec_hidden=4, enc_layers=1, dec_layers=1)
    path = str(tmp_path / "small.h5")
    io.save_checkpoint(path, model.init_params(cfg, np.random.default_rng(0)), cfg)
    code, text = run_cli(["ais", path, "--n", "2", "--out", str(tmp_path / "r.h5")])
    assert code != 0 and "wrong checkpoint" in text and len(text.strip().splitlines()) == 1


def test_cli_threads_are_set_before_numpy_loads():
    import subprocess
    import sys
    from pathlib import Path
    code = ("import os, sys, cli\n"
            "try:\n    cli.main(['--threads', '3', 'ais', '--help'])\nexcept SystemExit:\n    pass\n"
            "print([os.environ[v] for v in cli.THREAD_VARS], 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(cli.__file__).parent, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "['3', '3', '3', '3'] False", out.stdout + out.stderr


def test_cli_threads_in_process(tiny_ckpt, tmp_path, monkeypatch):
    import numba
    for var in cli.THREAD_VARS:
        monkeypatch.setenv(var, os.environ.get(var, "2"))            # restored afterwards
    before, numba_var = numba.get_num_threads(), os.environ["NUMBA_NUM_THREADS"]
    try:
        code, text = run_cli(["--threads", "1", "ais", tiny_ckpt, "--n", "2", "--chains", "3", "--steps", "4",
                              "--leapfrog", "2", "--out", str(tmp_path / "r.h5")])
        assert code == 0, text
        assert numba.get_num_threads() == 1 and "BLAS keeps its thread count" in text
        assert os.environ["NUMBA_NUM_THREADS"] == numba_var           # Numba would refuse a new value
    finally:
        numba.set_num_threads(before)
    code, text = run_cli(["--threads", "0", "ais", tiny_ckpt])
    assert code != 0 and "--threads" in text


# --- the fused path equals the reference -----------------------------------------------------

# On the fused kernels (impl="auto") AIS gives the NumPy reference's numbers (impl="ref"): equal
# to rounding only over short runs. HMC on a peaked posterior is chaotic, so a 1-ulp change
# anywhere (this path, a BLAS, a thread count) grows by orders of magnitude per transition after
# ~50 transitions near beta = 1 and single chains then decorrelate. Longer runs are checked as
# estimators instead (quadrature).

def elu_model(layers=2, latent=2, data_dim=20, hidden=16, seed=0, scale=1.5, dtype="float64"):
    cfg = Config(data_dim=data_dim, latent=latent, dec_hidden=hidden, dec_layers=layers, enc_hidden=8,
                 enc_layers=1, act="elu", likelihood="bernoulli", dtype=dtype)
    rng = np.random.default_rng(seed)
    params = model.init_params(cfg, rng)
    for k in params:
        if k.startswith("dec."):
            params[k] = (scale * (params[k] + 0.5 * rng.standard_normal(params[k].shape))).astype(dtype)
    x = (rng.random((5, data_dim)) < 0.5).astype(dtype)
    return cfg, params, x


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_fused_target_is_the_numpy_target(layers):
    """x once per datapoint, rows datapoint-major (row r is datapoint r // chains)."""
    cfg, params, x = elu_model(layers)
    chains = 3
    target = ais.likelihood_target(params, cfg, x, chains)
    assert target.fused is not None
    z = np.random.default_rng(1).standard_normal((len(x) * chains, 2))
    ll, gll = target(z)
    np.testing.assert_allclose(ll, ais.likelihood_target(params, cfg, np.repeat(x, chains, axis=0))(z)[0])
    g, ll2, gll2 = target.fused.grad_log_f(z, 0.3, True)
    np.testing.assert_allclose(ll2, ll, rtol=1e-13)
    np.testing.assert_allclose(gll2, gll, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g, 0.3 * gll - z, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("case", ["tanh", "gaussian", "ref"])
def test_models_the_kernels_do_not_cover_run_the_reference(case):
    if case == "gaussian":
        cfg, params, x = lingauss.make(n=4)
    else:
        cfg, params, x = elu_model(1)
        cfg = cfg.replace(act=case) if case == "tanh" else cfg
    target = ais.likelihood_target(params, cfg, x, 3, impl="ref" if case == "ref" else "auto")
    assert target.fused is None
    s = ais.Settings(chains=3, steps=15, leapfrog=3)
    a = ais.forward(params, cfg, x, range(len(x)), 0, s, impl="auto")
    r = ais.forward(params, cfg, x, range(len(x)), 0, s, impl="ref")
    if case != "ref":
        np.testing.assert_array_equal(a[1], r[1])


@pytest.mark.parametrize("adapt", ["per-chain", "tune-then-freeze"])
@pytest.mark.parametrize("layers", [0, 2])
def test_a_whole_ais_run_fused_equals_reference(adapt, layers):
    cfg, params, x = elu_model(layers)
    s = ais.Settings(chains=8, steps=40, leapfrog=5, adapt=adapt)
    fs, fw, fsched = ais.forward(params, cfg, x, range(5), 0, s, impl="auto")
    rs, rw, rsched = ais.forward(params, cfg, x, range(5), 0, s, impl="ref")
    np.testing.assert_allclose(fw, rw, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fsched, rsched, rtol=1e-12)
    for k in ("accept", "nan"):
        np.testing.assert_array_equal(fs[k], rs[k])
    assert 0.3 < fs["accept"].mean() < 1                               # some rejects


def test_fused_anneal_leaves_the_callers_arrays_alone():
    cfg, params, x = elu_model(1)
    target = ais.likelihood_target(params, cfg, x, 4)
    rngs = stages.streams(0, range(5), 0)
    z0, step0 = np.random.default_rng(0).standard_normal((20, 2)), np.full(20, 0.1)
    z_copy = z0.copy()
    ais.anneal(target, z0, ais.schedule(10), rngs, ais.Settings(chains=4), step0)
    np.testing.assert_array_equal(z0, z_copy)
    assert (step0 == 0.1).all()


def test_float32_fused_is_close_to_reference_over_a_short_run():
    cfg, params, x = elu_model(2, dtype="float32")
    s = ais.Settings(chains=8, steps=20, leapfrog=5)
    f = ais.forward(params, cfg, x, range(5), 0, s, impl="auto")
    r = ais.forward(params, cfg, x, range(5), 0, s, impl="ref")
    np.testing.assert_allclose(f[1], r[1], rtol=0, atol=1e-3)


def test_the_fused_loop_asks_for_the_likelihood_once_per_transition_and_allocates_no_rows():
    Z, C, L = 8, 100, 6
    cfg, params, x = elu_model(2, latent=Z, data_dim=400, hidden=64)
    target = ais.likelihood_target(params, cfg, x, C)
    calls = []
    inner = target.fused.grad_log_f

    def counting(z, beta, need_value):
        calls.append(need_value)
        return inner(z, beta, need_value)

    target.fused.grad_log_f = counting
    R = len(x) * C
    rng = np.random.default_rng(0)
    z, step = rng.standard_normal((R, Z)), np.full(R, 0.1)
    ll, gll = target.fused.start(z, 0.5)
    p0, log_u = rng.standard_normal((R, Z)), np.log(rng.random(R))
    hmc.hmc_transition(z, ll, gll, target, 0.5, step, p0, log_u, L, 0.65)   # warm-up (JIT)
    calls.clear()
    tracemalloc.start()
    hmc.hmc_transition(z, ll, gll, target, 0.5, step, p0, log_u, L, 0.65)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert calls == [False] * (L - 1) + [True]
    assert peak < R * Z * 8, peak                       # less than one (R, Z) array


def _cupy():
    cp = pytest.importorskip("cupy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        pytest.skip(f"no CUDA device: {e}")
    return cp


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["auto", "ref"])
def test_ais_on_cupy_arrays_matches_the_cpu(impl):
    cp = _cupy()
    cfg, params, x = elu_model(2)
    s = ais.Settings(chains=8, steps=30, leapfrog=5, adapt="tune-then-freeze")
    want = ais.forward(params, cfg, x, range(5), 0, s, impl="ref")
    dparams = {k: cp.asarray(v) for k, v in params.items()}
    target = ais.likelihood_target(dparams, cfg, cp.asarray(x), 8, impl)
    assert (target.fused is None) == (impl == "ref")
    got = ais.forward(dparams, cfg, cp.asarray(x), range(5), 0, s, impl=impl)
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-8)
    np.testing.assert_array_equal(got[0]["accept"], want[0]["accept"])
