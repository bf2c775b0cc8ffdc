"""The console script as a user runs it: a subprocess, its output, its files and its exit code."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_the_commands():
    r = cli("--help")
    assert r.returncode == 0 and "demo" in r.stdout


def test_demo_on_digits(tmp_path):
    r = cli("demo", "--epochs", "5", "--out", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "d" / "report.json").read_text())
    assert rec["dataset"] == "digits" and list(rec["test"]) == ["none"] and rec["test"]["none"]["accuracy"] > 0.9
    assert {"accuracy", "ece", "mce", "nll", "brier"} <= set(rec["test"]["none"])
    assert f"{rec['test']['none']['ece']:.4f}" in r.stdout
    assert (tmp_path / "d" / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_data_is_one_line_and_exit_2(tmp_path):
    r = cli("demo", "--dataset", "cifar10", "--data-root", str(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lottery_nb: error:") and "cifar10" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("args,needle", [(["demo", "--dataset", "imagenet"], "invalid choice"),
                                         (["demo", "--epochs", "0"], "positive"),
                                         (["demo", "--lr", "-1"], "positive"),
                                         (["demo", "--device", "tpu"], "device"),
                                         (["demo", "--strategies", "lwcc,focal"], "focal")])
def test_bad_input_exits_2_with_a_message(args, needle, tmp_path):
    r = cli(*args, "--out", str(tmp_path / "o")) if args[0] == "demo" else cli(*args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    line = next(l.strip() for l in readme.splitlines() if l.strip().startswith("pip install") and "pytest" in l)
    assert line in ci


def test_readme_is_rendered_from_index_notebook():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "make_readme.py"), "--check"])
    assert r.returncode == 0, "README.md is out of date: run python tools/make_readme.py"


def test_demo_with_all_strategies(tmp_path):
    r = cli("demo", "--epochs", "2", "--strategies", "all", "--out", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "d" / "report.json").read_text())
    from lottery_nb.calibration import STRATEGIES
    assert list(rec["test"]) == list(STRATEGIES)
    assert "VWCC(T=5)" == rec["test"]["vwcc"]["strategy"]
    for name in rec["test"]: assert name in r.stdout
