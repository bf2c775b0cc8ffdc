"""Write the reliability-diagram bins of the dense and the last round of every lottery run under RUNS (one seed),
for the results page: nbs/results/<name>_reliability.csv.

    python tools/reliability.py RUNS --seed 0 --data-root ../shared/data --out nbs/results/standard_reliability.csv

Each run's round models are rebuilt from their folders (`round_model`) and evaluated on the preset's test set."""
import argparse

import pandas as pd

from lottery_nb.data import BatchLoader
from lottery_nb.tables import reliability_rows
from lottery_nb.lottery import LotteryConfig, round_model
from lottery_nb.store import find_runs
from lottery_nb.runs import run_data
from lottery_nb.training import predict

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows, tests = [], {}
    for run in find_runs(args.runs):
        cfg = LotteryConfig.from_dict(run.read_config()["config"])
        done = run.finished_rounds()
        if cfg.seed != args.seed or not done: continue
        if cfg.preset.dataset not in tests: tests[cfg.preset.dataset] = run_data(cfg.preset, args.data_root)[1]
        for r in sorted({0, done[-1]}):
            probs, labels = predict(round_model(run, r), BatchLoader(tests[cfg.preset.dataset], 1000))
            rows += reliability_rows(probs, labels, dataset=cfg.preset.dataset, strategy=cfg.strategy, seed=cfg.seed, round=r,
                                     remaining=run.round_metrics()[done.index(r)]["remaining"])
    pd.DataFrame(rows).to_csv(args.out, index=False, float_format="%.6g")
    print(f"{len(rows)} rows to {args.out}")
