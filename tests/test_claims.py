"""The statistics behind the results page's verdicts, against scipy and against tables with a known truth:
paired differences and their intervals (`scipy.stats.ttest_rel`), the per-seed endpoints (mean and slope),
the t and TOST tests, Holm's correction, the verdict rules, and the declared claims."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lottery_nb.claims import (CLAIMS, CONTROL_CLAIMS, MARGINS, Claim, claim_verdict, claims_table, endpoints, holm, judge,
                               one_sample, paired_differences, verdict, verdict_of)
from lottery_nb.data import LotteryError
from lottery_nb.tables import synthetic_results


def table(effects: dict, seeds=5, rounds=12, pair_sd=0.0005, trend: dict | None = None, rng_seed=0, metric="accuracy") -> pd.DataFrame:
    "LTH and strategies whose `metric` differs from LTH's by `effects` (plus `trend` x round); seeds shared by the strategies."
    rng, rows, trend = np.random.default_rng(rng_seed), [], trend or {}
    shared = rng.normal(0, 0.003, seeds)
    for s, e in {"none": 0.0, **effects}.items():
        for sd in range(seeds):
            own = rng.normal(0, pair_sd / np.sqrt(2))
            for r in range(rounds + 1):
                rows.append(dict(dataset="mnist", strategy=s, seed=sd, round=r, run=f"{s}-{sd}", remaining=100 * 0.8**r,
                                 **{metric: 0.9 - 0.001 * r + e + trend.get(s, 0) * r + shared[sd] + own + rng.normal(0, 0.001)}))
    return pd.DataFrame(rows)


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
    fewer = df[~((df.strategy == "none") & (df.seed == 2))]  # a seed missing for the baseline drops out of the pairs
    assert (paired_differences(fewer, "accuracy").n == 2).all()
    e = endpoints(df.sample(frac=1, random_state=3), "accuracy", rounds=[1, 2]).sort_values("seed", ignore_index=True)
    pd.testing.assert_frame_equal(e, endpoints(df, "accuracy", rounds=[1, 2]).sort_values("seed", ignore_index=True))


def test_endpoints_against_scipy():
    "The mean endpoint is the paired t-test of the round-averaged metric; the slope is scipy's regression per seed."
    df = table({"s": 0.004}, trend={"s": 0.0005})
    ep = endpoints(df, "accuracy", rounds=range(1, 13))
    sl = endpoints(df, "accuracy", rounds=range(1, 13), kind="slope")
    for seed in range(5):
        d = (df[(df.strategy == "s") & (df.seed == seed)].set_index("round").accuracy
             - df[(df.strategy == "none") & (df.seed == seed)].set_index("round").accuracy).loc[1:12]
        assert ep[ep.seed == seed].value.item() == pytest.approx(d.mean())
        assert sl[sl.seed == seed].value.item() == pytest.approx(stats.linregress(d.index, d.to_numpy()).slope)
    a = df[(df.strategy == "s") & (df["round"] >= 1)].groupby("seed").accuracy.mean()
    b = df[(df.strategy == "none") & (df["round"] >= 1)].groupby("seed").accuracy.mean()
    r = judge(df, Claim("c", "", "accuracy", "higher", ("s",), datasets=("mnist",))).iloc[0]
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert r.p == pytest.approx(stats.ttest_rel(a, b).pvalue) and (r.lo, r.hi) == pytest.approx((ci.low, ci.high))
    with pytest.raises(LotteryError, match="endpoint"): endpoints(df, "accuracy", kind="median")


def test_tost_is_two_one_sided_scipy_tests():
    rng = np.random.default_rng(1)
    for _ in range(20):
        x, m = rng.normal(rng.uniform(-0.01, 0.01), 0.004, 5), 0.005
        lower = stats.ttest_1samp(x, -m, alternative="greater").pvalue
        upper = stats.ttest_1samp(x, m, alternative="less").pvalue
        assert one_sample(x, m)["p_tost"] == pytest.approx(max(lower, upper))
        assert one_sample(x)["p"] == pytest.approx(stats.ttest_1samp(x, 0).pvalue)


def test_holm_is_the_step_down_procedure():
    "Adjusted p < alpha exactly for the hypotheses the sequential procedure rejects (p_(i) <= alpha / (m - i + 1) while it lasts)."
    rng = np.random.default_rng(2)
    for _ in range(200):
        p = rng.uniform(0, 0.1, rng.integers(1, 8))
        for alpha in (0.01, 0.05):
            rejected, order = set(), np.argsort(p)
            for i, j in enumerate(order):
                if p[j] > alpha / (len(p) - i): break
                rejected.add(j)
            assert {j for j, q in enumerate(holm(p)) if q <= alpha} == rejected


def test_a_known_effect_is_found_and_a_null_is_not():
    found = lambda e, k: judge(table({"s": e}, pair_sd=0.001, rng_seed=k), Claim("c", "", "accuracy", "higher", ("s",), datasets=("mnist",))).verdict.iloc[0]
    nulls = [found(0.0, k) for k in range(100)]
    assert nulls.count("holds") + nulls.count("does not hold") <= 10   # about 5% false findings at most
    assert [found(0.004, k) for k in range(20)].count("holds") >= 19       # four seed-SDs: found
    assert nulls.count("equivalent") >= 90                                 # and the null is shown equivalent within 0.5 points


def test_verdicts_of_difference_and_no_difference_claims():
    assert verdict_of(0.01, 0.01, 0.9, "higher") == "holds" and verdict_of(-0.01, 0.01, 0.9, "higher") == "does not hold"
    assert verdict_of(0.001, 0.3, 0.01, "lower") == "equivalent" and verdict_of(0.001, 0.3, 0.3, "lower") == "inconclusive"
    assert verdict_of(0.001, 0.01, 0.01, "higher", "no difference") == "equivalent"
    assert verdict_of(0.02, 0.01, 0.3, "higher", "no difference") == "does not hold"
    with pytest.raises(LotteryError, match="direction"): verdict_of(0, 1, 1, "smaller")
    assert verdict(-0.3, -0.1, "lower") == "holds" and verdict(0.1, 0.3, "lower") == "does not hold"
    assert verdict(0.1, 0.3, "higher") == "holds" and verdict(-0.1, 0.1, "higher") == "inconclusive"
    with pytest.raises(ValueError, match="better"): verdict(0, 1, "smaller")


def test_one_seed_is_always_inconclusive():
    df = synthetic_results(seeds=(0,), rounds=3)
    d = paired_differences(df, "ece")
    assert np.isinf(d.lo).all() and np.isinf(d.hi).all()
    assert judge(df, Claim("c", "", "ece", "lower", ("lwcc", "vwcc"), datasets=("mnist",))).verdict.eq("inconclusive").all()


def test_pooled_and_contrast_rows_and_the_claim_verdict():
    df = table({"a": 0.006, "b": 0.004, "c": 0.0})
    pooled = judge(df, Claim("p", "", "accuracy", "higher", ("a", "b", "c"), datasets=("mnist",), combine="pooled"))
    assert pooled.role.tolist() == ["whole", "strategy", "strategy", "strategy"]
    per_seed = endpoints(df, "accuracy", rounds=range(1, 13)).pivot(index="seed", columns="strategy", values="value")
    assert pooled.estimate.iloc[0] == pytest.approx(per_seed[["a", "b", "c"]].mean(axis=1).mean())
    assert claim_verdict(pooled) == pooled.verdict.iloc[0] == "holds"
    contrast = judge(df, Claim("k", "", "accuracy", "higher", ("a",), versus=("b", "c"), datasets=("mnist",)))
    assert contrast.estimate.iloc[0] == pytest.approx((per_seed.a - per_seed[["b", "c"]].mean(axis=1)).mean())
    each = judge(df, Claim("e", "", "accuracy", "higher", ("a", "c"), datasets=("mnist",)))
    assert list(each.verdict) == ["holds", "equivalent"] and claim_verdict(each) == "does not hold"  # c's effect is below the margin
    missing = judge(df, Claim("m", "", "accuracy", "higher", ("a", "reinit"), datasets=("mnist",)))
    assert missing.verdict.tolist() == ["no runs"] and "reinit" in missing.strategy.iloc[0]
    zero = judge(df.assign(gap=0.0001), Claim("z", "", "gap", "higher", ("a",), baseline=None, datasets=("mnist",), expect="no difference"))
    assert zero.verdict.tolist() == ["equivalent"] and zero.estimate.iloc[0] == pytest.approx(0.0001)


def test_the_declared_claims_run_on_the_committed_standard_grid():
    from pathlib import Path
    std = pd.read_csv(Path(__file__).resolve().parents[1] / "nbs" / "results" / "standard_mnist_fashion.csv")
    t = claims_table(std, CLAIMS + CONTROL_CLAIMS)
    assert set(t.claim) == {c.name for c in CLAIMS + CONTROL_CLAIMS}
    assert set(t.verdict) <= {"holds", "does not hold", "equivalent", "inconclusive", "no runs"}
    assert t[t.claim == "rewinding"].verdict.eq("no runs").all()  # the standard grid has no reinit runs: said, not skipped
    assert (t[t.verdict != "no runs"].seeds == 3).all() and set(MARGINS) >= {c.metric for c in CLAIMS}
    with pytest.raises(LotteryError, match="direction"): Claim("x", "", "accuracy", "up", ("vwcc",))
