import numpy as np
import pytest

from minivae.estimators import ais, bdmc
from minivae import io
from minivae.testing import lingauss
from minivae.model import model
from minivae.model.config import Config
from conftest import run_cli
from test_ais import _cupy, elu_model


def test_simulation_is_per_datapoint_and_reproducible():
    cfg = Config(data_dim=12, latent=2, dec_hidden=5, dec_layers=1, enc_layers=0, dtype="float64")
    params = model.init_params(cfg, np.random.default_rng(0))
    x, z = bdmc.simulate(params, cfg, range(6), seed=3)
    x2, z2 = bdmc.simulate(params, cfg, range(4, 6), seed=3)
    assert x.shape == (6, 12) and z.shape == (6, 2) and set(np.unique(x)) <= {0.0, 1.0}
    np.testing.assert_array_equal(x[4:], x2)
    np.testing.assert_array_equal(z[4:], z2)
    assert not np.array_equal(bdmc.simulate(params, cfg, range(6), seed=4)[1], z)


def assert_brackets(r, exact):
    """Both bounds are stochastic: each holds for the mean over datapoints up to its noise
    (3 standard errors; the reverse chains share one exact z per datapoint, hence most noise)."""
    n = len(exact)
    lo, up = r["lower"] - exact, r["upper"] - exact
    assert lo.mean() < 3 * lo.std() / np.sqrt(n), lo
    assert up.mean() > -3 * up.std() / np.sqrt(n), up


@pytest.mark.parametrize("adapt", ["per-chain", "tune-then-freeze"])
def test_bdmc_brackets_the_exact_log_px_of_the_linear_gaussian_model(adapt):
    cfg, params, _ = lingauss.make(latent=2, data_dim=5)
    x, z = bdmc.simulate(params, cfg, range(30), seed=0)
    exact = lingauss.log_px(params, cfg, x)
    r = bdmc.sandwich(params, cfg, x, z, range(30), 0, ais.Settings(chains=20, steps=100, adapt=adapt))
    assert_brackets(r, exact)
    assert abs(r["width"].mean()) < 0.3 and np.all(r["nan"] == 0)
    assert np.all(r["accept_rev"] > 0.3)


def test_bdmc_run_saves_and_resumes(tmp_path):
    cfg, params, _ = lingauss.make()
    s = ais.Settings(chains=4, steps=8, leapfrog=2)
    full = bdmc.run(params, cfg, 5, tmp_path / "a.h5", s, block=2, progress=False)
    again = bdmc.run(params, cfg, 5, tmp_path / "a.h5", s, block=2, progress=False)
    assert set(full) >= {"lower", "upper", "width", "index", "z", "x"} and len(full["lower"]) == 5
    for k in full:
        np.testing.assert_array_equal(again[k], full[k])


@pytest.mark.slow
@pytest.mark.parametrize("adapt", ["per-chain", "tune-then-freeze"])
def test_paper_settings_on_the_linear_gaussian_model(adapt):
    """AIS 100 chains x 500 steps x 10 leapfrog lands within 0.05 nats of exact; BDMC brackets it."""
    cfg, params, _ = lingauss.make(latent=3, data_dim=8)
    n = 50
    x, z = bdmc.simulate(params, cfg, range(n), seed=0)
    exact = lingauss.log_px(params, cfg, x)
    r = bdmc.sandwich(params, cfg, x, z, range(n), 0, ais.Settings(adapt=adapt))
    assert abs((r["lower"] - exact).mean()) < 0.05
    assert_brackets(r, exact)
    assert abs(r["width"].mean()) < 0.1


def test_cli_bdmc(tiny_ckpt, tmp_path):
    out = str(tmp_path / "r.h5")
    code, text = run_cli(["bdmc", tiny_ckpt, "--n", "3", "--chains", "4", "--steps", "6", "--leapfrog", "2",
                          "--out", out])
    assert code == 0, text
    arrays, attrs = io.load_results(out, "bdmc")
    np.testing.assert_allclose(arrays["width"], arrays["upper"] - arrays["lower"])
    assert "mean width" in text and attrs["chains"] == 4
    code, text = run_cli(["bdmc", tiny_ckpt, "--n", "3", "--chains", "0", "--out", str(tmp_path / "b.h5")])
    assert code != 0 and "Invalid value for '--chains'" in text and len(text.strip().splitlines()) == 1


# --- the fused path equals the reference -----------------------------------------------------

def test_bdmc_fused_equals_reference():
    cfg, params, _ = elu_model(1)
    x, z = bdmc.simulate(params, cfg, range(4), seed=0)
    s = ais.Settings(chains=6, steps=30, leapfrog=4)
    f = bdmc.sandwich(params, cfg, x, z, range(4), 0, s, impl="auto")
    r = bdmc.sandwich(params, cfg, x, z, range(4), 0, s, impl="ref")
    for k in ("lower", "upper"):
        np.testing.assert_allclose(f[k], r[k], rtol=0, atol=1e-10)
    np.testing.assert_array_equal(f["accept_rev"], r["accept_rev"])


@pytest.mark.gpu
def test_bdmc_on_cupy_arrays_matches_the_cpu():
    cp = _cupy()
    cfg, params, _ = elu_model(1)
    s = ais.Settings(chains=6, steps=20, leapfrog=4)
    x, z = bdmc.simulate(params, cfg, range(3), seed=0)
    want = bdmc.sandwich(params, cfg, x, z, range(3), 0, s)
    dparams = {k: cp.asarray(v) for k, v in params.items()}
    dx, dz = bdmc.simulate(dparams, cfg, range(3), seed=0, xp=cp)
    np.testing.assert_array_equal(cp.asnumpy(dx), x)
    got = bdmc.sandwich(dparams, cfg, dx, dz, range(3), 0, s)
    for k in ("lower", "upper"):
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-8)
