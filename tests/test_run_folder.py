"""Issue 27, item 1: a run folder is claimed under its lock, recovered when it holds only leftovers, cleaned of them, and a run
without its config.json is still found and rebuilt."""
import json
import subprocess
from pathlib import Path

from helpers import cli, exe
from lottery_nb.lottery import lottery_config, run_lottery
from lottery_nb.runs import RunContext
from lottery_nb.store import run_status

CTX = RunContext(progress=False)
RUN = ("run", "--preset", "digits_lenet", "--budget", "smoke", "--rounds", "1", "--quiet")


def name() -> str: return lottery_config("digits_lenet", "none", 0, "smoke").run_name


def test_a_folder_holding_only_a_temporary_file_is_claimed(tmp_path):
    "A SIGKILL before config.json's rename leaves only `.config.json.tmp-PID`: the run starts there instead of being refused for good."
    run = tmp_path / name(); run.mkdir()
    (run / ".config.json.tmp-4242").write_text('{"key": ')
    r = cli(*RUN, "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (run / "config.json").exists() and not list(run.rglob(".*.tmp-*"))


def test_simultaneous_starts_of_one_run_get_the_right_message(tmp_path):
    "Four starts of the same run at once: one trains, the others say the folder is being worked on; none calls it foreign."
    procs = [subprocess.Popen([exe(), *RUN, "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    errs = [e for _, e in outs]
    assert not any("has no config.json" in e for e in errs), errs
    assert all(p.returncode == 0 or "is being worked on by" in e for p, e in zip(procs, errs)), errs
    assert cli(*RUN, "--out", str(tmp_path)).stdout.startswith("already finished")


def test_leftovers_are_cleaned_and_a_finished_rounds_checkpoint_is_not_in_progress(tmp_path):
    d = run_lottery("digits_lenet", "none", 1, 0, tmp_path, "smoke", ctx=CTX)
    (d.round_dir(1) / "checkpoint.pt").write_bytes((d.round_dir(1) / "final.pt").read_bytes())  # killed before its removal
    (d.round_dir(0) / ".final.pt.tmp-77").write_text("half")
    (row,) = run_status(tmp_path)
    assert row["in progress"] == "" and row["rounds done"] == 2, row
    d2 = run_lottery("digits_lenet", "none", 2, 0, tmp_path, "smoke", ctx=CTX)  # one more round: the run is worked on again
    assert not list(d2.path.rglob(".*.tmp-*")) and not (d2.round_dir(1) / "checkpoint.pt").exists()


def test_a_run_without_its_config_is_listed_and_rebuilt(tmp_path):
    d = run_lottery("digits_lenet", "none", 1, 0, tmp_path, "smoke", ctx=CTX)
    (d.path / "config.json").unlink()
    r = cli("status", str(tmp_path))
    assert d.path.name in r.stdout and "config.json" in r.stdout, r.stdout
    r = cli(*RUN, "--out", str(tmp_path))
    assert r.returncode == 0 and "config.json was missing; rebuilt it" in r.stderr, r.stderr
    assert json.loads((d.path / "config.json").read_text())["key"] == d.path.name.rsplit("-", 1)[1]
