import builtins
import os

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from minivae import io, sample
from minivae.model import model
from minivae.model.config import Config
from minivae.errors import MinivaeError


def tiny_checkpoint(path, **kw):
    cfg = Config(**{**dict(data_dim=16, latent=2, enc_hidden=5, dec_hidden=6, enc_layers=1,
                           dec_layers=1, dtype="float64"), **kw})
    params = model.init_params(cfg, np.random.default_rng(0))
    io.save_checkpoint(path, params, cfg)
    return cfg, params


def run_cli(args):
    result = CliRunner().invoke(cli.main, args)
    return result.exit_code, result.output


def test_cli_sample_writes_a_png_grid(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image as mpimg
    ck, out = str(tmp_path / "m.h5"), str(tmp_path / "sub" / "s.png")
    tiny_checkpoint(ck)
    code, text = run_cli(["sample", ck, "--n", "10", "--out", out, "--seed", "3"])
    assert code == 0, text
    assert os.path.exists(out) and not [f for f in os.listdir(tmp_path / "sub") if f.startswith(".tmp")]
    img = mpimg.imread(out)
    # 10 images of 4x4 -> 4 columns, 3 rows, 1-pixel gaps, zoom 3
    assert img.shape[:2] == (3 * (3 * 5 - 1), 3 * (4 * 5 - 1))


def test_samples_are_bernoulli_means_of_prior_draws(tmp_path):
    pytest.importorskip("matplotlib")
    ck = str(tmp_path / "m.h5")
    cfg, params = tiny_checkpoint(ck)
    means = sample.run(ck, n=5, out=str(tmp_path / "s.png"), seed=7, dtype="float64")
    z = np.random.default_rng(7).standard_normal((5, 2))
    logits, _ = model.decode(params, cfg, z)
    np.testing.assert_allclose(means, 1 / (1 + np.exp(-logits)), rtol=1e-12)
    again = sample.run(ck, n=5, out=str(tmp_path / "t.png"), seed=7, dtype="float64")
    np.testing.assert_array_equal(means, again)


def test_grid_layout():
    imgs = np.arange(3 * 4, dtype=float).reshape(3, 4) / 12
    g = sample.grid(imgs)                       # 3 images of 2x2 -> 2 columns, 2 rows
    assert g.shape == (5, 5)
    np.testing.assert_array_equal(g[:2, :2], imgs[0].reshape(2, 2))
    np.testing.assert_array_equal(g[3:, :2], imgs[2].reshape(2, 2))
    assert np.all(g[2] == 1) and np.all(g[3:, 3:] == 1)


@pytest.mark.parametrize("args,message", [
    (["--n", "0"], "Invalid value for '--n'"),
])
def test_cli_sample_bad_options(tmp_path, args, message):
    ck = str(tmp_path / "m.h5")
    tiny_checkpoint(ck)
    code, text = run_cli(["sample", ck, "--out", str(tmp_path / "s.png")] + args)
    assert code == 2 and message in text and "Traceback" not in text


def test_cli_sample_bad_checkpoints(tmp_path):
    code, text = run_cli(["sample", str(tmp_path / "missing.h5")])
    assert code == 2 and "does not exist" in text
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    code, text = run_cli(["sample", str(bad), "--out", str(tmp_path / "s.png")])
    assert code == 2 and "not a readable HDF5" in text
    odd = str(tmp_path / "odd.h5")
    tiny_checkpoint(odd, data_dim=10)
    code, text = run_cli(["sample", odd, "--out", str(tmp_path / "s.png")])
    assert code == 2 and "square images" in text and len(text.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "s.png")


def test_missing_matplotlib_is_a_one_line_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(MinivaeError, match=r"install the plot extra: pip install -e '\.\[plot\]'"):
        sample.write_png(str(tmp_path / "s.png"), np.zeros((2, 2)))
    assert os.listdir(tmp_path) == []


def test_sample_never_writes_over_a_file_that_is_not_a_png(tiny_ckpt, tmp_path):
    """Issue 11: `sample m.h5 --out m.h5` replaced the checkpoint with a PNG."""
    import shutil
    from conftest import run_cli
    ck = tmp_path / "m.h5"
    shutil.copy(tiny_ckpt, ck)
    before = ck.read_bytes()
    code, text = run_cli(["sample", str(ck), "--n", "4", "--out", str(ck)])
    assert code == 2 and "is not a PNG image" in text and len(text.strip().splitlines()) == 1, text
    assert ck.read_bytes() == before
    code, text = run_cli(["sample", str(ck), "--n", "4", "--out", str(tmp_path / "s.png")])
    assert code == 0, text
    code, text = run_cli(["sample", str(ck), "--n", "4", "--out", str(tmp_path / "s.png")])  # a PNG: replaced
    assert code == 0, text
