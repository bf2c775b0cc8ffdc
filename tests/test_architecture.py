"""The seams of issue 16: presets complete at import, one run skeleton with a declared round interface, one error type,
one context object, one grid, options generated from the fields that document them."""
import json
import subprocess
import sys

import pytest
import torch

from helpers import cli
from conftest import REPO
from lottery_nb.calibration import PAPER_STRATEGIES, STRATEGIES
from lottery_nb.data import LotteryError, parent_dataset
from lottery_nb.lottery import LotteryConfig, LotteryRun, run_lottery
from lottery_nb.presets import BUDGETS, PRESETS, get_preset
from lottery_nb.pruning import MaskedTraining
from lottery_nb.grid import Grid, run_grid
from lottery_nb.store import RunDir
from lottery_nb.runs import Run, RunContext


def test_presets_are_complete_at_import_whatever_else_is_imported():
    "What `get_preset` knows does not depend on import order: a fresh interpreter that imports only the presets sees them all."
    code = "import lottery_nb.presets as p; print(sorted(p.PRESETS)); print(sorted(p.BUDGETS['quick']))"
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    code_after = "import lottery_nb.sparse, lottery_nb.transfer, lottery_nb.reproduce; " + code
    after = subprocess.run([sys.executable, "-c", code_after], capture_output=True, text=True, check=True).stdout
    assert alone == after and "cifar10_resnet50" in alone and "cifar10a_resnet18" in alone


def test_run_and_sparse_offer_the_same_presets():
    run_help, sparse_help = cli("run", "--help").stdout, cli("sparse", "--help").stdout
    for name in PRESETS: assert name in run_help and name in sparse_help, name


def test_halves_share_their_parents_budgets_and_defaults():
    assert parent_dataset("cifar10a") == "cifar10" and parent_dataset("fashion_mnist_b") == "fashion_mnist"
    for half, parent in [("cifar10a_resnet18", "cifar10_resnet18"), ("mnist_a_lenet", "mnist_lenet")]:
        for budget in BUDGETS:
            a, b = get_preset(half, budget), get_preset(parent, budget)
            assert a.replace(name=b.name, dataset=b.dataset) == b, (half, budget)
    from lottery_nb.calibration import get_strategy
    assert get_strategy("mda", "mnist_a").weight == get_strategy("mda", "mnist").weight == 0.5


def test_amp_is_part_of_the_hash_only_when_asked_for():
    base = LotteryConfig(get_preset("digits_lenet", "quick"), "lwcc")
    assert base.key == "7fa3d98b4cc1"  # the folder of the committed quick run, as before the field existed
    amp = LotteryConfig(get_preset("digits_lenet", "quick", amp=True), "lwcc")
    assert amp.key != base.key and amp.to_dict()["preset"]["amp"] is True and "amp" not in base.to_dict()["preset"]
    assert LotteryConfig.from_dict(json.loads(json.dumps(amp.to_dict()))) == amp


class Recording(MaskedTraining):
    "MaskedTraining that records which hooks the round trainer called."
    calls: list = []
    def attach(self, optimizer, loader, epochs): Recording.calls.append("attach")
    def wrap_loss(self, loss_fn): Recording.calls.append("wrap_loss"); return loss_fn
    def after_epoch(self, epoch): Recording.calls.append(f"epoch {epoch}")
    def finish(self, loader): Recording.calls.append("finish")
    def remove(self): Recording.calls.append("remove")


def test_a_round_method_is_plugged_in_through_the_declared_interface(tmp_path):
    "A `Run` subclass that declares its round method gets every hook called, in order, and the mask kept."
    class RecordingRun(Run):
        def round_method(self, model, mask): return Recording(model, mask)
    Recording.calls = []
    cfg = LotteryConfig(get_preset("digits_lenet", "smoke"), "none")
    run = RecordingRun(cfg, tmp_path, RunContext(progress=False)).run()
    assert Recording.calls == ["attach", "wrap_loss", "epoch 0", "epoch 1", "epoch 2", "finish", "remove"]
    assert run.finished_rounds() == [0] and (run.round_dir(0) / "mask.pt").exists()
    same = LotteryRun(cfg, 0, tmp_path / "lottery", RunContext(progress=False)).run()  # the lottery's round 0 is the same dense round
    a, b = (torch.load(r.round_dir(0) / "final.pt") for r in (run, same))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_user_errors_are_lottery_errors_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from lottery_nb import cli as cli_module
    assert cli_module.main(["run", "--preset", "digits_lenet", "--set", "epochs=0"]) == 2  # a LotteryError: one line
    assert "epochs must be" in capsys.readouterr().err
    def bug(args): raise ValueError("an internal mistake")
    monkeypatch.setattr(cli_module, "cmd_status", bug)
    with pytest.raises(ValueError, match="internal mistake"): cli_module.main(["status", "."])  # not swallowed as a user error
    for bad in (lambda: get_preset("mnist_lenet", rounds=-1), lambda: RunContext(workers=0), lambda: Grid(["mnist"], ["focal"]),
                lambda: get_preset("mnist_lenet", milestones=5)):
        with pytest.raises(LotteryError): bad()


