"""Lottery runs: the run directory, resume after a real kill, refusal of mismatched or corrupt directories,
the paper presets, and the `run`/`status` command line."""
import json
import signal

import pandas as pd
import pytest
import torch

from helpers import background_cli, cli, wait_until
from lottery_nb.lottery import LotteryConfig, run_lottery
from lottery_nb.presets import PRESETS, get_preset
from lottery_nb.store import RunDir, RunDirError, run_status
from lottery_nb.runs import RunContext

SMOKE = dict(budget="smoke", ctx=RunContext(progress=False))


def test_paper_presets_match_methods():
    m = get_preset("mnist_lenet")
    assert (m.optimizer, m.lr, m.epochs, m.batch_size, m.pruning_scope, m.pruning_fraction) == ("adam", 1e-4, 60, 60, "local", 0.2)
    assert dict(m.layer_fractions) == {"fc.weight": 0.1} and get_preset("fashion_mnist_lenet").dataset == "fashion_mnist"
    c = get_preset("cifar10_resnet18")
    assert (c.model, c.optimizer, c.lr, c.momentum, c.weight_decay, c.epochs, c.milestones, c.gamma, c.batch_size, c.pruning_scope) == \
        ("resnet18", "sgd", 0.01, 0.9, 1e-4, 130, (80, 120), 0.1, 128, "global")
    s = get_preset("svhn_vgg19")
    assert (s.model, s.lr, s.epochs, s.batch_size, len(s.milestones), s.pruning_scope) == ("vgg19", 0.05, 100, 250, 2, "global")
    for name in PRESETS:
        for budget in ("paper", "quick", "smoke"): get_preset(name, budget)  # all valid
    assert get_preset("mnist_lenet", "quick").epochs < 60 and get_preset("mnist_lenet", "smoke").max_train_samples


def test_run_directory_contents(tmp_path):
    run = run_lottery("digits_lenet", "none", rounds=2, out_dir=tmp_path, **SMOKE)
    cfg = json.loads((run.path / "config.json").read_text())
    assert cfg["key"] in run.path.name and cfg["config"]["preset"]["name"] == "digits_lenet" and "torch" in cfg["versions"]
    assert (run.path / "init.pt").exists() and (run.path / "metrics.csv").exists()
    for r in range(3):
        d = run.round_dir(r)
        assert {p.name for p in d.iterdir()} == {"mask.pt", "final.pt", "history.json", "metrics.json"}
    m = run.round_metrics()
    assert [x["round"] for x in m] == [0, 1, 2]
    assert m[0]["remaining"] == 100.0 and m[1]["remaining"] < 81 and m[2]["remaining"] < 65
    for x in m: assert {"accuracy", "ece", "mce", "nll", "brier", "sparsity"} <= set(x)
    # the diagnostics of issue 15, recomputed from the round's saved weights on the test set
    from lottery_nb.data import BatchLoader
    from lottery_nb.runs import build_model, run_data
    from lottery_nb.calibration import get_strategy
    from lottery_nb.training import predict
    from torchmetrics.functional.classification import multiclass_calibration_error
    cfg_obj = LotteryConfig.from_dict(cfg["config"])
    model = build_model(cfg_obj, get_strategy("none"))
    model.load_state_dict(torch.load(run.round_dir(2) / "final.pt"))
    from lottery_nb.training import compute_settings
    with compute_settings(None, m[2]["matmul"]):  # the float32 products on the route the run was evaluated on
        probs, labels = predict(model, BatchLoader(run_data(cfg_obj.preset)[1], 500))
    conf = probs.max(1).values.double()
    correct = probs.argmax(1) == labels
    assert m[2]["confidence"] == pytest.approx(conf.mean().item(), abs=1e-9)
    assert m[2]["gap"] == pytest.approx(conf.mean().item() - correct.double().mean().item(), abs=1e-9)
    assert m[2]["ece_10"] == pytest.approx(multiclass_calibration_error(probs, labels, 10, n_bins=10).item(), abs=1e-6)
    per_class = [correct[labels == k].double().mean().item() for k in range(10)]
    assert m[2]["class_accuracy"] == pytest.approx(per_class) and m[2]["dead_classes"] == sum(a == 0 for a in per_class)
    assert 0.01 <= m[2]["temperature"] <= 100 and m[2]["ts_nll"] > 0 and "ts_ece" in m[2]
    csv = pd.read_csv(run.path / "metrics.csv")
    assert {"confidence", "gap", "dead_classes", "ece_10", "ts_ece", "temperature"} <= set(csv.columns) and "class_accuracy" not in csv
    assert csv.loc[2, "ts_ece"] == pytest.approx(m[2]["ts_ece"])
    assert not list(tmp_path.rglob("*.tmp-*")) and not list(tmp_path.rglob("checkpoint.pt"))
    # the final weights honour the mask; round 1 started from the initial values of the survivors
    mask1 = torch.load(run.round_dir(1) / "mask.pt")
    final1 = torch.load(run.round_dir(1) / "final.pt")
    assert all((final1[n][~mask1[n]] == 0).all() for n in mask1)


