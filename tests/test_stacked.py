"""Stacked grids (issue 26): equal to separate runs, resumable after a kill, refused where they cannot apply."""
import json
import subprocess
from pathlib import Path

import psutil
import pytest
import torch

from helpers import cli, exe, wait_until
from lottery_nb.errors import LotteryError
from lottery_nb.lottery import lottery_config, round_model, run_lottery
from lottery_nb.runs import RunContext
from lottery_nb.stacked import ops_per_step
from lottery_nb.stacked_runs import run_stacked
from lottery_nb.tables import load_results

CTX = RunContext(progress=False, matmul="default")


def weights_gap(a, b, r: int) -> float:
    wa, wb = round_model(a, r).state_dict(), round_model(b, r).state_dict()
    return max(((wa[k] - wb[k]).norm() / wb[k].norm()).item() for k in wb)


def test_deterministic_strategies_stacked_equal_separate_runs(tmp_path):
    """Every deterministic strategy, two seeds, one stack: each run's masks and metrics are the separate run's, and its weights
    too, to float32's rounding in the dense round; in a pruned round a hidden unit at ReLU's kink can amplify that rounding
    (the stacked chapter shows one), so there the weights are held within 1e-2."""
    specs = [(s, seed) for s in ("none", "lwcc", "lwcc_add", "nba", "mda") for seed in (0, 1)]
    cfgs = [lottery_config("digits_lenet", s, seed, "smoke") for s, seed in specs]
    stacked = run_stacked(cfgs, rounds=1, out_dir=tmp_path / "stacked", ctx=CTX)
    for (s, seed), a in zip(specs, stacked):
        b = run_lottery("digits_lenet", s, 1, seed, tmp_path / "single", "smoke", ctx=CTX)
        for r in (0, 1):
            ma, mb = (torch.load(d.round_dir(r) / "mask.pt") for d in (a, b))
            assert all(torch.equal(ma[k], mb[k]) for k in mb), (s, seed, r)
            assert weights_gap(a, b, r) < (1e-5 if r == 0 else 1e-2), (s, seed, r, weights_gap(a, b, r))
            ja, jb = (json.loads((d.round_dir(r) / "metrics.json").read_text()) for d in (a, b))
            assert ja["accuracy"] == pytest.approx(jb["accuracy"], abs=1e-3) and ja["ece"] == pytest.approx(jb["ece"], abs=1e-3)


def test_stochastic_strategies_stacked_agree_with_separate_runs_within_seed_noise(tmp_path):
    "VWCC (dropout passes) and Mixup (mixing draws): the stack's random draws differ, its accuracy over seeds does not beyond the seeds' spread."
    seeds = (0, 1, 2, 3)
    for s in ("vwcc", "mixup"):
        cfgs = [lottery_config("digits_lenet", s, seed, "smoke") for seed in seeds]
        st = load_results(*[d.path for d in run_stacked(cfgs, rounds=0, out_dir=tmp_path / "stacked", ctx=CTX)])
        se = load_results(*[run_lottery("digits_lenet", s, 0, seed, tmp_path / "single", "smoke", ctx=CTX).path for seed in seeds])
        a, b = st.accuracy.to_numpy(), se.accuracy.to_numpy()
        spread = max(a.std(ddof=1), b.std(ddof=1), 0.01)
        assert abs(a.mean() - b.mean()) < 3 * spread, (s, a, b)
        assert not all(abs(x - y) < 1e-9 for x, y in zip(a, b)), "the stack's draws should be its own"


def test_ops_per_step_do_not_grow_with_the_stack():
    counts = {m: ops_per_step(m, "lwcc") for m in (2, 8, 32)}  # (one run takes a shorter path of its own)
    assert max(counts.values()) - min(counts.values()) <= 2, counts


def test_a_killed_stacked_grid_resumes_from_its_last_epoch_to_the_same_result(tmp_path):
    "SIGKILL in the middle of a stacked round; run again: it says it resumes, and ends bit for bit where an uninterrupted stack ends."
    args = ("reproduce", "--budget", "smoke", "--datasets", "digits", "--strategies", "none", "lwcc", "--seeds", "0", "1",
            "--rounds", "1", "--stack", "--workers", "1", "--matmul", "default", "--quiet")
    out = tmp_path / "killed"
    proc = subprocess.Popen([exe(), *args, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try: wait_until(lambda: len(list(out.glob("runs/*/round_01/checkpoint.pt"))) == 4, proc, "round 1's epoch checkpoints")
    finally:  # the command and its notebook kernel (a session of its own) at once, as when a machine goes down
        for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]: p.kill()
        proc.communicate(timeout=60)
    again = cli(*args, "--out", str(out))
    assert again.returncode == 0, again.stderr
    executed = (out / "notebooks" / "lottery_grid_digits.ipynb").read_text()  # the runs' stderr, in the executed grid notebook
    assert "resuming round 1 from epoch" in executed and "stack of 4 runs" in executed
    clean = cli(*args, "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    for run in sorted((out / "runs").iterdir()):
        other = tmp_path / "clean" / "runs" / run.name
        for r in (0, 1):
            a, b = torch.load(run / f"round_{r:02d}" / "final.pt"), torch.load(other / f"round_{r:02d}" / "final.pt")
            assert all(torch.equal(a[k], b[k]) for k in b), (run.name, r)
        assert not list(run.glob("round_*/checkpoint.pt*"))


def test_a_stacked_run_is_never_a_separate_one_and_stacks_apply_to_lenets_only(tmp_path):
    cfg = lottery_config("digits_lenet", "none", 0, "smoke")
    (d,) = run_stacked([cfg], rounds=0, out_dir=tmp_path, ctx=CTX)
    assert d.path.name != cfg.run_name  # stacked=True is part of the configuration
    with pytest.raises(LotteryError, match="stacked run"):
        run_lottery("digits_lenet", "none", 0, 0, tmp_path, "smoke", ctx=CTX, stacked=True)
    r = cli("reproduce", "--budget", "smoke", "--datasets", "cifar10", "--stack", "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "LeNet-300-100 runs only" in r.stderr and "Traceback" not in r.stderr, r.stderr
