"""A new user's first hour (issue 17): the README's main job shows the methods working, and says which runs to
distrust; status finds runs anywhere under a folder; Ctrl-C ends with one line and exit code 130."""
import json
import re
import signal
from pathlib import Path

import pytest

from helpers import background_cli, cli, wait_until
from lottery_nb.figures import checks_markdown, run_checks
from lottery_nb.lottery import get_preset, run_lottery

REPO = Path(__file__).resolve().parents[1]


def main_job_budget() -> str:
    readme = (REPO / "README.md").read_text()
    line = next(l for l in readme.splitlines() if l.startswith("pip install -e . && lottery_nb reproduce"))
    return re.search(r"--budget (\w+)", line).group(1)


@pytest.mark.parametrize("strategy", ["none", "lwcc", "vwcc"])
def test_main_job_trains_each_strategy_to_a_sensible_point(tmp_path, strategy):
    "At the README main job's budget, the dense digits networks reach the accuracy a converged LeNet has (> 95%)."
    run = run_lottery("digits_lenet", strategy, rounds=0, budget=main_job_budget(), out_dir=tmp_path, progress=False)
    assert run.round_metrics()[0]["accuracy"] > 0.95


def write_run(folder: Path, name: str, strategy: str, rounds: list[tuple[int, list[float]]]):
    "A run folder with config.json and, per round, metrics.json (dead classes) and history.json (accuracy per epoch)."
    run = folder / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {"strategy": strategy, "seed": 0}}))
    for r, (dead, acc) in enumerate(rounds):
        (run / f"round_{r:02d}").mkdir()
        (run / f"round_{r:02d}" / "metrics.json").write_text(json.dumps({"round": r, "dead_classes": dead}))
        (run / f"round_{r:02d}" / "history.json").write_text(json.dumps([{"epoch": i + 1, "accuracy": a} for i, a in enumerate(acc)]))


def test_checks_flag_dead_classes_and_unconverged_rounds(tmp_path):
    flat = [0.90, 0.95, 0.96, 0.962, 0.962, 0.961, 0.962, 0.962]
    rising = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93]  # +8 points over its last quarter
    write_run(tmp_path / "a" / "b", "fine", "none", [(0, flat), (0, flat)])
    write_run(tmp_path / "a", "dead", "lwcc_si", [(1, flat), (2, flat)])
    write_run(tmp_path, "slow", "lwcc", [(0, flat), (0, rising)])
    checks = run_checks(tmp_path).set_index("run")
    assert set(checks.index) == {"dead", "slow"}
    assert checks.loc["dead", "dead classes in rounds"] == "0 (1), 1 (2)" and checks.loc["dead", "still improving in rounds"] == ""
    assert checks.loc["slow", "still improving in rounds"] == "1" and checks.loc["slow", "dead classes in rounds"] == ""
    md = checks_markdown(run_checks(tmp_path))
    assert md.startswith("## Checks") and "| dead |" in md and "| slow |" in md
    assert "No run has a dead class" in checks_markdown(run_checks(tmp_path / "a" / "b"))
