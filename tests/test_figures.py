"""The figures' tables: the temperature-scaled reference rows, and the tools that write the results page's CSVs."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lottery_nb.tables import synthetic_results, with_temperature_scaled


def test_temperature_scaled_lth_rows():
    df = synthetic_results(strategies=("none", "lwcc"), seeds=(0, 1), rounds=2)
    for m in ("ece", "nll", "brier", "confidence", "ece_10"): df[f"ts_{m}"] = df.get(m, 0.9) * 0.5
    out = with_temperature_scaled(df)
    ts = out[out.strategy == "none_ts"].reset_index(drop=True)
    none = df[df.strategy == "none"].reset_index(drop=True)
    assert len(ts) == len(none) and (ts.accuracy == none.accuracy).all() and (ts.ece == none.ts_ece).all()
    assert (ts.gap == ts.confidence - ts.accuracy).all()
    assert len(with_temperature_scaled(df.drop(columns=[c for c in df if c.startswith("ts_")]))) == len(df)  # nothing to add


def test_reliability_and_convergence_tools_on_smoke_runs(tmp_path):
    "The two tools that write the results page's CSVs, on digits smoke runs: bins add up to the test set, histories are read back."
    import subprocess, sys
    from pathlib import Path
    from lottery_nb.tables import bins_from_rows
    from lottery_nb.lottery import run_lottery
    from lottery_nb.runs import RunContext
    tools = Path(__file__).resolve().parents[1] / "tools"
    runs = [run_lottery("digits_lenet", s, rounds=2, budget="smoke", out_dir=tmp_path / "runs", ctx=RunContext(progress=False)) for s in ("none", "lwcc")]
    out = tmp_path / "bins.csv"
    r = subprocess.run([sys.executable, tools / "reliability.py", tmp_path / "runs", "--seed", "0", "--out", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    bins = pd.read_csv(out)
    assert set(bins["round"]) == {0, 2} and set(bins.strategy) == {"none", "lwcc"} and len(bins) == 2 * 2 * 15
    for (s, rnd), rows in bins.groupby(["strategy", "round"]):
        m = next(run for run in runs if f"-{s}-" in run.path.name).round_metrics()[rnd]
        stats_ = bins_from_rows(rows)
        share = stats_.counts / stats_.counts.sum()
        assert stats_.counts.sum() == 450  # the digits test split (a quarter of 1,797)
        assert float((share * stats_.accuracy).sum()) == pytest.approx(m["accuracy"], abs=1e-6)
        assert float((share * stats_.gaps).sum()) == pytest.approx(m["ece"], abs=1e-6)
    csv = tmp_path / "conv.csv"
    r = subprocess.run([sys.executable, tools / "convergence.py", tmp_path / "runs", "--epochs", "1", "3", "--out", csv], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    conv = pd.read_csv(csv)
    assert len(conv) == 4 and set(conv.epochs) == {1, 3}
    assert conv[(conv.strategy == "none") & (conv.epochs == 3)].accuracy.item() == pytest.approx(runs[0].round_metrics()[0]["accuracy"])
