"""Issue 27, item 2: every file of a run folder is checked for what it holds (types, shapes, the run's architecture) before it
is used or anything is rebuilt from it; `status` survives any file, one run at a time; a repair that fails moves nothing."""
import json
import shutil

import pytest
import torch

from helpers import cli
from lottery_nb.lottery import run_lottery
from lottery_nb.runs import RunContext
from lottery_nb.store import RunDir, RunDirError, run_status

CTX = RunContext(progress=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    "A finished digits run of two rounds (dense and one pruned), trained once for the module; each test works on a copy."
    return run_lottery("digits_lenet", "none", 1, 0, tmp_path_factory.mktemp("orig"), "smoke", ctx=CTX)


@pytest.fixture
def run(finished, tmp_path) -> RunDir:
    shutil.copytree(finished.path, tmp_path / finished.path.name)
    return RunDir(tmp_path / finished.path.name)


def again(run: RunDir) -> RunDir:
    return run_lottery("digits_lenet", "none", 1, 0, run.path.parent, "smoke", ctx=CTX)


def foreign_state(state: dict) -> dict:
    "Weights of another architecture under the same names: every first dimension one larger."
    return {k: torch.zeros(v.shape[0] + 1, *v.shape[1:], dtype=v.dtype) for k, v in state.items()}


def metrics(run: RunDir, r: int) -> dict: return json.loads((run.round_dir(r) / "metrics.json").read_text())


def test_init_of_another_architecture_is_drawn_again(run, capsys):
    good = torch.load(run.path / "init.pt")
    torch.save(foreign_state(good), run.path / "init.pt")
    again(run)
    assert "does not fit this run's model" in capsys.readouterr().err
    new = torch.load(run.path / "init.pt")
    assert all(torch.equal(new[k], v) for k, v in good.items()) and (run.path / "init.pt.unreadable").exists()


def test_mask_of_another_architecture_is_made_again_equal_to_the_original(run, capsys):
    f = run.round_dir(1) / "mask.pt"
    good = torch.load(f)
    torch.save({k: torch.ones(v.shape[0] + 1, *v.shape[1:], dtype=torch.bool) for k, v in good.items()}, f)
    again(run)
    assert "round_01/mask.pt does not fit this run's model" in capsys.readouterr().err
    new = torch.load(f)
    assert new.keys() == good.keys() and all(torch.equal(new[k], v) for k, v in good.items())


def test_a_float_tensor_is_no_mask(run, capsys):
    f = run.round_dir(1) / "mask.pt"
    good = torch.load(f)
    torch.save({k: v.float() for k, v in good.items()}, f)
    again(run)
    assert "holds no boolean mask" in capsys.readouterr().err and torch.load(f)[next(iter(good))].dtype == torch.bool


def test_final_weights_of_another_architecture_are_reported(run, capsys):
    f = run.round_dir(1) / "final.pt"
    torch.save(foreign_state(torch.load(f)), f)
    again(run)
    err = capsys.readouterr().err
    assert f"{f} does not fit this run's model" in err and "to train the round again, delete its folder" in err


@pytest.mark.parametrize("bad", [{"accuracy": None}, {"accuracy": "high"}, {"accuracy": float("nan")}, {"ece": float("inf")}, "drop"])
def test_metrics_without_a_finite_accuracy_are_rebuilt_with_the_right_numbers(run, bad, capsys):
    good = metrics(run, 1)
    broken = {k: v for k, v in good.items() if k != "accuracy"} if bad == "drop" else {**good, **bad}
    (run.round_dir(1) / "metrics.json").write_text(json.dumps(broken))  # NaN and Infinity as Python's json writes them
    assert not run.done(1) and "round_01/metrics.json" in run.damaged()
    again(run)
    assert "round_01/metrics.json" in capsys.readouterr().err
    new = metrics(run, 1)
    assert new["rebuilt"] and all(new[k] == pytest.approx(good[k], abs=1e-6) for k in ("accuracy", "ece", "nll", "brier", "remaining"))
    csv = (run.path / "metrics.csv").read_text()
    assert "high" not in csv and "nan" not in csv.lower() and f"{good['accuracy']}" in csv


def test_a_foreign_mask_with_damaged_metrics_rebuilds_the_right_remaining(run):
    good = metrics(run, 1)
    f = run.round_dir(1) / "mask.pt"
    torch.save({k: torch.ones(v.shape[0] + 1, *v.shape[1:], dtype=torch.bool) for k, v in torch.load(f).items()}, f)
    (run.round_dir(1) / "metrics.json").write_text('{"round": 1, "accur')
    again(run)
    assert metrics(run, 1)["remaining"] == pytest.approx(good["remaining"]) and metrics(run, 1)["accuracy"] == pytest.approx(good["accuracy"])


def test_a_repair_that_fails_moves_nothing_and_the_damage_is_still_named(run):
    "round_01's metrics.json damaged and its final.pt foreign: the metrics cannot be rebuilt, and the damaged file stays where it was."
    (run.round_dir(1) / "metrics.json").write_text("[]")
    f = run.round_dir(1) / "final.pt"
    torch.save(foreign_state(torch.load(f)), f)
    with pytest.raises(RunDirError, match="final.pt does not fit this run's model"):
        again(run)
    assert (run.round_dir(1) / "metrics.json").read_text() == "[]" and not (run.round_dir(1) / "metrics.json.unreadable").exists()
    assert "round_01/metrics.json" in run.damaged()


def test_a_mask_whose_remake_fails_stays_in_place(run):
    "round_01's mask.pt cut short, round_00's final.pt foreign: making the mask again fails, and the cut file is neither moved nor forgotten."
    m = run.round_dir(1) / "mask.pt"
    m.write_bytes(m.read_bytes()[:100])
    f = run.round_dir(0) / "final.pt"
    torch.save(foreign_state(torch.load(f)), f)
    (run.round_dir(1) / "metrics.json").write_text("{}")  # sends the run through the repairs
    with pytest.raises(RunDirError, match="round_00/final.pt does not fit"):
        again(run)
    assert m.exists() and not (run.round_dir(1) / "mask.pt.unreadable").exists() and "round_01/mask.pt" in run.damaged()


def test_a_history_that_is_no_record_is_damage(run, capsys):
    (run.round_dir(1) / "history.json").write_text('{"a": 1}')
    assert run.history(1) == [] and "round_01/history.json" in run.damaged()
    again(run)
    assert "round_01/history.json holds" in capsys.readouterr().err


@pytest.mark.parametrize("content", ['{"round": 1, "remaining": "most", "accuracy": 0.9, "ece": 0.1, "nll": 1, "brier": 0.1}', "[]", "null", '"x"'])
def test_status_lists_every_run_whatever_one_metrics_file_holds(run, finished, tmp_path, content):
    shutil.copytree(finished.path, tmp_path / "other" / finished.path.name)
    (run.round_dir(1) / "metrics.json").write_text(content)
    (tmp_path / "other" / finished.path.name / "progress.json").write_text("[]")
    rows = run_status(tmp_path)
    assert len(rows) == 2, rows
    mine, other = (next(r for r in rows if r["run"] == n) for n in (run.path.name, f"other/{run.path.name}"))
    assert mine["damaged"] == "round_01/metrics.json" and mine["rounds done"] == 1 and mine["% remaining"] == 100
    assert other["damaged"] == "progress.json" and other["rounds done"] == 2  # a progress.json that says nothing: harmless, but named
    r = cli("status", str(tmp_path))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"{run.path.name}/round_01/metrics.json " in r.stdout and "the same run command rebuilds it" in r.stdout


def test_status_survives_a_configuration_that_is_no_configuration(run, finished, tmp_path):
    shutil.copytree(finished.path, tmp_path / "other" / finished.path.name)
    (run.path / "config.json").write_text('{"config": [1, 2]}')
    rows = run_status(tmp_path)
    assert len(rows) == 2 and any("config.json" in r.get("damaged", "") for r in rows), rows
