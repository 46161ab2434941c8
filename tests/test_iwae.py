import numpy as np
import pytest

from minivae import io
from minivae.estimators import iwae
from minivae.testing import lingauss
from minivae.model import model, objectives
from minivae.model.config import Config
from minivae.errors import MinivaeError
from minivae.model.posteriors import get_family
from conftest import interrupt_after, run_cli


def test_streaming_logsumexp_is_exact_for_huge_magnitudes():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.normal(-1e5, 50, (3, 40)), rng.normal(3e4, 50, (3, 7))], 1)
    a = a[:, rng.permutation(47)]
    a[2] = -np.inf                                                     # a datapoint with no mass
    a[2, 5] = -7e5
    m_all = a.max(1)
    direct = m_all + np.log(np.exp(a - m_all[:, None]).sum(1))
    for width in (1, 5, 47):
        m, s = np.full(3, -np.inf), np.zeros(3)
        for j in range(0, 47, width):
            m, s = iwae.lse_update(m, s, a[:, j:j + width])
        np.testing.assert_allclose(m + np.log(s), direct, rtol=1e-15)
    m, s = iwae.lse_update(np.full(1, -np.inf), np.zeros(1), np.full((1, 4), -np.inf))
    assert m[0] == -np.inf and s[0] == 0


def tiny_model(q, seed=0):
    cfg = Config(data_dim=6, latent=3, enc_hidden=5, dec_hidden=4, enc_layers=1, dec_layers=2, q=q,
                 flow_steps=1, flow_hidden=4, dtype="float64")
    try:
        get_family(cfg)
    except MinivaeError as e:
        pytest.skip(str(e))
    rng = np.random.default_rng(seed)
    params = model.init_params(cfg, rng)
    x = (rng.random((5, 6)) < 0.4).astype(np.float64)
    return cfg, params, x


@pytest.mark.parametrize("q", ["ffg", "fullcov", "flow"])
def test_chunked_bounds_equal_the_unchunked_computation(q):
    cfg, params, x = tiny_model(q)
    k, seed, index = 23, 4, np.array([3, 0, 9, 1, 2])
    family = get_family(cfg)
    eps = np.stack([np.random.default_rng([seed, i]).standard_normal((k, family.noise_dim)) for i in index])
    h, _ = model.encode(params, cfg, x)
    logw, _ = objectives.log_weights(params, cfg, family, x, h, eps)
    want_elbo, want_iwae = logw.mean(1), objectives.reduce_weights(logw, "iwae")[0]
    for chunk in (1, 7, 23, 50, 10000):
        elbo, iw = iwae.bounds(params, cfg, x, index, k, seed, chunk)
        np.testing.assert_allclose(elbo, want_elbo, rtol=1e-13)
        np.testing.assert_allclose(iw, want_iwae, rtol=1e-13)
    assert np.all(iw >= elbo)                                          # Jensen on the same samples


def optimal_ffg_encoder(params, cfg, x):
    """A linear encoder (enc_layers=0) giving the optimal FFG of the linear-Gaussian model."""
    m, P = lingauss.posterior(params, cfg, x)
    W, b = params["dec.fc0.W"], params["dec.fc0.b"]
    A = np.linalg.solve(P, W / cfg.obs_std ** 2).T                     # mu = (x - b) A: (D, Z)
    cfg = cfg.replace(enc_layers=0)
    params = dict(params)
    params["enc.fc0.W"] = np.hstack([A, np.zeros_like(A)])
    params["enc.fc0.b"] = np.concatenate([-b @ A, -np.log(np.diag(P))])
    for k in [k for k in params if k.startswith("enc.fc") and k[6] != "0"]:
        del params[k]
    return params, cfg


def test_bounds_of_the_optimal_ffg_on_the_linear_gaussian_model():
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=6)
    params, cfg = optimal_ffg_encoder(params, cfg, x)
    exact = lingauss.log_px(params, cfg, x)
    _, _, elbo_star = lingauss.optimal_ffg(params, cfg, x)
    elbo, iw = iwae.bounds(params, cfg, x, np.arange(6), 2000, chunk=500)
    assert np.all(np.abs(elbo - elbo_star) < 0.05)
    assert np.all(iw > elbo_star) and np.all(np.abs(iw - exact) < 0.05) and iw.mean() < exact.mean() + 0.01


def test_iwae_5000_is_below_exact_within_its_expected_bias():
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=40)
    params, cfg = optimal_ffg_encoder(params, cfg, x)
    exact = lingauss.log_px(params, cfg, x)
    k = 5000
    h, _ = model.encode(params, cfg, x)
    eps = np.random.default_rng(99).standard_normal((40, 20000, 2))
    logw, _ = objectives.log_weights(params, cfg, get_family(cfg), x, h, eps)
    w = np.exp(logw - exact[:, None])                                  # E w = 1
    bias = (w.var(1) / (2 * k)).mean()                                 # delta method: E[log mean w] ~ -var/2k
    se = np.sqrt((w.var(1) / k).mean() / 40)                           # of the mean over datapoints
    _, iw = iwae.bounds(params, cfg, x, np.arange(40), k, seed=1, chunk=2000)
    gap = (exact - iw).mean()
    assert -3 * se < gap < bias + 3 * se, (gap, bias, se)


