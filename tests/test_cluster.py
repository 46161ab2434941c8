"""Blocks as Dask tasks on a LocalCluster of 2 processes: the same numbers as in process, a killed
worker changes nothing, the driver stays the only writer."""
import os
import signal
import sys

import numpy as np
import pytest

from conftest import run_cli
from minivae.estimators import ais, localopt
from minivae import io, stages
from minivae.testing import lingauss

pytest.importorskip("dask.distributed")

LOCAL = dict(max_steps=200, samples=6, lr=0.02, check_every=20, patience=2, final_samples=60, seed=4)
AIS = ais.Settings(chains=4, steps=20, leapfrog=3)


@pytest.fixture(scope="module")
def client():
    from minivae import cluster
    with cluster.connect(workers=2, quiet=True) as c:
        yield c


def test_ais_and_localopt_on_two_workers_equal_the_serial_run(client, tmp_path):
    from minivae import cluster
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=9)                   # float64
    run = cluster.runner(client)
    a = ais.run(params, cfg, x, tmp_path / "s.h5", AIS, block=2, progress=False)
    b = ais.run(params, cfg, x, tmp_path / "d.h5", AIS, block=2, progress=False, runner=run)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    s = {**LOCAL, "block": 3}
    a = localopt.run(params, cfg, x, "ffg", tmp_path / "s.h5", s, progress=False)
    b = localopt.run(params, cfg, x, "ffg", tmp_path / "d.h5", s, progress=False, runner=run)
    for k in ("elbo", "elbo_se", "steps", "trace"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _kill_a_worker_once(path):
    """Runs on a worker: the first call (marked by a file) kills its own process mid-task."""
    if not os.path.exists(path):
        open(path, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_changes_nothing(client, tmp_path):
    from minivae import cluster
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=6)
    s = {**LOCAL, "block": 2}
    serial = localopt.run(params, cfg, x, "ffg", tmp_path / "s.h5", s, progress=False)
    marker = str(tmp_path / "killed")

    def dying(index, progress=None, **shared):
        if index[0] == 2:
            _kill_a_worker_once(marker)
        return localopt.compute(index, **shared)

    got = stages.run(tmp_path / "d.h5", "localopt_ffg", {"x": 1}, len(x), 2, dying,
                     dict(params=params, cfg=cfg, x=x, q="ffg", s={**localopt.DEFAULTS, **s}),
                     progress=False, runner=cluster.runner(client))
    assert os.path.exists(marker)                                             # a worker did die
    np.testing.assert_array_equal(got["elbo"], serial["elbo"])
    np.testing.assert_array_equal(got["index"], np.arange(6))


def test_a_cancelled_block_is_sent_again(client, tmp_path, monkeypatch):
    """The scheduler cancels a task whose scattered inputs died with a worker; the runner sends
    the block again (here the driver cancels block 2's first task while it runs)."""
    import threading
    import time
    from minivae import cluster
    cfg, params, x = lingauss.make(latent=2, data_dim=4, n=6)
    s = {**LOCAL, "block": 2}
    serial = localopt.run(params, cfg, x, "ffg", tmp_path / "s.h5", s, progress=False)
    submit, sent = client.submit, []

    def recording(fn, *args, **kw):
        future = submit(fn, *args, **kw)
        if int(args[1][0]) == 2:
            sent.append(future)
            if len(sent) == 1:
                threading.Timer(0.5, client.cancel, [[future]]).start()
        return future

    monkeypatch.setattr(client, "submit", recording)

    def slow(index, progress=None, **shared):
        if index[0] == 2:
            time.sleep(2)
        return localopt.compute(index, **shared)

    got = stages.run(tmp_path / "d.h5", "localopt_ffg", {"x": 1}, len(x), 2, slow,
                     dict(params=params, cfg=cfg, x=x, q="ffg", s={**localopt.DEFAULTS, **s}),
                     progress=False, runner=cluster.runner(client))
    assert len(sent) == 2 and sent[0].cancelled()                            # sent, cancelled, sent again
    np.testing.assert_array_equal(got["elbo"], serial["elbo"])


def test_the_blocks_are_sent_in_the_order_of_the_work(client, monkeypatch):
    """Dask ties the priorities of tasks submitted within its fifo_timeout (100 ms) and runs
    those in no set order: a 2-worker q* run did blocks 820-859 before 120-819. Each block's task
    must rank strictly after the one before it on the scheduler (a lower tuple runs first)."""
    from minivae import cluster
    submit, sent = client.submit, []
    monkeypatch.setattr(client, "submit", lambda *a, **kw: sent.append(submit(*a, **kw)) or sent[-1])
    work = [np.arange(2 * k, 2 * k + 2) for k in range(8)]
    done = list(cluster.runner(client)(_first_index, {"a": np.zeros(2)}, work, None))
    assert sorted(int(i[0]) for i, _ in done) == list(range(0, 16, 2))
    keys = [f.key for f in sent]
    prio = client.run_on_scheduler(lambda dask_scheduler: [dask_scheduler.tasks[k].priority
                                                           for k in keys])
    assert all(a < b for a, b in zip(prio, prio[1:])), prio


def _first_index(index, progress=None, **shared):
    return {"first": index[:1]}


def test_cli_gaps_with_workers_equals_the_serial_run(tiny_ckpt, tmp_path):
    args = ["gaps", tiny_ckpt, "--n", "4", "--k", "8", "--chains", "2", "--steps", "4", "--leapfrog", "1",
            "--block", "2", "--localopt-block", "2", "--qstar", "ffg", "--max-steps", "40",
            "--check-every", "10", "--patience", "1", "--samples", "3", "--final-samples", "10",
            "--dtype", "float64", "--format", "json"]
    code, serial = run_cli([*args, "--out", str(tmp_path / "s.h5")])
    assert code == 0, serial
    code, dist = run_cli([*args, "--out", str(tmp_path / "d.h5"), "--workers", "2"])
    assert code == 0, dist
    for stage in ("iwae", "ais", "localopt_ffg"):
        a, b = io.load_results(tmp_path / "s.h5", stage)[0], io.load_results(tmp_path / "d.h5", stage)[0]
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{stage}.{k}")


def test_the_in_process_path_imports_nothing_of_dask(tiny_ckpt, tmp_path):
    import subprocess
    script = ("import sys, cli\n"
              "try:\n"
              f"    cli.main(['iwae', {tiny_ckpt!r}, '--n', '2', '--k', '3', '--out', {str(tmp_path / 'r.h5')!r}])\n"
              "except SystemExit:\n"
              "    pass\n"
              "print('DASK' if any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules) else 'CLEAN')")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.stdout.strip().endswith("CLEAN"), res.stdout + res.stderr


def test_a_run_stopped_mid_block_prints_no_dask_warnings(tmp_path):
    """Closing the cluster under running tasks (a stopped run) is expected: Dask's warnings about
    the cancelled tasks and killed workers, which name its source files, stay out of the log."""
    import subprocess
    script = ("import time\n"
              "from minivae import cluster\n"
              "def slow():\n"
              "    import time; time.sleep(60)\n"
              "if __name__ == '__main__':\n"
              "    with cluster.connect(workers=2, quiet=True) as c:\n"
              "        futures = [c.submit(slow, pure=False) for _ in range(2)]\n"
              "        time.sleep(3)\n"
              "    print('CLOSED')\n")
    (tmp_path / "stop.py").write_text(script)
    res = subprocess.run([sys.executable, str(tmp_path / "stop.py")], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert res.stdout.strip() == "CLOSED", res.stdout + res.stderr
    assert "WARNING" not in res.stderr and "site-packages" not in res.stderr, res.stderr