def test_context_options_and_field_help_come_from_the_dataclasses():
    from fastcore.docments import docments
    text = " ".join(cli("reproduce", "--help").stdout.split())
    for name, doc in docments(RunContext).items():
        if name not in ("return", "progress"): assert " ".join(doc.split()) in text, name
    run_help = " ".join(cli("run", "--help").stdout.split())
    for name, doc in docments(PRESETS["mnist_lenet"].__class__).items():
        if name not in ("return", "name"): assert f"{name} {' '.join(doc.split())}" in run_help, name
    assert "strategy.NAME" in run_help and "lwcc_si: T, form" in run_help


def test_grid_is_checked_once_and_serialisable():
    g = Grid(["digits", "digits_a"], "all", [0, 1], "smoke", sparsities=[0.9])
    assert Grid(**json.loads(json.dumps(g.to_dict()))) == g
    n = 2 * len(STRATEGIES)  # every strategy ('all'), two seeds
    assert len(g.lottery("digits")) == n and len(g.transfer("digits")) == 0 and len(g.transfer("digits_a")) == n
    assert len(g.sparse("digits")) == 4 and len(g.folders("out")) == n + n + n + 4 + 4
    assert Grid(["digits"]).strategies == PAPER_STRATEGIES and Grid(["digits"], ["paper", "controls"]).strategies == tuple(STRATEGIES)
    with pytest.raises(LotteryError, match="sparsity"): Grid(["digits"], ["none"], [0], sparsities=[1.0])


def test_lists_are_space_separated_and_the_default_budget_is_shared(tmp_path):
    from lottery_nb.cli import build_parser
    from lottery_nb.presets import DEFAULT_BUDGET
    p = build_parser()
    for argv in (["run", "--preset", "digits_lenet"], ["sparse", "--preset", "digits_lenet", "--method", "rigl", "--sparsity", "0.9"], ["reproduce"]):
        assert p.parse_args(argv).budget == DEFAULT_BUDGET
    a = p.parse_args(["reproduce", "--strategies", "none", "lwcc", "--seeds", "0", "1", "--datasets", "digits", "digits_a"])
    assert a.strategies == ["none", "lwcc"] and a.seeds == [0, 1] and a.datasets == ["digits", "digits_a"]
    import re
    assert re.search(r"--seed\b", cli("reproduce", "--help").stdout) is None and "--seeds" in cli("reproduce", "--help").stdout  # no duplicate


def test_every_package_the_library_imports_is_a_declared_requirement():
    "A fresh `pip install -e .` must bring every package `lottery_nb` imports (the dev extra would hide a missing one in CI)."
    import ast, configparser, importlib.metadata as md, re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    ini = configparser.ConfigParser(); ini.read(root / "settings.ini")
    declared = lambda key: {re.split(r"[<>=!\[ ]", r)[0].lower().replace("_", "-") for r in ini["DEFAULT"][key].split()}
    allowed = declared("requirements") | declared("dask_requirements")  # distributed: imported only behind --scheduler
    dists = md.packages_distributions()
    missing = set()
    for f in (root / "lottery_nb").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "lottery_nb": continue
                for dist in dists.get(top, [top]):
                    if dist.lower().replace("_", "-") not in allowed: missing.add(f"{f.name}: {top} ({dist})")
    assert not missing, f"imported but not in settings.ini's requirements: {sorted(missing)}"