def test_iwae_gap_shrinks_with_k():
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=40)
    params, cfg = optimal_ffg_encoder(params, cfg, x)
    params["enc.fc0.b"] = params["enc.fc0.b"] + np.array([0.5, 0.5, 0, 0])   # a worse q
    exact = lingauss.log_px(params, cfg, x)
    gaps = [(exact - iwae.bounds(params, cfg, x, np.arange(40), k, seed=2)[1]).mean() for k in (1, 50, 5000)]
    elbo_gap = (exact - iwae.bounds(params, cfg, x, np.arange(40), 5000, seed=2)[0]).mean()
    assert gaps[0] > gaps[1] > gaps[2] > -0.03 and elbo_gap > gaps[1], (gaps, elbo_gap)


def test_cli_iwae_on_embedded_mnist(tiny_ckpt, tmp_path):
    out = str(tmp_path / "r.h5")
    code, text = run_cli(["iwae", tiny_ckpt, "--k", "9", "--n", "4", "--chunk", "4", "--out", out])
    assert code == 0, text
    arrays, attrs = io.load_results(out, "iwae")
    assert arrays["elbo"].shape == (4,) and np.all(arrays["iwae"] >= arrays["elbo"])
    np.testing.assert_array_equal(arrays["index"], np.arange(4))
    assert attrs["k"] == 9 and attrs["n"] == 4 and attrs["split"] == "test" and attrs["seed"] == 0
    code, text = run_cli(["iwae", tiny_ckpt, "--k", "7", "--n", "4", "--out", out])
    assert code != 0 and "other settings" in text and "k: 9 there, 7 now" in text and "Traceback" not in text


def test_stage_resumes_after_its_last_block_with_the_same_numbers(tmp_path):
    from minivae.model import model
    from minivae.model.config import Config
    cfg = Config(latent=3, enc_hidden=16, dec_hidden=16, enc_layers=1, dec_layers=1)
    params = model.init_params(cfg, np.random.default_rng(0))
    x = (np.random.default_rng(1).random((10, 784)) < 0.3).astype(np.float32)
    whole = iwae.stage(params, cfg, x, tmp_path / "a.h5", k=12, chunk=24, block=4, progress=False)
    with pytest.raises(KeyboardInterrupt):                          # interrupted after 4 rows
        iwae.stage(params, cfg, x, tmp_path / "b.h5", k=12, chunk=24, block=4, progress=False,
                   runner=interrupt_after(1))
    assert io.load_results(tmp_path / "b.h5", "iwae")[1]["n"] == 4
    calls = []
    real = iwae.bounds
    iwae.bounds = lambda *a, **kw: calls.append(len(a[2])) or real(*a, **kw)
    try:
        resumed = iwae.stage(params, cfg, x, tmp_path / "b.h5", k=12, chunk=24, block=4, progress=False)
        again = iwae.stage(params, cfg, x, tmp_path / "b.h5", k=12, chunk=24, block=4, progress=False)
    finally:
        iwae.bounds = real
    assert calls == [4, 2]                   # only rows 4..9 were computed, and nothing the 2nd time
    for w, r, a in zip(whole, resumed, again):
        np.testing.assert_array_equal(r, w)
        np.testing.assert_array_equal(a, w)


@pytest.mark.parametrize("command,extra,message", [
    ("iwae", ["--k", "0"], "Invalid value for '--k'"),
    ("iwae", ["--chunk", "0"], "Invalid value for '--chunk'"),
    ("iwae", ["--n", "10001"], "larger than"),
    ("iwae", ["--split", "nope"], "nope"),
    ("ais", ["--chains", "0"], "Invalid value for '--chains'"),
    ("ais", ["--n", "20000"], "larger than"),
    ("ais", ["--target-accept", "1.2"], "--target-accept"),
    ("ais", ["--block", "0"], "Invalid value for '--block'"),
])
def test_cli_bad_options_are_one_line(tiny_ckpt, tmp_path, command, extra, message):
    """iwae and ais: a bad option is one line, no traceback, and no results file."""
    code, text = run_cli([command, tiny_ckpt, "--n", "2", "--out", str(tmp_path / "r.h5")] + extra)
    assert code != 0 and message in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1
    assert not (tmp_path / "r.h5").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("q", ["ffg", "flow"])
def test_bounds_on_cupy_arrays_match_the_cpu(q):
    cp = pytest.importorskip("cupy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        pytest.skip(f"no CUDA device: {e}")
    cfg, params, x = tiny_model(q)
    index = np.arange(5)
    want = iwae.bounds(params, cfg, x, index, 23, 4, chunk=7)
    got = iwae.bounds({k: cp.asarray(v) for k, v in params.items()}, cfg, cp.asarray(x), index, 23, 4, chunk=7)
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray)                                # host arrays out
        np.testing.assert_allclose(g, w, rtol=1e-10)


def test_decoder_chunk_defaults_by_architecture():
    from minivae.estimators import evaluate
    from minivae.model.config import Config
    from minivae.errors import MinivaeError
    assert evaluate.decoder_chunk(None, Config()) == 10000
    assert evaluate.decoder_chunk(None, Config(arch="conv")) == 1000    # 65k values per row
    assert evaluate.decoder_chunk(77, Config(arch="conv")) == 77
    with pytest.raises(MinivaeError, match="--chunk must be positive"):
        evaluate.decoder_chunk(0, Config())
