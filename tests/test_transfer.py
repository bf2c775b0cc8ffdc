"""Ticket transfer: the target uses exactly the source's masks and starting values, resumes after a kill, refuses
mismatched pairs; and `reproduce` on a half includes the transfer and Fig. 25."""
import json
import signal

import pytest
import torch

from helpers import background_cli, cli, wait_until
import lottery_nb.runs as runs_module
from lottery_nb.lottery import run_lottery
from lottery_nb.store import RunDir, RunDirError
from lottery_nb.runs import RunContext
from lottery_nb.transfer import run_transfer

SMOKE = dict(budget="smoke", ctx=RunContext(progress=False))


@pytest.fixture
def record_starts(monkeypatch):
    "Record every round's model state right after rewinding (what the round's training starts from)."
    starts = []
    original = runs_module.rewind
    def spy(model, mask, state=None, seed=None):
        out = original(model, mask, state=state, seed=seed)
        starts.append(({k: v.detach().cpu().clone() for k, v in model.named_parameters()}, {k: m.clone() for k, m in mask.items()}))
        return out
    monkeypatch.setattr(runs_module, "rewind", spy)
    return starts


@pytest.mark.parametrize("rewind", ["init", "late", "random"])
def test_target_uses_the_source_masks_and_initial_values(tmp_path, record_starts, rewind):
    extra = dict(rewind=rewind, rewind_step=4) if rewind == "late" else dict(rewind=rewind)
    src = run_lottery("digits_a_lenet", "vwcc", rounds=2, out_dir=tmp_path / "runs", **SMOKE, **extra)
    source_starts = list(record_starts); record_starts.clear()
    tgt = run_transfer(src.path, "digits_b", tmp_path / "transfer", ctx=RunContext(progress=False))
    assert len(source_starts) == len(record_starts) == 3
    for r, ((sw, sm), (tw, tm)) in enumerate(zip(source_starts, record_starts)):
        assert sm.keys() == tm.keys() and all(torch.equal(sm[k], tm[k]) for k in sm), f"mask of round {r}"
        assert sw.keys() == tw.keys() and all(torch.equal(sw[k], tw[k]) for k in sw), f"initial values of round {r}"
        saved = torch.load(tgt.round_dir(r) / "mask.pt")
        source_saved = torch.load(src.round_dir(r) / "mask.pt")
        assert all(torch.equal(saved[k], source_saved[k]) for k in saved)
    if rewind == "init":  # and those values are the source's θ₀ under the mask
        theta0 = torch.load(src.path / "init.pt")
        tw, tm = record_starts[2]
        assert all(torch.equal(tw[k], theta0[k] * tm[k]) if k in tm else torch.equal(tw[k], theta0[k]) for k in tw)
    m = tgt.round_metrics()
    assert [x["round"] for x in m] == [0, 1, 2] and m[2]["remaining"] == src.round_metrics()[2]["remaining"]
    cfg = json.loads((tgt.path / "config.json").read_text())["config"]
    assert cfg["preset"]["dataset"] == "digits_b" and cfg["strategy"] == "none" and cfg["transfer"]["source_strategy"] == "vwcc"


def test_source_loss_and_rounds(tmp_path):
    src = run_lottery("digits_a_lenet", "lwcc", rounds=2, out_dir=tmp_path / "runs", **SMOKE)
    t = run_transfer(src.path, "digits_b", tmp_path / "transfer", loss="source", rounds=[0, 2], ctx=RunContext(progress=False))
    assert t.finished_rounds() == [0, 2] and json.loads((t.path / "config.json").read_text())["config"]["strategy"] == "lwcc"
    with pytest.raises(RunDirError, match="run it further"):
        run_transfer(src.path, "digits_b", tmp_path / "transfer", rounds=[3], ctx=RunContext(progress=False))
    with pytest.raises(ValueError, match="loss"):
        run_transfer(src.path, "digits_b", tmp_path / "transfer", loss="mse", ctx=RunContext(progress=False))


def test_bad_pairs_and_sources_exit_2(tmp_path):
    src = run_lottery("digits_a_lenet", "none", rounds=0, out_dir=tmp_path / "runs", **SMOKE)
    r = cli("transfer", "--source", str(src.path), "--target", "cifar10b", "--out", str(tmp_path / "t"))
    assert r.returncode == 2 and "shapes must match" in r.stderr and not (tmp_path / "t").exists()
    r = cli("transfer", "--source", str(tmp_path), "--target", "digits_b", "--out", str(tmp_path / "t"))
    assert r.returncode == 2 and "not a lottery run directory" in r.stderr
    r = cli("transfer", "--source", str(tmp_path / "nope"), "--target", "digits_b", "--out", str(tmp_path / "t"))
    assert r.returncode == 2 and "no such run directory" in r.stderr


def test_transfer_resumes_after_kill(tmp_path):
    src = run_lottery("digits_a_lenet", "mixup", rounds=1, out_dir=tmp_path / "runs", **SMOKE)
    args = ["transfer", "--source", str(src.path), "--target", "digits_b", "--loss", "source", "--set", "epochs=15", "--quiet", "--device", "cpu"]
    assert cli(*args, "--out", str(tmp_path / "ref")).returncode == 0
    out = tmp_path / "killed"
    with background_cli(*args, "--out", str(out)) as proc:
        wait_until(lambda: list(out.glob("*/round_01/checkpoint.pt")), proc, "a checkpoint of round 1")
        proc.send_signal(signal.SIGKILL); proc.wait(30)
    run = RunDir(next(out.iterdir()))
    assert run.finished_rounds() == [0]
    assert cli(*args, "--out", str(out)).returncode == 0
    ref = RunDir(next((tmp_path / "ref").iterdir()))
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("seconds", "resumed_at_epochs")} for m in ms]
    assert strip(run.round_metrics()) == strip(ref.round_metrics())
    a, b = torch.load(run.round_dir(1) / "final.pt"), torch.load(ref.round_dir(1) / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reproduce_on_a_half_includes_the_transfer(tmp_path):
    out = tmp_path / "repro"
    r = cli("reproduce", "--budget", "smoke", "--datasets", "digits_a", "--strategies", "none,lwcc", "--seeds", "0", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "notebooks" / "transfer_grid_digits_a.ipynb").exists()
    assert len(list((out / "transfer").glob("transfer-*/round_02/metrics.json"))) == 2
    assert (out / "figures" / "fig25_transfer.png").exists() and (out / "figures" / "fig25_transfer.pdf").exists()
    import pandas as pd
    df = pd.read_csv(out / "results.csv")
    assert set(df.kind) == {"lottery", "transfer"} and set(df[df.kind == "transfer"].source_strategy) == {"none", "lwcc"}
