import numpy as np
import pytest

from minivae.testing import lingauss
from minivae.estimators import localopt
from minivae.model import model, objectives
from minivae.errors import MinivaeError
from minivae.model.posteriors import get_family


def test_encoder_init_starts_q_star_at_the_encoders_q():
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=5)
    family = get_family(cfg)
    h0 = localopt.encoder_init(params, cfg, "ffg", x)
    np.testing.assert_array_equal(h0, model.encode(params, cfg, x)[0])
    fit = localopt.fit_local(params, cfg, family, x, np.random.default_rng(0), max_steps=100, samples=4,
                             lr=0.0, check_every=100, patience=1, h0=h0)
    np.testing.assert_array_equal(fit["local"]["h"], h0)


def test_encoder_init_reaches_the_optimum_and_never_ends_below_the_encoder():
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=4)
    family = get_family(cfg)
    h0 = localopt.encoder_init(params, cfg, "ffg", x)
    fit = localopt.fit_local(params, cfg, family, x, np.random.default_rng(1), max_steps=3000, samples=50,
                             lr=3e-2, check_every=100, patience=5, h0=h0)
    rng = np.random.default_rng(2)
    q_star, _ = localopt.local_elbo(params, cfg, family, x, fit["local"], rng, 20000)
    eps = rng.standard_normal((4, 20000, 2))
    amortized = objectives.log_weights(params, cfg, family, x, h0, eps)[0].mean(1)
    assert np.all(q_star > amortized)
    assert np.all(np.abs(q_star - lingauss.optimal_ffg(params, cfg, x)[2]) < 0.05)


def test_encoder_init_refuses_full_covariance():
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=2)
    with pytest.raises(MinivaeError, match="--init prior"):
        localopt.encoder_init(params, cfg, "fullcov", x)


def test_decoder_grads_can_be_skipped_without_changing_dh():
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=3)
    family = get_family(cfg)
    h = np.random.default_rng(0).standard_normal((3, 4))
    eps = np.random.default_rng(1).standard_normal((3, 5, 2))
    lw1, b1 = objectives.log_weights(params, cfg, family, x, h, eps)
    lw2, b2 = objectives.log_weights(params, cfg, family, x, h, eps, decoder_grads=False)
    dh1, g1 = b1(np.ones_like(lw1))
    dh2, g2 = b2(np.ones_like(lw2))
    np.testing.assert_array_equal(dh1, dh2)
    assert "dec.fc0.W" in g1 and not any(k.startswith("dec.") for k in g2)