def test_more_rounds_extend_a_run_without_recomputing(tmp_path):
    run = run_lottery("digits_lenet", "none", rounds=1, out_dir=tmp_path, **SMOKE)
    stamp = {p: p.stat().st_mtime_ns for p in run.path.rglob("*") if p.is_file() and p.name not in ("metrics.csv", ".lock", "progress.json")}  # bookkeeping
    run2 = run_lottery("digits_lenet", "none", rounds=2, out_dir=tmp_path, **SMOKE)
    assert run2.path == run.path and run2.finished_rounds() == [0, 1, 2]
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())  # nothing already computed was rewritten


def test_same_config_same_results_other_seed_other_dir(tmp_path):
    a = run_lottery("digits_lenet", "mixup", rounds=1, out_dir=tmp_path / "a", **SMOKE)
    b = run_lottery("digits_lenet", "mixup", rounds=1, out_dir=tmp_path / "b", **SMOKE)
    c = run_lottery("digits_lenet", "mixup", rounds=1, seed=1, out_dir=tmp_path / "a", **SMOKE)
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("seconds", "resumed_at_epochs")} for m in ms]
    assert strip(a.round_metrics()) == strip(b.round_metrics())
    assert c.path != a.path and strip(c.round_metrics()) != strip(a.round_metrics())


@pytest.mark.parametrize("strategy", ["vwcc", "mixup"])
def test_resume_after_kill_equals_uninterrupted(tmp_path, strategy):
    """A real `lottery_nb run` is killed with SIGKILL in the middle of round 1 (after an epoch checkpoint, before
    the round's end); the same command resumes it. Metrics and weights equal those of an uninterrupted run."""
    args = ["run", "--preset", "digits_lenet", "--strategy", strategy, "--budget", "smoke", "--rounds", "2",
            "--set", "epochs=12", "--quiet", "--device", "cpu"]
    ref = cli(*args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    with background_cli(*args, "--out", str(out)) as proc:
        wait_until(lambda: list(out.glob("*/round_01/checkpoint.pt")), proc, "a checkpoint of round 1")
        run_dir = next(iter(out.iterdir()))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    run = RunDir(run_dir)
    assert run.finished_rounds() == [0], "the kill did not land in the middle of round 1"
    ck = torch.load(run_dir / "round_01" / "checkpoint.pt", weights_only=False)
    assert 1 <= ck["epoch"] < 12
    resumed = cli(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    ref_run = RunDir(next(iter((tmp_path / "ref").iterdir())))
    assert ref_run.path.name == run_dir.name
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("seconds", "resumed_at_epochs")} for m in ms]
    assert strip(run.round_metrics()) == strip(ref_run.round_metrics())
    assert run.round_metrics()[1]["resumed_at_epochs"] == [ck["epoch"]]  # continued from the checkpoint, not from scratch
    assert all("resumed_at_epochs" not in m for m in ref_run.round_metrics() + run.round_metrics()[::2])
    for r in range(3):
        a, b = torch.load(run.round_dir(r) / "final.pt"), torch.load(ref_run.round_dir(r) / "final.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run.round_dir(1) / "history.json").read_text()) == json.loads((ref_run.round_dir(1) / "history.json").read_text())


def test_mismatched_run_directory_is_refused(tmp_path):
    run = run_lottery("digits_lenet", "none", rounds=0, out_dir=tmp_path, **SMOKE)
    cfg_file = run.path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["config"]["preset"]["lr"] = 0.5
    cfg_file.write_text(json.dumps(cfg))
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match="different configuration.*lr"):
        run_lottery("digits_lenet", "none", rounds=1, out_dir=tmp_path, **SMOKE)
    r = cli("run", "--preset", "digits_lenet", "--budget", "smoke", "--rounds", "1", "--out", str(tmp_path), "--quiet")
    assert r.returncode == 2 and "different configuration" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == before  # nothing overwritten


def test_corrupt_checkpoint_is_kept_aside_and_the_round_restarts(tmp_path):
    run = run_lottery("digits_lenet", "none", rounds=0, out_dir=tmp_path, **SMOKE)
    ck = run.round_dir(1) / "checkpoint.pt"
    ck.parent.mkdir()
    ck.write_bytes(b"\x80\x02 this is not a checkpoint")
    r = cli("run", "--preset", "digits_lenet", "--budget", "smoke", "--rounds", "1", "--out", str(tmp_path), "--quiet")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [f"lottery_nb: {ck} was unreadable; round 1 starts again from its first epoch "
                                             "(the broken file is kept as checkpoint.pt.unreadable)"]
    assert (ck.parent / "checkpoint.pt.unreadable").read_bytes() == b"\x80\x02 this is not a checkpoint" and not ck.exists()
    assert run.finished_rounds() == [0, 1] and "resumed_at_epochs" not in run.round_metrics()[1]


