"""A new user's first hour (issue 17): the README's main job shows the methods working, and says which runs to
distrust; status finds runs anywhere under a folder; Ctrl-C ends with one line and exit code 130."""
import io
import json
import os
import re
import signal
from pathlib import Path

import pytest

from helpers import as_in_a_terminal, background_cli, cli, wait_until
from lottery_nb.tables import checks_markdown, run_checks
from lottery_nb.lottery import run_lottery
from lottery_nb.presets import get_preset
from lottery_nb.runs import RunContext

REPO = Path(__file__).resolve().parents[1]


def main_job_budget() -> str:
    readme = (REPO / "README.md").read_text()
    line = next(l for l in readme.splitlines() if l.startswith("pip install -e . && lottery_nb reproduce"))
    return re.search(r"--budget (\w+)", line).group(1)


@pytest.mark.parametrize("strategy", ["none", "lwcc", "vwcc"])
def test_main_job_trains_each_strategy_to_a_sensible_point(tmp_path, strategy):
    "At the README main job's budget, the dense digits networks reach the accuracy a converged LeNet has (> 95%)."
    run = run_lottery("digits_lenet", strategy, rounds=0, budget=main_job_budget(), out_dir=tmp_path, ctx=RunContext(progress=False))
    assert run.round_metrics()[0]["accuracy"] > 0.95


def write_run(folder: Path, name: str, strategy: str, rounds: list[tuple[int, list[float]]]):
    "A run folder with config.json and, per round, metrics.json (dead classes) and history.json (accuracy per epoch)."
    run = folder / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {"strategy": strategy, "seed": 0}}))
    for r, (dead, acc) in enumerate(rounds):
        (run / f"round_{r:02d}").mkdir()
        (run / f"round_{r:02d}" / "metrics.json").write_text(json.dumps(
            {"round": r, "remaining": 100 * 0.8 ** r, "accuracy": acc[-1], "ece": 0.01, "nll": 0.1, "brier": 0.05, "dead_classes": dead}))
        (run / f"round_{r:02d}" / "history.json").write_text(json.dumps([{"epoch": i + 1, "accuracy": a} for i, a in enumerate(acc)]))


def test_checks_flag_dead_classes_and_unconverged_rounds(tmp_path):
    flat = [0.90, 0.95, 0.96, 0.962, 0.962, 0.961, 0.962, 0.962]
    rising = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93]  # +8 points over its last quarter
    write_run(tmp_path / "a" / "b", "fine", "none", [(0, flat), (0, flat)])
    write_run(tmp_path / "a", "dead", "lwcc_si", [(1, flat), (2, flat)])
    write_run(tmp_path, "slow", "lwcc", [(0, flat), (0, rising)])
    write_run(tmp_path, "cut", "mda", [(0, flat), (0, flat)])
    (tmp_path / "cut" / "round_01" / "history.json").write_text('[{"epoch": 1, "accur')  # a history cut short: convergence unknown
    checks = run_checks(tmp_path).set_index("run")
    assert checks.loc["cut", "still improving in rounds"] == "1 (history.json unreadable: not checked)"
    checks = checks.drop("cut")
    assert set(checks.index) == {"dead", "slow"}
    assert checks.loc["dead", "dead classes in rounds"] == "0 (1), 1 (2)" and checks.loc["dead", "still improving in rounds"] == ""
    assert checks.loc["slow", "still improving in rounds"] == "1" and checks.loc["slow", "dead classes in rounds"] == ""
    md = checks_markdown(run_checks(tmp_path))
    assert md.startswith("## Checks") and "| dead |" in md and "| slow |" in md
    assert "No run has a dead class" in checks_markdown(run_checks(tmp_path / "a" / "b"))


def test_status_finds_runs_anywhere_under_the_folder(tmp_path):
    run_lottery("digits_lenet", "none", rounds=0, budget="smoke", out_dir=tmp_path / "repro" / "runs", ctx=RunContext(progress=False))
    run_lottery("digits_lenet", "lwcc", rounds=0, budget="smoke", out_dir=tmp_path / "repro" / "more" / "deeper", ctx=RunContext(progress=False))
    r = cli("status", str(tmp_path / "repro"))
    assert r.returncode == 0, r.stderr
    assert "runs/digits_lenet-none-seed0" in r.stdout and "more/deeper/digits_lenet-lwcc-seed0" in r.stdout
    assert "No runs" not in r.stdout and "no runs" not in r.stdout


