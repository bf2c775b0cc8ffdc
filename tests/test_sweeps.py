"""Sweeps on executors (in-process, local process pool, Dask), the run lock, a worker lost mid-run (process pool and Dask), and the
benchmark command."""
import json
import os
import signal
import threading
import time
from contextlib import contextmanager

import pytest
import torch

from helpers import background_cli, cli, wait_until
from lottery_nb.tables import load_results
from lottery_nb.grid import Grid, _call, run_grid, run_jobs, usable_cores
from lottery_nb.store import RunDir
from lottery_nb.runs import RunContext


GRID = Grid(["digits"], ["none", "mixup"], [0], "smoke", rounds=1)
SLOW_GRID = Grid(["digits"], ["none", "mixup"], [0], "smoke", rounds=1, overrides={"epochs": 60})  # long enough to kill a worker mid-round
CPU = RunContext(device="cpu", progress=False)


def strip(run: RunDir):
    return [{k: v for k, v in m.items() if k not in ("seconds", "resumed_at_epochs")} for m in run.round_metrics()]


@contextmanager
def threads(n: int):
    "PyTorch's CPU results depend on the thread count (the order of its sums): compare runs at equal counts."
    old = torch.get_num_threads(); torch.set_num_threads(n)
    try: yield
    finally: torch.set_num_threads(old)


