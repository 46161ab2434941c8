"""CIFAR-10 conv model (paper Table 9, no batch norm) speed: seconds per training step.

One step = objectives.bound_and_grads (encoder, FFG, decoder, discretized logistic, the hand-
written backward) + optim.adam_step on a batch of 100 synthetic 3x32x32 images, float32, latent 32.
Also one decoder log p(x|z) forward + backward to z only (what AIS, IWAE and q* pay per row).

    python benchmarks/conv_step.py [--threads 1] [--repeats 5] [--device cpu|gpu]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets sys.path and thread counts before numpy loads)

common.early_threads()

import numpy as np  # noqa: E402

from minivae import data  # noqa: E402
from minivae.model import model, objectives  # noqa: E402
from minivae.backend import device_xp  # noqa: E402
from minivae.model.config import Config  # noqa: E402
from minivae.model.optim import adam_init, adam_step  # noqa: E402
from minivae.model.posteriors import get_family  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    xp = device_xp(a.device)
    sync = None if xp is np else (lambda: xp.cuda.Device().synchronize())
    cfg = Config(dataset="cifar10", arch="conv", likelihood="logistic", data_dim=3072, latent=32)
    rng = np.random.default_rng(0)
    params = model.init_params(cfg, rng, xp)
    adam, family = adam_init(params), get_family(cfg)
    x = data.to_float(rng.integers(0, 256, (a.batch, 3072), dtype=np.uint8), "logistic", "float32", xp)
    eps = xp.asarray(rng.standard_normal((a.batch, 1, cfg.latent), dtype=np.float32))

    def step():
        _, grads = objectives.bound_and_grads(params, cfg, family, x, eps)
        adam_step(params, grads, adam, 1e-3)

    t = common.time_repeats(step, a.repeats, sync=sync)
    common.emit(workload="conv_train_step", batch=a.batch, device=a.device, **t.fields())
    z = xp.asarray(rng.standard_normal((a.batch, cfg.latent), dtype=np.float32))

    def decoder_dz():
        ll, back = model.log_lik(params, cfg, x, z, need_grads=False)
        back(xp.ones_like(ll))

    t = common.time_repeats(decoder_dz, a.repeats, sync=sync)
    common.emit(workload="conv_log_lik_dz", rows=a.batch, device=a.device, **t.fields())


if __name__ == "__main__":
    main()
