"""Scale-out: throughput of the stage engine in process (--threads 1 and 2) and on a Dask
LocalCluster of 1 and 2 single-threaded workers, on the paper's MNIST model (random weights).

Workloads (each a real stage through stages.run, blocks saved to a fresh results file):
  ais    40 datapoints x 100 chains (blocks of 10: 1000 chain rows), --steps transitions of
         10 leapfrog steps
  qstar  q*_FFG, 200 datapoints x 100 samples (blocks of 100), a fixed --qsteps Adam steps
  iwae   24 datapoints x k=5000 (blocks of 6)
One JSON line per workload: datapoints/s for each way of running, and the ratios. Each way runs
in its own process (thread counts are fixed when numpy loads), after a warm-up that pays JIT
compilation (in every worker, via Client.run). Cluster start-up is not timed.

    python benchmarks/scaling.py [--workloads ais,qstar,iwae] [--steps 50] [--qsteps 50]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WAYS = ("threads1", "threads2", "workers1", "workers2")


def workload(name, args):
    """(n datapoints, block, fn, shared, settings) of one workload, and a tiny warm-up twin."""
    import numpy as np
    from minivae.estimators import ais, iwae, localopt
    from minivae import data
    cfg = common.paper_config()
    params = common.init_weights()
    x = data.to_float(data.load("mnist", "train")[:200], "bernoulli", np.float32)
    if name == "ais":
        s = ais.Settings(chains=100, steps=args.steps, leapfrog=10)
        tiny = ais.Settings(chains=2, steps=3, leapfrog=2)
        return (40, 10, ais.compute, dict(params=params, cfg=cfg, x=x, s=s, seed=0),
                dict(params=params, cfg=cfg, x=x, s=tiny, seed=0))
    if name == "qstar":
        s = dict(localopt.DEFAULTS, max_steps=args.qsteps, check_every=args.qsteps, patience=10 ** 6,
                 samples=100, final_samples=100)
        tiny = dict(s, max_steps=2, check_every=2, samples=2, final_samples=2)
        return (200, 100, localopt.compute, dict(params=params, cfg=cfg, x=x, q="ffg", s=s),
                dict(params=params, cfg=cfg, x=x, q="ffg", s=tiny))
    if name == "iwae":
        return (24, 6, iwae.compute, dict(params=params, cfg=cfg, x=x, k=5000, seed=0, chunk=10000),
                dict(params=params, cfg=cfg, x=x, k=3, seed=0, chunk=10000))
    raise SystemExit(f"unknown workload {name}")


def _warm(fn, shared):
    import numpy as np
    fn(np.arange(2), **shared)


def child(args):
    """One way of running one workload: prints {"seconds": ..., "n": ...}."""
    import numpy as np
    from minivae import stages
    n, block, fn, shared, tiny = workload(args.workload, args)
    with stages.executor(args.workers or None, quiet=True) as runner:
        if runner is None:
            _warm(fn, tiny)
        else:
            runner.client.run(_warm, fn, tiny)                    # JIT compiles in every worker
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            stages.run(Path(d) / "r.h5", args.workload, {}, n, block, fn, shared, progress=False, runner=runner)
            print(json.dumps(dict(seconds=time.perf_counter() - t0, n=n)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="ais,qstar,iwae")
    ap.add_argument("--steps", type=int, default=50, help="AIS transitions")
    ap.add_argument("--qsteps", type=int, default=50, help="q* Adam steps per datapoint")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--workload")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    if args.child:
        return child(args)
    for name in args.workloads.split(","):
        rates = {}
        for way in WAYS:
            extra = (["--threads", way[-1]] if way.startswith("threads") else ["--workers", way[-1]])
            cmd = [sys.executable, __file__, "--child", "--workload", name, "--steps", str(args.steps),
                   "--qsteps", str(args.qsteps), *extra]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                common.skipped(name, f"{way} failed: {res.stderr.strip().splitlines()[-1:]}")
                break
            r = json.loads(res.stdout.strip().splitlines()[-1])
            rates[way] = r["n"] / r["seconds"]
        else:
            common.emit(workload=name, unit="datapoints/s", **{k: round(v, 4) for k, v in rates.items()},
                        workers2_over_workers1=round(rates["workers2"] / rates["workers1"], 3),
                        workers2_over_threads1=round(rates["workers2"] / rates["threads1"], 3),
                        workers2_over_threads2=round(rates["workers2"] / rates["threads2"], 3))


if __name__ == "__main__":
    if "--child" in sys.argv:
        common.early_threads()
    main()