def test_every_committed_run_keeps_its_folder_name():
    "The run folders behind the results page's tables, rebuilt from their configurations: the hashing rule renames none of them."
    import pandas as pd
    from lottery_nb.presets import preset_for
    from lottery_nb.sparse import sparse_config
    from lottery_nb.transfer import transfer_config_from
    results = REPO / "nbs" / "results"
    budgets = {"quick_mnist_fashion.csv": "quick", "standard_mnist_fashion.csv": "standard", "quick_transfer_mnist.csv": "quick",
               "standard_transfer_mnist.csv": "standard", "paper_mnist_fashion.csv": "paper"}
    n = 0
    for f, budget in budgets.items():
        d = pd.read_csv(results / f)
        for run in d[d.kind == "lottery"][["dataset", "strategy", "seed", "run"]].drop_duplicates().itertuples():
            cfg = LotteryConfig(preset_for(run.dataset, budget), run.strategy, {}, int(run.seed))
            assert cfg.run_name == run.run, (f, run.run); n += 1
        for run in d[d.kind == "transfer"][["dataset", "source_strategy", "seed", "run"]].drop_duplicates().itertuples():
            src = LotteryConfig(preset_for("mnist_a", budget), run.source_strategy, {}, int(run.seed))
            assert transfer_config_from(src, run.dataset).run_name == run.run, (f, run.run); n += 1
    sparse = {"quick_sparse_mnist.csv": {}, "erk_bernoulli_fashion_lr1e-3.csv": dict(epochs=60, lr=0.001),
              "cigl_vs_rigl_fashion_lr1e-3.csv": dict(epochs=60, lr=0.001, layer_counts="exact")}
    for f, over in sparse.items():
        d = pd.read_csv(results / f)
        for run in d[["preset", "method", "seed", "run"]].drop_duplicates().itertuples():
            sp = float(run.run.split("-sparsity")[1].split("-")[0])  # older tables have no target_sparsity column
            assert sparse_config(run.preset, run.method, sp, int(run.seed), "quick", **over).run_name == run.run, (f, run.run); n += 1
    paper = {"fashion_mnist_lenet-none-seed0-af43b365ee43", "fashion_mnist_lenet-none-seed1-c7c47db04341"}  # the paper-budget grid's
    assert {LotteryConfig(preset_for("fashion_mnist", "paper"), "none", {}, s).run_name for s in (0, 1)} == paper
    assert n > 80


def test_a_dataset_and_its_setup_are_one_declaration(tmp_path):
    "A dataset declared with its preset: its grid, budgets, label and figure follow, and a grid on it trains; a missing budget is an error at the declaration."
    import dataclasses
    from lottery_nb.data import DATASETS, get_spec
    from lottery_nb import presets
    from lottery_nb.figures import _figures, figure_label
    spec = dataclasses.replace(get_spec("digits"), name="digits2", label="digits, again", figure=None)
    try:
        presets.declare(presets.Preset("digits2_lenet", spec, "lenet_300_100", "adam", 1e-3, 40, 60, **presets.LENET_PRUNING),
                        standard={}, quick=dict(epochs=5, rounds=1), smoke=dict(epochs=2, rounds=1))
        assert presets.DATASET_PRESETS["digits2"] == "digits2_lenet" and presets.preset_for("digits2", "quick").epochs == 5
        figures, titles = _figures()
        assert figures["calibration_digits2"][0] == ("digits2",) and "digits2" in figures["fig05_accuracy"][0]
        assert figure_label("digits2") == "digits, again, LeNet-300-100"
        runs = run_grid(Grid(["digits2"], ["none"], [0], "smoke"), "digits2", tmp_path, RunContext(progress=False))
        assert [len(r.finished_rounds()) for r in runs] == [2]
        with pytest.raises(TypeError, match="smoke"):  # a budget left out: refused at the declaration, never a silent default
            presets.declare(presets.Preset("digits3_lenet", "digits2", "lenet_300_100", "adam", 1e-3, 40, 60), standard={}, quick={}, grid=False)
    finally:
        for d in (DATASETS, presets.DECLARED, presets.PRESETS, presets.DATASET_PRESETS, *presets.BUDGETS.values()):
            for k in ("digits2", "digits2_lenet"): d.pop(k, None)


def test_rooms_are_small_modules_at_most_300_lines_exported_cells_at_most_40():
    "Issue 23's measure of a readable library: no module over 300 lines, no exported cell over 40 lines of code."
    long_modules = {p.name: n for p in (REPO / "lottery_nb").glob("*.py") if p.name != "_modidx.py"
                    and (n := len(p.read_text().splitlines())) > 300}
    assert not long_modules, long_modules
    long_cells = []
    for nb in sorted((REPO / "nbs").glob("*.ipynb")):
        for c in json.loads(nb.read_text())["cells"]:
            src = "".join(c["source"]).splitlines()
            if c["cell_type"] == "code" and src and src[0].startswith("#| export") and len(src) - 1 > 40:
                long_cells.append(f"{nb.name} {c.get('id')}: {len(src) - 1} lines")
    assert not long_cells, long_cells
