"""The statistics behind the results page's verdicts, against scipy: paired differences to LTH and their 95%
intervals (`scipy.stats.ttest_rel`), the verdict rules, and the temperature-scaled reference rows."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lottery_nb.figures import claim_table, paired_differences, synthetic_results, verdict, verdict_over, with_temperature_scaled


def test_paired_intervals_match_scipy_ttest_rel():
    df = synthetic_results(strategies=("none", "lwcc", "vwcc"), seeds=(0, 1, 2, 3), rounds=4, seed=5)
    d = paired_differences(df, "ece")
    for (s, r), row in d.set_index(["strategy", "round"]).iterrows():
        a = df[(df.strategy == s) & (df["round"] == r)].sort_values("seed").ece.to_numpy()
        b = df[(df.strategy == "none") & (df["round"] == r)].sort_values("seed").ece.to_numpy()
        ci = stats.ttest_rel(a, b).confidence_interval(0.95)
        assert row["diff"] == pytest.approx(np.mean(a - b)) and row.n == 4
        assert (row.lo, row.hi) == pytest.approx((ci.low, ci.high))


def test_pairs_are_matched_by_seed_not_by_position():
    df = synthetic_results(strategies=("none", "lwcc"), seeds=(0, 1, 2), rounds=2, seed=1)
    shuffled = df.sample(frac=1, random_state=0)
    pd.testing.assert_frame_equal(paired_differences(df, "accuracy"), paired_differences(shuffled, "accuracy"))
    # a seed missing for the baseline drops out of the pairs
    fewer = df[~((df.strategy == "none") & (df.seed == 2))]
    assert (paired_differences(fewer, "accuracy").n == 2).all()


def test_one_seed_is_always_inconclusive():
    df = synthetic_results(seeds=(0,), rounds=3)
    d = paired_differences(df, "ece")
    assert np.isinf(d.lo).all() and np.isinf(d.hi).all()
    assert claim_table(df, "ece", "lower").verdict.eq("inconclusive").all()


def test_verdict_rules():
    assert verdict(-0.3, -0.1, "lower") == "holds" and verdict(0.1, 0.3, "lower") == "does not hold"
    assert verdict(0.1, 0.3, "higher") == "holds" and verdict(-0.1, 0.1, "higher") == "inconclusive"
    with pytest.raises(ValueError, match="better"): verdict(0, 1, "smaller")
    assert verdict_over(["holds"] * 7 + ["inconclusive"] * 5) == "holds"
    assert verdict_over(["holds"] * 6 + ["inconclusive"] * 6) == "inconclusive"  # not more than half
    assert verdict_over(["does not hold"] * 10 + ["inconclusive"] * 2) == "does not hold"
    assert verdict_over(["holds"] * 11 + ["does not hold"]) == "inconclusive"


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
    from lottery_nb.figures import bins_from_rows
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