def test_process_pool_gives_the_same_runs_as_in_process(tmp_path):
    with threads(max(1, usable_cores() // 2)):  # what each of two workers gets
        ref = run_grid(GRID, "digits", tmp_path / "ref", CPU)
    par = run_grid(GRID, "digits", tmp_path / "par", CPU.replace(workers=2))
    assert [r.path.name for r in par] == [r.path.name for r in ref]
    assert all(strip(a) == strip(b) for a, b in zip(par, ref))
    assert all(len(r.finished_rounds()) == 2 for r in par)


def test_worker_threads_share_the_cores():
    with threads(torch.get_num_threads()):  # _call sets this process's thread count, as it does in a worker
        assert _call(torch.get_num_threads, {}, threads=1) == 1
    with pytest.raises(ValueError, match="workers"): run_jobs([], RunContext(workers=0))


def test_lock_refuses_a_second_process_and_a_killed_run_resumes(tmp_path):
    args = ["run", "--preset", "digits_lenet", "--budget", "smoke", "--rounds", "0", "--set", "epochs=400", "--quiet",
            "--device", "cpu", "--out", str(tmp_path)]
    with background_cli(*args) as first:
        wait_until(lambda: list(tmp_path.glob("*/round_00/checkpoint.pt")), first, "the first checkpoint")
        run = RunDir(next(p for p in tmp_path.iterdir() if p.is_dir()))
        second = cli(*args)
        assert second.returncode == 2 and "being worked on by pid" in second.stderr and "Traceback" not in second.stderr
        assert str(first.pid) in second.stderr
        first.send_signal(signal.SIGKILL); first.wait(30)
    assert not run.done(0)
    killed_at = torch.load(run.round_dir(0) / "checkpoint.pt", weights_only=False)["epoch"]
    third = cli(*args)
    assert third.returncode == 0, third.stderr[-2000:]
    assert run.finished_rounds() == [0]  # resumed in place: the kill released the lock
    assert run.round_metrics()[0]["resumed_at_epochs"] == [killed_at]  # from the checkpoint, not from scratch


def kill_a_worker_mid_round(out, worker_pids, **grid) -> tuple[list[RunDir], RunDir, int]:
    """Run the grid (with `grid`'s executor) in a thread; once a run has an epoch checkpoint of epoch >= 5, SIGKILL
    the worker process that holds its lock (one of `worker_pids()`). Returns the grid's result, the run and its round."""
    result, error = [], []
    def go():
        try: result.extend(run_grid(SLOW_GRID, "digits", out, CPU.replace(**grid)))
        except Exception as e: error.append(e)
    th = threading.Thread(target=go); th.start()
    t0 = time.time()
    while True:  # a run in the middle of a round, with an epoch checkpoint on disk
        cks = [c for c in out.glob("*/round_0*/checkpoint.pt")]
        if cks and torch.load(cks[0], weights_only=False)["epoch"] >= 5: break
        assert th.is_alive() and time.time() - t0 < 180, error
        time.sleep(0.05)
    victim, victim_round = RunDir(cks[0].parents[1]), int(cks[0].parent.name[6:])
    pid = int((victim.path / ".lock").read_text().split()[1])
    assert pid != os.getpid() and pid in worker_pids()  # a worker process holds the run
    os.kill(pid, signal.SIGKILL)
    th.join(300)
    assert not th.is_alive() and not error, error
    return result, victim, victim_round


def assert_resumed_exactly(result: list[RunDir], ref: list[RunDir], victim: RunDir, victim_round: int):
    assert [r.path.name for r in result] == [r.path.name for r in ref]
    assert all(strip(a) == strip(b) for a, b in zip(result, ref))  # resumed exactly, nothing lost
    resumed = victim.round_metrics()[victim_round]["resumed_at_epochs"]
    assert len(resumed) == 1 and resumed[0] >= 5  # continued from the checkpoint, not from scratch
    df = load_results(victim.path.parent)
    assert len(df) == 4 and not df.duplicated(["run", "round"]).any()  # every (run, round) once in the results


def children() -> set[int]:
    "The pids of this process's child processes (psutil comes with Dask's distributed, a test requirement)."
    import psutil
    return {p.pid for p in psutil.Process().children()}


def test_process_pool_worker_lost_mid_run_resumes_in_a_new_pool(tmp_path):
    with threads(max(1, usable_cores() // 2)):  # what each of two workers gets
        ref = run_grid(SLOW_GRID, "digits", tmp_path / "ref", CPU)
    result, victim, victim_round = kill_a_worker_mid_round(tmp_path / "pool", children, workers=2)
    assert_resumed_exactly(result, ref, victim, victim_round)


def test_dask_worker_lost_mid_run_resumes_elsewhere(tmp_path):
    from distributed import Client, LocalCluster
    with threads(1):  # Dask's workers run with OMP_NUM_THREADS=1
        ref = run_grid(SLOW_GRID, "digits", tmp_path / "ref", CPU)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        worker_pids = lambda: set(client.run(os.getpid).values())
        result, victim, victim_round = kill_a_worker_mid_round(tmp_path / "dask", worker_pids, scheduler=cluster.scheduler_address)
    assert_resumed_exactly(result, ref, victim, victim_round)


def test_dask_scheduler_that_does_not_answer_fails_before_any_work(tmp_path):
    r = cli("reproduce", "--budget", "smoke", "--datasets", "digits", "--strategies", "none", "--scheduler", "tcp://127.0.0.1:9",
            "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 2 and "no Dask scheduler answers" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "o").exists()


def test_bench_command_prints_ratios_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    r = cli("bench", "--quick", "--only", "trainer", "evaluation", "pruning", "--device", "cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    names = [m["name"] for m in res["measures"]]
    assert names == ["trainer throughput vs bare loop", "trainer + round 0's mask throughput vs bare loop",
                     "trainer + 80%-pruned mask throughput vs bare loop",
                     "fused Adam vs PyTorch's default: epoch speed-up",
                     "evaluation (all metrics) vs one epoch", "global pruning round vs one step (ResNet-18)"]
    assert res["complete"] is True
    for m in res["measures"]:
        faster_is_higher = "throughput" in m["name"] or "speed-up" in m["name"]
        assert m["ratio"] == pytest.approx(m["reference"] / m["ours"] if faster_is_higher else m["ours"] / m["reference"])
        assert m["ours"] > 0 and m["reference"] > 0
    assert "trainer throughput vs bare loop" in r.stdout and ">= 0.95" in r.stdout
    bad = cli("bench", "--only", "speed", "--out", str(tmp_path / "x.json"))
    assert bad.returncode == 2 and "speed" in bad.stderr and not (tmp_path / "x.json").exists()