@pytest.mark.parametrize("args,needle", [
    (["--preset", "imagenet"], "invalid choice"),
    (["--preset", "digits_lenet", "--strategy", "focal"], "invalid choice"),
    (["--preset", "digits_lenet", "--set", "pruning_fraction=1.0"], "(0, 1)"),
    (["--preset", "digits_lenet", "--set", "pruning_fraction=0"], "(0, 1)"),
    (["--preset", "digits_lenet", "--rounds", "-2"], "rounds"),
    (["--preset", "digits_lenet", "--set", "learning_rate=1"], "valid fields"),
    (["--preset", "digits_lenet", "--set", "strategy.T=0", "--strategy", "vwcc"], "T"),
    (["--preset", "mnist_lenet", "--data-root", "/nonexistent/data"], "mnist"),
])
def test_bad_input_exit_2(tmp_path, args, needle):
    r = cli("run", *args, "--budget", "smoke", "--out", str(tmp_path / "runs"))
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_late_and_random_rewinding(tmp_path):
    init_run = run_lottery("digits_lenet", "none", rounds=1, out_dir=tmp_path, **SMOKE)
    late = run_lottery("digits_lenet", "none", rounds=1, out_dir=tmp_path, rewind="late", rewind_step=5, **SMOKE)
    rand = run_lottery("digits_lenet", "none", rounds=1, out_dir=tmp_path, rewind="random", **SMOKE)
    assert len({init_run.path, late.path, rand.path}) == 3
    theta0, thetak = torch.load(init_run.path / "init.pt"), torch.load(late.path / "rewind.pt")
    assert torch.equal(theta0["fc1.weight"], torch.load(late.path / "init.pt")["fc1.weight"])
    assert not torch.equal(theta0["fc1.weight"], thetak["fc1.weight"])  # 5 steps of training later
    accs = {r.path.name: r.round_metrics()[1]["accuracy"] for r in (init_run, late, rand)}
    assert len(set(accs.values())) > 1


def test_status(tmp_path):
    run_lottery("digits_lenet", "none", rounds=1, out_dir=tmp_path, **SMOKE)
    run_lottery("digits_lenet", "lwcc", rounds=0, out_dir=tmp_path, **SMOKE)
    rows = {r["strategy"]: r for r in run_status(tmp_path)}
    assert rows["none"]["rounds done"] == 2 and rows["lwcc"]["rounds done"] == 1
    r = cli("status", str(tmp_path))
    assert r.returncode == 0 and "digits_lenet-lwcc" in r.stdout and "rounds done" in r.stdout
    assert {"confidence", "gap", "dead_classes", "ts_ece"} <= set(rows["lwcc"]) and "dead_classes" in r.stdout
    assert cli("status", str(tmp_path / "nope")).returncode == 2


def test_real_mnist_smoke_run(real_data, tmp_path):
    run = run_lottery("mnist_lenet", "none", rounds=1, out_dir=tmp_path, budget="smoke", ctx=RunContext(progress=False, data_root=real_data))
    m = run.round_metrics()
    assert len(m) == 2 and m[1]["sparsity"]["fc1.weight"] == pytest.approx(80.0, abs=0.01)
    assert m[1]["sparsity"]["fc.weight"] == pytest.approx(90.0, abs=0.01)
    assert m[0]["accuracy"] > 0.5  # 2,000 images, one epoch at the paper's lr 1e-4


def test_channels_last_rounds_give_the_same_tickets(tiny_cifar10, tmp_path):
    """A ResNet-18 lottery run in channels-last (forced on the CPU here; the default on CUDA) against the same
    run in the default format: the same metrics up to rounding, the same pruned masks, and the choice recorded."""
    from lottery_nb.lottery import run_lottery
    runs = {}
    for flag in ("0", "1"):
        ctx = RunContext(device="cpu", data_root=tiny_cifar10, progress=False, channels_last=flag == "1")
        runs[flag] = run_lottery("cifar10_resnet18", "none", rounds=1, budget="smoke", out_dir=tmp_path / f"cl{flag}", ctx=ctx)
    for r in (0, 1):
        a, b = (json.loads((runs[f].round_dir(r) / "metrics.json").read_text()) for f in ("0", "1"))
        assert a["channels_last"] is False and b["channels_last"] is True and a["amp"] is False
        for k in ("accuracy", "ece", "nll", "brier"): assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-6), (r, k)
    for f, fmt in (("0", torch.contiguous_format), ("1", torch.channels_last)):  # the weights were trained in that format
        final = torch.load(runs[f].round_dir(1) / "final.pt")
        convs = [w for w in final.values() if w.ndim == 4 and w.shape[1] > 1 and w.shape[2] > 1]
        assert convs and all(w.is_contiguous(memory_format=fmt) for w in convs), f
    ma, mb = (torch.load(runs[f].round_dir(1) / "mask.pt") for f in ("0", "1"))
    assert sum(int(m.sum()) for m in ma.values()) == sum(int(m.sum()) for m in mb.values())  # exactly 20% pruned in both
    # the weights agree to ~1e-7 (convolutions in another order), so a few of the 11 million may swap at the threshold
    assert sum(int((ma[k] != mb[k]).sum()) for k in ma) < 1e-5 * sum(m.numel() for m in ma.values())


