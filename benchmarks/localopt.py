"""Local q* fitting speed: batched ELBO-gradient Adam steps per second (minivae.estimators.localopt).

100 datapoints x 100 samples on the paper's decoder 50-200-200-784 (ELU, Bernoulli, random
weights), float32, FFG and Flow q* (Flow: every net per datapoint). What is timed is
`localopt.fit_local` itself, as the library runs it (noise draws, the ELBO gradient without
decoder weight gradients, batched Adam, the ELBO window) for --steps steps, after a warm-up
run. One JSON line per family and impl: `auto` as shipped (FFG: fastpath.QStarFFG and the
Adam kernel; Flow: the decoder by fastpath.Decoder, the nets' fused ELU, the Adam kernel),
`ref` the NumPy reference (fit_local(impl="ref"); the flow's ELU stays fused). CPU seconds
count every thread of this process: on a busy machine trust `cpu_steps_per_second` with
--threads 1, or the wall numbers on an idle one.

    python benchmarks/localopt.py [--steps 20] [--repeats 3] [--threads N] [--device cpu|gpu]
                                  [--families ffg,flow] [--impls auto,ref]
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets sys.path and thread counts before numpy loads)

common.early_threads()

import numpy as np  # noqa: E402

from minivae.estimators import localopt  # noqa: E402
from minivae.backend import device_xp, to_numpy  # noqa: E402
from minivae.model.posteriors import get_family  # noqa: E402

N, S = 100, 100


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="Adam steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; median reported")
    ap.add_argument("--families", default="ffg,flow")
    ap.add_argument("--threads", type=int, default=None, help="BLAS/OpenMP threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--impls", default="auto,ref",
                    help="fit_local's impl: auto (as shipped: the fused paths) and/or ref (NumPy)")
    a = ap.parse_args()
    xp = device_xp(a.device)
    cfg = common.paper_config()
    params = {k: xp.asarray(v) for k, v in common.init_weights().items()}
    x = xp.asarray(common.mnist_train()[:N].astype(np.float32))
    sync = (lambda: xp.cuda.Device().synchronize()) if xp is not np else None
    for q in a.families.split(","):
        family = get_family(cfg.replace(q=q))
        for impl in a.impls.split(","):

            def run():
                fit = localopt.fit_local(params, cfg, family, x, np.random.default_rng(0),
                                         max_steps=a.steps, samples=S, check_every=a.steps,
                                         patience=10 ** 9, impl=impl)
                to_numpy(fit["local"]["h"][:1])

            t = common.time_repeats(run, a.repeats, warmup=1, sync=sync)
            common.emit(workload=f"localopt_{q}", impl=impl, datapoints=N, samples=S, steps=a.steps,
                        dtype="float32", device=a.device, threads=a.threads, **t.fields(),
                        steps_per_second=a.steps / statistics.median(t.wall),
                        cpu_steps_per_second=a.steps / statistics.median(t.cpu))


if __name__ == "__main__":
    main()
