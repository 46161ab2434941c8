import numpy as np
import pytest

from minivae.model.densities import discretized_logistic
from minivae.testing.gradcheck import check_each


def pixels(rng, shape):
    x = rng.integers(0, 256, shape) / 256.0
    x.flat[:2] = [0.0, 255 / 256]                       # both edge bins always present
    return x


@pytest.mark.parametrize("log_s", [-6.0, -3.0, 0.0])
def test_discretized_logistic_backward(log_s):
    rng = np.random.default_rng(0)
    x = pixels(rng, (3, 7))
    mean = rng.random((3, 7))
    log_scale = log_s + 0.3 * rng.standard_normal((3, 7))
    _, dmean, dlog_scale = discretized_logistic(x, mean, log_scale)

    def f(p):
        return float(discretized_logistic(x, p["mean"], p["log_scale"])[0].sum())

    check_each(f, {"mean": mean, "log_scale": log_scale}, {"mean": dmean, "log_scale": dlog_scale},
               h=1e-6, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mean,log_s", [(0.5, -3.0), (0.0, -7.0), (1.0, 0.0), (0.3, -12.0), (-5.0, 2.0)])
def test_bins_of_a_pixel_sum_to_one(mean, log_s):
    x = np.arange(256)[:, None] / 256.0                  # every bin, one pixel each
    ll, _, _ = discretized_logistic(x, np.full_like(x, mean), np.full_like(x, log_s))
    assert np.all(np.isfinite(ll)) and ll.max() <= 1e-12
    assert abs(np.exp(ll).sum() - 1) < 1e-6


def test_stable_far_in_the_tails_and_in_float32():
    x = np.array([[0.0, 0.5, 255 / 256]], np.float32)
    for mean in (-50.0, 50.0):
        ll, dm, ds = discretized_logistic(x, np.full_like(x, mean), np.full_like(x, -4.0))
        assert np.isfinite(ll).all() and np.isfinite(dm).all() and np.isfinite(ds).all()
    # a bin far in the tail (a = 10): matches the direct difference, which float64 still resolves
    s = np.exp(-3.0)
    ll, _, _ = discretized_logistic(np.array([0.5]), np.array([0.0]), np.array([-3.0]))
    direct = np.log(1 / (1 + np.exp(-(0.5 + 1 / 256) / s)) - 1 / (1 + np.exp(-0.5 / s)))
    assert abs(ll[()] - direct) < 1e-6
