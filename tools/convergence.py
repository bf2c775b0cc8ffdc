"""Write nbs/results/convergence_lenet.csv, the convergence table of the lottery chapter, from a folder of dense runs.

    python tools/convergence.py RUNS [--epochs 3 10 20 60]

RUNS holds run directories made by `lottery_nb run --rounds 0 --budget paper` (any presets and strategies)."""
import argparse
from pathlib import Path

from lottery_nb.lottery import convergence_table

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs")
    ap.add_argument("--epochs", nargs="+", type=int, default=[3, 10, 20, 60])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "nbs" / "results" / "convergence_lenet.csv"))
    args = ap.parse_args()
    table = convergence_table(args.runs, tuple(args.epochs))
    table.to_csv(args.out, index=False, float_format="%.6g")
    print(f"{len(table)} rows to {args.out}")
