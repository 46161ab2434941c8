"""q*_FFG the way the authors' `local_ffg.py` (lxuechen/inference-suboptimality) fits it, to
explain why our converged L[q*_FFG] on the Flow model sits above the paper's (see
docs/table2-mnist-paper.md). Read from their code, re-implemented here on minivae's kernels:

- the Gaussian's mean and logvar have shape (B*k, Z): each of the k = 100 samples of a datapoint
  has its OWN Gaussian, from N(0, I), and each takes Adam steps (lr 1e-3) on a one-sample ELBO;
- the stopping rule is on the loss averaged over the whole batch (B = 100 datapoints x k):
  every 100 steps the mean loss of those 100 steps is compared with the best, and the batch
  stops after more than 10 checks in a row without improvement;
- L[q*] is then one sample from each of the k Gaussians, averaged.

minivae instead fits one Gaussian per datapoint with 100 samples a step and stops each datapoint
on its own. This script prints, as JSON, the authors'-style estimate beside ours (the
`localopt_ffg` group of the results file) over the same datapoints. Usage:

  MINIVAE_DATA=../shared/data python docs/paper-run/gray/authors_ffg.py \
      docs/paper-run/gray/models/flow.h5 docs/paper-run/gray/results/flow.h5 --n 20
"""
import argparse
import json
import time

import numpy as np

from minivae import io
from minivae.estimators.evaluate import load_data
from minivae.model import fastpath
from minivae.model.optim import batched_adam_step


def fit(params, x, k, max_steps, rng, check_every=100, sentinel_thres=10):
    n, Z = len(x), params["dec.fc0.W"].shape[0]
    xr = np.repeat(x, k, axis=0)                         # row i*k + j: datapoint i, Gaussian j
    h = np.zeros((n * k, 2 * Z), x.dtype)                # [mean, logvar] = 0: N(0, I)
    m, v = np.zeros_like(h), np.zeros_like(h)
    t, on = np.zeros(n * k, np.int64), np.ones(n * k, bool)
    step_fn = fastpath.QStarFFG(params, n * k, 1)
    best, sentinel, window, trace = -np.inf, 0, [], []
    for step in range(1, max_steps + 1):
        eps = rng.standard_normal((n * k, 1, Z), dtype=x.dtype)
        dh, logw = step_fn(params, xr, h, eps)
        batched_adam_step({"rows": h}, {"rows": dh}, dict(m={"rows": m}, v={"rows": v}, t=t), 1e-3, on)
        window.append(float(logw.mean()))
        if step % check_every == 0:
            avg = float(np.mean(window))
            trace.append(avg)
            if avg > best:
                best, sentinel = avg, 0
            else:
                sentinel += 1
            if sentinel > sentinel_thres:
                break
            window = []
    one = step_fn(params, xr, h, rng.standard_normal((n * k, 1, Z), dtype=x.dtype))[1]
    many = np.mean([step_fn(params, xr, h, rng.standard_normal((n * k, 1, Z), dtype=x.dtype))[1]
                    for _ in range(20)], axis=0)
    return dict(steps=step, trace=trace, one_sample=one.reshape(n, k).mean(1),
                twenty_samples=many.reshape(n, k).mean(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("results")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=50000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    ck = io.load_checkpoint(a.checkpoint)
    x = load_data(ck["config"], "train", a.first + a.n)[a.first:]
    t0 = time.time()
    r = fit(ck["params"], x, a.k, a.max_steps, np.random.default_rng(a.seed))
    ours = io.load_results(a.results, "localopt_ffg")[0]
    pos = {int(i): j for j, i in enumerate(ours["index"])}
    mine = np.array([ours["elbo"][pos[i]] for i in range(a.first, a.first + a.n)])
    print(json.dumps(dict(
        images=[a.first, a.first + a.n], k=a.k, steps=r["steps"], seconds=round(time.time() - t0, 1),
        authors_style_one_sample=round(float(r["one_sample"].mean()), 3),
        authors_style_twenty_samples=round(float(r["twenty_samples"].mean()), 3),
        minivae_converged=round(float(mine.mean()), 3),
        difference_per_image=round(float((mine - r["twenty_samples"]).mean()), 3),
        trace_every_1000_steps=[round(v, 2) for v in r["trace"][9::10]])))


if __name__ == "__main__":
    main()