def test_a_changed_strategy_default_never_resumes_a_folder_made_with_the_old_one(tmp_path, monkeypatch):
    "A default is recorded beside the name (config.json's `resolved`): changing LWCC's form or the stochastic strategies' dropout in code stops the old folder from resuming, and leaves it untouched; the new value given explicitly gets a folder of its own."
    import lottery_nb.calibration as calibration
    from lottery_nb.store import RunDirError
    old = run_lottery("digits_lenet", "lwcc", rounds=0, out_dir=tmp_path, **SMOKE)
    files = {p: p.read_bytes() for p in old.path.rglob("*") if p.is_file() and p.name != ".lock"}
    assert json.loads((old.path / "config.json").read_text())["config"]["strategy_hparams"] == {}  # as the first runs
    assert json.loads((old.path / "config.json").read_text())["resolved"] == {"strategy_hparams": {"form": "convex"}, "model_dropout": 0.0}
    monkeypatch.setattr(calibration.LWCC, "dataset_defaults", {"digits": {"form": "additive"}})  # a default changed in code
    with pytest.raises(RunDirError, match="form"): run_lottery("digits_lenet", "lwcc", rounds=1, out_dir=tmp_path, **SMOKE)
    assert {p: p.read_bytes() for p in files} == files  # the old folder untouched
    new = run_lottery("digits_lenet", "lwcc", rounds=0, out_dir=tmp_path, strategy_hparams={"form": "additive"}, **SMOKE)
    assert new.path != old.path and new.config()["strategy_hparams"] == {"form": "additive"}
    assert LotteryConfig.from_dict(new.config()).key == new.path.name.rsplit("-", 1)[1]  # the folder's configuration rebuilds its name
    vwcc = run_lottery("digits_lenet", "vwcc", rounds=0, out_dir=tmp_path, **SMOKE)
    monkeypatch.setattr(calibration, "DEFAULT_DROPOUT", 0.5)
    with pytest.raises(RunDirError, match="model_dropout"): run_lottery("digits_lenet", "vwcc", rounds=0, out_dir=tmp_path, **SMOKE)
    assert LotteryConfig(get_preset("digits_lenet", "smoke", dropout=0.3), "vwcc").resolved()["model_dropout"] == 0.3  # the preset's own dropout


def test_the_controls_change_one_ingredient_each(tmp_path):
    "reinit: the same dense round and first mask as LTH, but pruned rounds from a fresh initialisation; "
    "dropout: LTH's loss with dropout 0.3 in the model; lwcc_add: exactly LWCC with form='additive'."
    runs = {s: run_lottery("digits_lenet", s, rounds=2, out_dir=tmp_path, **SMOKE) for s in ("none", "reinit", "dropout", "lwcc_add")}
    runs["lwcc additive"] = run_lottery("digits_lenet", "lwcc", rounds=1, out_dir=tmp_path, strategy_hparams={"form": "additive"}, **SMOKE)
    load = lambda s, r, f: torch.load(runs[s].round_dir(r) / f)
    none, reinit = runs["none"].round_metrics(), runs["reinit"].round_metrics()
    assert none[0] == {**reinit[0], "seconds": none[0]["seconds"]}  # round 0: both plain CE from θ0
    assert all(torch.equal(load("none", 1, "mask.pt")[n], m) for n, m in load("reinit", 1, "mask.pt").items())  # pruned from the same round 0
    assert not torch.equal(load("none", 1, "final.pt")["fc1.weight"], load("reinit", 1, "final.pt")["fc1.weight"])
    assert json.loads((runs["reinit"].path / "config.json").read_text())["config"]["preset"]["rewind"] == "random"
    from lottery_nb.lottery import round_model
    assert round_model(runs["dropout"].path, 0).drop1.p == 0.3 and isinstance(round_model(runs["none"].path, 0).drop1, torch.nn.Identity)
    add, ref = runs["lwcc_add"].round_metrics(), runs["lwcc additive"].round_metrics()
    for a, b in zip(add[:2], ref):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