def test_ctrl_c_says_where_the_run_resumes_and_exits_130(tmp_path):
    out = tmp_path / "runs"
    with background_cli("run", "--preset", "digits_lenet", "--strategy", "none", "--budget", "smoke", "--set", "epochs=100",
                        "--rounds", "0", "--out", str(out), "--quiet") as proc:
        wait_until(lambda: list(out.glob("*/round_00/checkpoint.pt")) and list(out.glob("*/progress.json")), proc, "an epoch checkpoint")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    m = re.match(r"lottery_nb: interrupted; the same command resumes round 0 after epoch (\d+) of 100 \(.*digits_lenet-none-seed0-", lines[0])
    assert m, lines[0]
    at = f"round_00, epoch {m.group(1)}/100"
    assert at in cli("status", str(out)).stdout  # status says the same, from progress.json
    next(out.glob("*/progress.json")).unlink()
    assert at in cli("status", str(out)).stdout  # and without it, from the epoch checkpoint
    # and it does: the same command finishes the round from that epoch on
    r = cli("run", "--preset", "digits_lenet", "--strategy", "none", "--budget", "smoke", "--set", "epochs=100", "--rounds", "0",
            "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    m = json.loads(next(out.glob("*/round_00/metrics.json")).read_text())
    assert m["resumed_at_epochs"] and m["resumed_at_epochs"][0] >= 1


def requirement_names(key: str) -> set[str]:
    from configparser import ConfigParser
    cfg = ConfigParser(delimiters=["="]); cfg.read(REPO / "settings.ini", encoding="utf-8")
    return {re.split(r"[<>=!\[ ;]", r)[0].lower().replace("_", "-") for r in cfg["DEFAULT"][key].split()}


def test_jupyter_extra_covers_every_import_of_the_chapters():
    "After `pip install -e .[jupyter]` every chapter's imports resolve: each third-party module comes with a listed distribution."
    import ast
    import importlib.metadata as md
    import sys
    allowed = requirement_names("requirements") | requirement_names("jupyter_requirements")
    assert {"jupyterlab", "ipywidgets", "nbdev"} <= allowed
    dists = md.packages_distributions()
    missing = set()
    for nb in sorted((REPO / "nbs").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] != "code": continue
            src = "\n".join(l for l in "".join(cell["source"]).splitlines() if not l.lstrip().startswith(("%", "!")))
            for node in ast.walk(ast.parse(src)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                for top in {m.split(".")[0] for m in mods}:
                    if top in sys.stdlib_module_names or top in ("__future__", "lottery_nb"): continue
                    if not any(d.lower().replace("_", "-") in allowed for d in dists.get(top, [])): missing.add(f"{top} ({nb.name})")
    assert not missing, f"imported by the chapters but not installed by the jupyter extra: {sorted(missing)}"


RUN = ("run", "--preset", "digits_lenet", "--strategy", "none", "--budget", "smoke", "--rounds", "1", "--quiet")


def test_truncated_files_are_named_rebuilt_and_nothing_intact_is_lost(tmp_path):
    from lottery_nb.tables import load_results
    from lottery_nb.store import RunDirError
    out = tmp_path / "runs"
    assert cli(*RUN, "--out", str(out)).returncode == 0
    other = run_lottery("digits_lenet", "lwcc", rounds=0, budget="smoke", out_dir=out, ctx=RunContext(progress=False))
    run = next(out.glob("digits_lenet-none-*"))
    good = json.loads((run / "round_01" / "metrics.json").read_text())
    csv = (run / "metrics.csv").read_text()
    final = (run / "round_01" / "final.pt").read_bytes()
    text = (run / "round_01" / "metrics.json").read_text()
    (run / "round_01" / "metrics.json").write_text(text[: len(text) // 2])  # cut mid-string, as a crash can
    # status: the broken run is marked, the others listed
    r = cli("status", str(out))
    assert r.returncode == 0 and "damaged" in r.stdout and "round_01/metrics.json" in r.stdout and other.path.name in r.stdout
    # the results table names the file and the fix, in one message
    with pytest.raises(RunDirError, match=r"round_01/metrics.json is unreadable .* Run the same `lottery_nb run`"):
        load_results(out)
    # the same command rebuilds it from the saved weights; the broken file is kept beside it
    r = cli(*RUN, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "round_01/metrics.json was unreadable; rebuilt it" in r.stderr and "Traceback" not in r.stderr
    rebuilt = json.loads((run / "round_01" / "metrics.json").read_text())
    for k in ("accuracy", "ece", "nll", "brier", "remaining", "dead_classes", "ts_ece"): assert rebuilt[k] == pytest.approx(good[k]), k
    for k in ("seconds", "device", "amp", "channels_last", "matmul"): assert rebuilt[k] == good[k], k  # from metrics.csv: the weights cannot tell
    assert rebuilt["rebuilt"] is True and (run / "round_01" / "metrics.json.unreadable").read_text() == text[: len(text) // 2]
    assert (run / "round_01" / "final.pt").read_bytes() == final
    # a truncated metrics.csv is noticed and rebuilt by the same command, even with every round finished
    (run / "metrics.csv").write_text(csv[: len(csv) // 3])
    r = cli(*RUN, "--out", str(out))
    assert r.returncode == 0 and "metrics.csv was incomplete or damaged; rebuilt it" in r.stderr
    lines = (run / "metrics.csv").read_text().splitlines()
    assert set(csv.splitlines()[0].split(",")) < set(lines[0].split(",")) and len(lines) == 3  # every column, and "rebuilt"
    assert lines[1].startswith(csv.splitlines()[1][:40])  # round 0 as it was


def test_help_starts_without_importing_pytorch():
    "`lottery_nb --help` (and `--version`, and no command) builds the top-level parser only: no PyTorch import, so it is instant."
    import subprocess, sys
    code = ("import sys, lottery_nb.cli as c\n"
            "for argv in (['--help'], ['--version'], []):\n"
            "    try: c.main(argv)\n"
            "    except SystemExit: pass\n"
            "print('torch imported:', 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "torch imported: False" in r.stdout, r.stdout + r.stderr
    assert "reproduce" in r.stdout and "status" in r.stdout  # every command still listed


def test_each_command_imports_only_what_it_uses(tmp_path):
    "`status` reads run folders without PyTorch; `run` on digits trains without torchvision, matplotlib or papermill (nothing of the figures or the reproduction)."
    import subprocess, sys
    run_lottery("digits_lenet", "none", rounds=0, budget="smoke", out_dir=tmp_path / "runs", ctx=RunContext(progress=False))
    code = ("import sys, lottery_nb.cli as c\n"
            f"assert c.main(['status', {str(tmp_path / 'runs')!r}]) == 0\n"
            "print('after status:', sorted(m for m in ('torch', 'torchvision', 'numpy', 'pandas') if m in sys.modules))\n"
            f"assert c.main(['run', '--preset', 'digits_lenet', '--budget', 'smoke', '--rounds', '0', '--out', {str(tmp_path / 'more')!r}, '--quiet']) == 0\n"
            "print('after run:', sorted(m for m in ('torchvision', 'matplotlib', 'papermill', 'seaborn') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "after status: []" in r.stdout and "after run: []" in r.stdout, r.stdout


def test_a_finished_run_says_so_instead_of_reprinting(tmp_path):
    first = cli(*RUN, "--out", str(tmp_path))
    assert first.returncode == 0 and "accuracy" in first.stdout
    again = cli(*RUN, "--out", str(tmp_path))
    assert again.returncode == 0 and again.stdout.startswith("already finished: ") and "accuracy" not in again.stdout


def test_grid_progress_counts_epochs_and_names_the_run_at_work(tmp_path):
    "The reproduction's bar counts epochs over the whole grid (finished rounds and the round under way) and shows the run at work."
    from lottery_nb.reproduce import _grid_progress
    run = run_lottery("digits_lenet", "none", rounds=1, budget="smoke", out_dir=tmp_path, ctx=RunContext(progress=False))  # 2 rounds of 3 epochs
    at = json.loads((run.path / "progress.json").read_text())
    assert at == {"round": 1, "epoch": 3, "epochs": 3}  # written by the run after each epoch
    todo = [(run.path, 2, 3), (tmp_path / "not-started", 2, 3)]
    assert _grid_progress(todo) == (6, "")  # two finished rounds; nothing under way
    (run.path / "progress.json").write_text(json.dumps({"round": 2, "epoch": 2, "epochs": 3}))  # round 2 at epoch 2
    done, latest = _grid_progress(todo)
    assert done == 8 and latest == f"{run.path.name}: round 2, epoch 2/3"


def test_ctrl_c_in_a_parallel_reproduction_is_one_line_and_leaves_nothing_running(tmp_path):
    "Ctrl-C reaches the whole foreground process group: the command, and its pool workers; one line, exit 130, then the same command finishes."
    import os, subprocess, time
    import psutil
    from helpers import exe
    out = tmp_path / "repro"
    args = [exe(), "reproduce", "--budget", "quick", "--datasets", "digits", "--strategies", "none,mda", "--seeds", "0",
            "--workers", "2", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,  # a terminal's group
                            preexec_fn=as_in_a_terminal)
    try:
        t0 = time.time()
        while not list(out.glob("runs/*/round_01/checkpoint.pt")):
            assert proc.poll() is None and time.time() - t0 < 300, proc.stderr.read() if proc.poll() is not None else "no checkpoint"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["lottery_nb: interrupted; nothing was lost: the same command resumes where the work stopped "
                                        "(finished rounds and epoch checkpoints are kept)"], err
    time.sleep(1)
    left = [p for p in psutil.process_iter(["pid"]) if _session(p) == proc.pid]
    assert not left, f"processes of the interrupted command still running: {left}"
    again = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(pd_read(out / "results.csv")) == 2 * 5  # two runs, rounds 0-4


def _session(p):
    try: return os.getsid(p.pid)
    except (ProcessLookupError, PermissionError): return None


def pd_read(path):
    import pandas as pd
    return pd.read_csv(path)


def test_readme_says_how_to_open_the_chapters_and_how_a_cpu_only_machine_installs():
    readme = (REPO / "README.md").read_text()
    assert 'pip install -e ".[jupyter]" && jupyter lab nbs/' in readme  # the extra exists: see the import test above
    cpu = next(l for l in readme.splitlines() if "download.pytorch.org/whl/cpu" in l)
    assert cpu.startswith("pip install") and "torch>=2.14" in cpu and "torchvision>=0.29" in cpu and cpu.endswith("pip install -e .")


@pytest.mark.parametrize("name,rebuilt", [("config.json", True), ("init.pt", True), ("round_00/mask.pt", True), ("round_01/mask.pt", True),
                                          ("round_02/checkpoint.pt", True), ("round_00/final.pt", False),
                                          ("round_01/history.json", False), ("progress.json", False)])
def test_every_damaged_file_is_named_and_rebuilt_where_it_can_be(tmp_path, capsys, name, rebuilt):
    "Each file of a run folder, cut in half: status names it and what to do; the same command (one round more) rebuilds it exactly where it can, else says it is still damaged; nothing intact changes."
    import torch
    from lottery_nb.cli import main
    ctx = RunContext(progress=False)
    run = run_lottery("digits_lenet", "none", rounds=1, budget="smoke", out_dir=tmp_path, ctx=ctx)
    f = run.path / name
    if name.endswith("checkpoint.pt"): f.parent.mkdir(); f.write_bytes(b"PK\x03\x04 an epoch checkpoint cut short")
    original = f.read_bytes()
    f.write_bytes(original[: len(original) // 2])
    intact = {p: p.read_bytes() for p in run.path.glob("round_0[01]/*") if p != f and p.suffix in (".pt", ".json")}
    capsys.readouterr()
    main(["status", str(tmp_path)])
    out = capsys.readouterr().out
    assert "damaged files:" in out and f"{run.path.name}/{name} is unreadable: " in out, out
    run_lottery("digits_lenet", "none", rounds=2, budget="smoke", out_dir=tmp_path, ctx=ctx)  # the same command, one round more
    err = capsys.readouterr().err
    assert run.done(2) and "Traceback" not in err
    assert {p: p.read_bytes() for p in intact} == intact  # nothing intact rewritten
    if rebuilt:
        assert f"{f} was unreadable" in err, err
        assert f.with_name(f.name + ".unreadable").read_bytes() == original[: len(original) // 2]  # the broken file is kept
        if name == "config.json": assert json.loads(f.read_text())["config"] == json.loads(original)["config"]
        elif name.endswith("checkpoint.pt"): assert not f.exists() and "resumed_at_epochs" not in run.round_metrics()[2]
        else:  # the same tensors as before the damage
            old, new = torch.load(io.BytesIO(original)), torch.load(f)
            assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
        assert name not in run.damaged()
    elif name == "progress.json":  # feeds progress bars only: the next epoch wrote it anew
        assert json.loads(f.read_text()) == {"round": 2, "epoch": 3, "epochs": 3} and not run.damaged()
    else:
        assert f"{f} is unreadable: " in err and name in run.damaged(), err


# --- issue 25: the second newcomer trial, on a busy machine ----------------------------------------------------

def test_a_run_trains_on_one_thread_and_records_its_matmul_route(tmp_path, monkeypatch):
    "Whatever the process's thread count, `run()` trains on one PyTorch thread (RunContext.threads) and restores the count after."
    import torch
    import lottery_nb.runs as runs
    from lottery_nb.training import onednn_matmul_is_exact
    seen, fit, before = [], runs.fit, torch.get_num_threads()
    monkeypatch.setattr(runs, "fit", lambda *a, **k: (seen.append((torch.get_num_threads(), torch.backends.mkldnn.matmul.fp32_precision)), fit(*a, **k))[1])
    torch.set_num_threads(2)
    try:
        run = run_lottery("digits_lenet", "none", rounds=1, budget="smoke", out_dir=tmp_path, ctx=RunContext(progress=False))
        assert torch.get_num_threads() == 2  # restored
    finally: torch.set_num_threads(before)
    route = "onednn" if onednn_matmul_is_exact() else "default"
    assert [t for t, _ in seen] == [1, 1] and all((p == "bf16") == (route == "onednn") for _, p in seen), seen
    assert [m["matmul"] for m in run.round_metrics()] == [route, route]
    assert RunContext().workers is None and RunContext().threads == 1  # the defaults: a process per core, a thread per run


def test_a_resumed_run_says_so_and_the_grid_bar_too(tmp_path):
    "An interrupted run, run again, says which round it resumes from which epoch; progress.json and the grid's bar say it too."
    from lottery_nb.reproduce import _grid_progress
    out = tmp_path / "runs"
    with background_cli("run", "--preset", "digits_lenet", "--strategy", "none", "--budget", "smoke", "--set", "epochs=100",
                        "--rounds", "0", "--out", str(out), "--quiet") as proc:
        wait_until(lambda: list(out.glob("*/round_00/checkpoint.pt")) and list(out.glob("*/progress.json")), proc, "an epoch checkpoint")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    with background_cli("run", "--preset", "digits_lenet", "--strategy", "none", "--budget", "smoke", "--set", "epochs=100",
                        "--rounds", "0", "--out", str(out), "--quiet") as proc:
        run = next(out.glob("digits_lenet-none-seed0-*"))
        wait_until(lambda: "resumed_at" in (run / "progress.json").read_text(), proc, "progress.json of the resumed round")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    m = re.search(r"lottery_nb: resuming round 0 from epoch (\d+) of 100 in (\S+)", err)
    assert m and Path(m.group(2)) == run, err
    at = json.loads((run / "progress.json").read_text())
    assert at["resumed_at"][0] == int(m.group(1))
    assert _grid_progress([(run, 0, 100)])[1].endswith(f"(resumed at epoch {m.group(1)})")


def test_status_says_what_each_run_trains(tmp_path):
    "A sparse run shows its method and sparsity (not the `none` strategy it trains with), a transfer run its tickets and target."
    from lottery_nb.sparse import run_sparse
    from lottery_nb.transfer import run_transfer
    ctx = RunContext(progress=False)
    source = run_lottery("digits_a_lenet", "lwcc", rounds=1, budget="smoke", out_dir=tmp_path / "runs", ctx=ctx)
    run_transfer(source.path, "digits_b", out_dir=tmp_path / "transfer", rounds=[1], ctx=ctx)
    run_sparse("digits_lenet", "cigl", 0.9, 0, out_dir=tmp_path / "sparse", budget="smoke", ctx=ctx)
    r = cli("status", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = {l.split()[0].split("/")[0]: l for l in r.stdout.splitlines()[1:] if l.strip()}
    assert "lottery" in rows["runs"] and " lwcc " in rows["runs"]
    assert "cigl, sparsity 0.9" in rows["sparse"] and " none " not in rows["sparse"], rows["sparse"]
    assert "lwcc tickets, loss ce" in rows["transfer"] and "digits_b" in rows["transfer"].split(), rows["transfer"]


def test_smoke_and_rounds_0_say_what_their_numbers_mean(tmp_path):
    r = cli("run", "--preset", "digits_lenet", "--budget", "smoke", "--rounds", "0", "--out", str(tmp_path / "a"), "--quiet")
    assert r.returncode == 0 and "checks that everything runs, not the method" in r.stdout and "nothing was pruned" in r.stdout, r.stdout
    r = cli("sparse", "--preset", "digits_lenet", "--method", "rigl", "--sparsity", "0.9", "--budget", "smoke", "--out", str(tmp_path / "b"), "--quiet")
    assert r.returncode == 0 and "not the method" in r.stdout and "nothing was pruned" not in r.stdout, r.stdout
    r = cli("run", "--preset", "digits_lenet", "--budget", "quick", "--rounds", "1", "--set", "epochs=1", "--out", str(tmp_path / "c"), "--quiet")
    assert r.returncode == 0 and "note:" not in r.stdout, r.stdout


def test_readme_use_from_python_shows_what_the_code_returns():
    "The README's Python example, run: the dictionary it shows has the keys `evaluate` returns, and values close to them."
    import ast
    section = (REPO / "README.md").read_text().split("## Use from Python")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    shown = ast.literal_eval(textwrap_dedent(re.search(r"```\n\n((?: {4}.*\n)+)", section).group(1)))
    ns, code = {}, "\n".join(blocks)
    *body, last = code.strip().splitlines()
    exec("\n".join(body), ns)
    got = eval(last, ns)
    assert list(got) == list(shown)
    assert got == pytest.approx(shown, abs=0.05)


def textwrap_dedent(s: str) -> str:
    import textwrap
    return textwrap.dedent(s)


def test_readme_and_settings_say_what_the_software_does_not_how_it_was_built():
    text = ((REPO / "README.md").read_text() + (REPO / "settings.ini").read_text()).lower()
    for phrase in ("issue by issue", "being built", "build machine", "stray", "this sandbox"):
        assert phrase not in text, phrase


def test_the_experiment_notebooks_list_every_budget():
    from lottery_nb.presets import BUDGET_NAMES
    for nb in ("lottery_grid", "sparse_grid", "transfer_grid"):
        params = json.loads((REPO / "nbs" / "experiments" / f"{nb}.ipynb").read_text())["cells"][2]
        line = next(l for l in "".join(params["source"]).splitlines() if l.startswith("budget:"))
        assert all(f"'{b}'" in line for b in BUDGET_NAMES), (nb, line)


def test_gitignore_covers_every_default_output_folder():
    "What each command writes by default (--out) is ignored by git, so a run in the checkout never shows as a change."
    import subprocess
    from lottery_nb.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    outs = {a.default for p in sub.choices.values() for a in p._actions if a.dest == "out" and a.default}
    assert {"runs", "transfer", "sparse", "repro", "demo", "bench.json"} <= outs | {"bench.json"}, outs
    for o in outs:
        probe = f"{o}/x.json" if "." not in o else o
        assert subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO).returncode == 0, f"{o} is not in .gitignore"


def test_reliability_diagrams_compare_side_by_side():
    "The confidence histograms of every panel share one scale, and the legend is drawn clear of the bars."
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from lottery_nb.metrics import reliability_diagram
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (2000,), generator=g)
    sharp = torch.nn.functional.one_hot(labels, 10).float() * 8 + torch.randn(2000, 10, generator=g)
    fig, axs = plt.subplots(1, 2, figsize=(9, 4.8))
    for ax, logits in zip(axs, (sharp, sharp / 8)): reliability_diagram(torch.softmax(logits, -1), labels, ax=ax)
    fig.canvas.draw()
    hists = [a for a in fig.axes if a.get_ylabel() == "share"]
    assert len(hists) == 2 and hists[0].get_ylim() == hists[1].get_ylim() == (0, 1)
    r = fig.canvas.get_renderer()
    for ax in axs:
        legend = next(a.get_legend() for a in fig.axes if a.get_legend() is not None and a.get_shared_x_axes().joined(a, ax))
        box = legend.get_window_extent(r)
        bars = [p.get_window_extent(r) for a in fig.axes if a.get_shared_x_axes().joined(a, ax) for p in a.patches]
        assert bars and not any(box.overlaps(b) for b in bars)
    plt.close(fig)


def test_the_benchmark_times_a_command_beside_a_busy_core_and_cleans_up(tmp_path):
    "`time_job` (the main-job part of `lottery_nb bench`) times a real command, stops its busy process, and reports a failing command."
    import psutil
    from lottery_nb.benchmark import time_job
    from lottery_nb.errors import LotteryError
    t = time_job(("demo", "--epochs", "1", "--strategies", "none"), busy_cores=1)
    assert t > 0 and not psutil.Process().children(recursive=True)
    with pytest.raises(LotteryError, match="failed"): time_job(("run", "--preset", "no_such_preset"))
