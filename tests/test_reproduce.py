"""The reproduction: the experiment notebook run by papermill on digits at smoke budget, figures drawn from
synthetic tables, and bad parameters refused before any work."""
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.colors as mcolors
import pandas as pd
import papermill as pm
import pytest

from helpers import cli
from lottery_nb.figures import STRATEGY_STYLE, paper_figures, plot_metric
from lottery_nb.tables import load_results, summary_table, synthetic_results
from lottery_nb.reproduce import experiments_dir

REPO = Path(__file__).resolve().parents[1]


def test_reproduce_smoke_on_digits(tmp_path):
    "Run from a folder that holds a folder named lottery_nb (as the checkout's parent does): the kernels still import the package."
    out = tmp_path / "repro"
    (tmp_path / "lottery_nb").mkdir()
    r = cli("reproduce", "--budget", "smoke", "--datasets", "digits", "--strategies", "none", "lwcc", "--seeds", "0", "1",
            "--out", str(out), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checks that everything runs, not the method" in r.stdout  # the smoke budget says what its numbers are worth
    # the executed notebooks are kept, with their outputs
    grid_nb = json.loads((out / "notebooks" / "lottery_grid_digits.ipynb").read_text())
    params = next(c for c in grid_nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert "budget = \"smoke\"" in "".join(params["source"])
    assert any(o for c in grid_nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert (out / "notebooks" / "figures.ipynb").exists()
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 2 * 2 * 3 and set(df.strategy) == {"none", "lwcc"} and set(df.seed) == {0, 1}
    assert {f"{n}.{e}" for n in ("fig05_accuracy", "calibration_digits") for e in ("png", "pdf")} <= {p.name for p in (out / "figures").iterdir()}
    summary = (out / "summary.md").read_text()
    assert "| digits | dense |" in summary and "lwcc" in summary and summary in r.stdout
    assert "## Checks" in summary  # dead classes and unconverged rounds, or a line saying there are none
    # no stray warnings: neither the kernel's in the terminal nor tqdm's in the executed notebooks
    assert "Warning" not in r.stderr and "WARNING" not in r.stderr, r.stderr[-2000:]
    for nb in (out / "notebooks").glob("*.ipynb"):
        outputs = json.dumps([c.get("outputs", []) for c in json.loads(nb.read_text())["cells"]])
        assert "Warning" not in outputs, f"{nb.name}: {outputs[:2000]}"
        assert "Exception reporting mode" not in outputs, nb.name  # the parameters check sets short tracebacks silently
    assert "Exception reporting mode" not in r.stdout + r.stderr and "without encryption" not in r.stdout + r.stderr
    # a second invocation finds every run finished: nothing recomputed
    stamps = {p: p.stat().st_mtime_ns for p in [*(out / "runs").rglob("final.pt"), *(out / "notebooks").glob("*.ipynb")]}
    again = cli("reproduce", "--budget", "smoke", "--datasets", "digits", "--strategies", "none", "lwcc", "--seeds", "0", "1",
                "--out", str(out), "--quiet")
    assert again.returncode == 0 and again.stdout.startswith("already finished") and summary in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no run trained, no notebook executed again


@pytest.mark.parametrize("args,needle", [
    (["--datasets", "imagenet"], "unknown dataset 'imagenet'"),
    (["--strategies", "none,focal"], "focal"),
    (["--budget", "huge"], "invalid choice"),
    (["--datasets", "digits", "cifar10", "--data-root", "/nonexistent/folder"], "cifar10"),
])
def test_bad_grid_fails_before_any_work(tmp_path, args, needle):
    r = cli("reproduce", *args, "--out", str(tmp_path / "repro"), "--quiet")
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "repro").exists()


def test_bad_parameter_through_papermill_is_clear(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(experiments_dir() / "lottery_grid.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters=dict(dataset="imagenet", runs=str(tmp_path / "runs")), kernel_name="python3", progress_bar=False)
    assert e.value.ename == "LotteryError" and "unknown dataset 'imagenet'; choose from: mnist" in e.value.evalue  # the project's ValueError
    assert not (tmp_path / "runs").exists()


def test_plot_metric_lines_bands_colours_log_axis():
    "Seaborn lines at the mean over seeds, bands of one standard error, LTH drawn last (on top), dense on the left."
    df = synthetic_results(strategies=("none", "lwcc", "vwcc", "nba"), seeds=(0, 1, 2), rounds=5)
    ax = plot_metric(df, "accuracy")
    assert ax.get_xscale() == "log" and ax.xaxis_inverted()
    drawn = ("vwcc", "lwcc", "nba", "none")  # STRATEGY_STYLE order, the baseline last
    lines = [l for l in ax.lines if not l.get_label().startswith("_")]
    assert [l.get_label() for l in lines] == [STRATEGY_STYLE[s]["label"] for s in drawn]
    assert lines[-1].get_zorder() > max(l.get_zorder() for l in lines[:-1]) and lines[-1].get_linewidth() > lines[0].get_linewidth()
    for line, s in zip(lines, drawn):
        assert mcolors.same_color(line.get_color(), STRATEGY_STYLE[s]["color"])
        g = df[df.strategy == s].groupby("round")["accuracy"]
        assert sorted(line.get_ydata()) == pytest.approx(sorted(g.mean()))
        assert sorted(line.get_xdata()) == pytest.approx(sorted(100 * 0.8**r for r in range(5)))
    assert len(ax.collections) == 4  # one band per strategy
    band = ax.collections[-1].get_paths()[0].vertices[:, 1]  # the baseline's band
    g = df[df.strategy == "none"].groupby("round")["accuracy"]
    half = g.std() / 3 ** 0.5
    assert band.min() == pytest.approx((g.mean() - half).min()) and band.max() == pytest.approx((g.mean() + half).max())
    # one seed: no band
    assert len(plot_metric(df[df.seed == 0], "ece").collections) == 0


def test_paper_figures_choose_the_datasets_present(tmp_path):
    df = synthetic_results(datasets=("mnist", "fashion_mnist", "svhn"), seeds=(0, 1))
    figs = paper_figures(df, tmp_path)
    assert set(figs) == {"fig05_accuracy", "fig12_calibration_mnist", "fig20_calibration_svhn"}
    assert len(figs["fig05_accuracy"].axes) == 3 and len(figs["fig12_calibration_mnist"].axes) == 6
    assert [a.get_title() for a in figs["fig12_calibration_mnist"].axes[::3]] == ["Fashion-MNIST, LeNet-300-100", "MNIST, LeNet-300-100"]
    assert all((tmp_path / f"{n}.{e}").stat().st_size > 1000 for n in figs for e in ("png", "pdf"))


def test_summary_table_and_load_results(tmp_path):
    df = synthetic_results(seeds=(0, 1))
    t = summary_table(df)
    assert set(t["round"]) == {"dense", "round 5"} and len(t) == 2 * 3
    x = df[(df.strategy == "lwcc") & (df["round"] == 0)].accuracy
    assert t[(t.strategy == "lwcc") & (t["round"] == "dense")].accuracy.item() == f"{x.mean():.4f} ± {x.std(ddof=0):.4f}"
    assert load_results(tmp_path).empty


def run_grid_notebook(tmp_path, **parameters):
    return pm.execute_notebook(str(experiments_dir() / "lottery_grid.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               parameters=dict(runs=str(tmp_path / "runs"), budget="smoke", **parameters), progress_bar=False)


def test_papermill_string_parameters_are_lists_not_letters(tmp_path):
    "`papermill ... -p strategies none -p seeds 1` passes strings and numbers: they mean one strategy and one seed."
    run_grid_notebook(tmp_path, dataset="digits", strategies="none", seeds=1, rounds=0)
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].startswith("digits_lenet-none-seed1-")


@pytest.mark.parametrize("parameters,needle", [(dict(datasett="mnist"), "lottery_grid.ipynb has no parameter 'datasett'; its parameters are: dataset,"),
                                               (dict(seeds="zero"), "parameter seeds='zero': expected integers"),
                                               (dict(download="yes"), "parameter download='yes': expected True or False")])
def test_papermill_misspelled_or_bad_parameters_stop_with_one_line(tmp_path, parameters, needle):
    with pytest.raises(pm.PapermillExecutionError) as e:
        run_grid_notebook(tmp_path, **parameters)
    assert e.value.ename == "NotebookParameterError" and needle in e.value.evalue
    assert len("".join(e.value.traceback).strip().splitlines()) <= 2  # the message, not a traceback
    assert not (tmp_path / "runs").exists()


def test_an_off_scale_strategy_is_named_faint_and_bandless_but_full_in_the_legend():
    "One strategy far below the rest: the axis keeps the others apart; its line is faint and behind, no band, an arrow names it."
    df = synthetic_results(strategies=("none", "vwcc", "mixup", "nba", "lwcc_si"), seeds=(0, 1, 2), rounds=5)
    df.loc[df.strategy == "lwcc_si", "accuracy"] -= 0.5
    ax = plot_metric(df, "accuracy")
    lines = {l.get_label(): l for l in ax.lines if not l.get_label().startswith("_")}
    far, base = lines[STRATEGY_STYLE["lwcc_si"]["label"]], lines[STRATEGY_STYLE["none"]["label"]]
    assert far.get_alpha() < 0.5 and far.get_zorder() < min(l.get_zorder() for l in lines.values() if l is not far)
    assert base.get_alpha() in (None, 1.0)
    assert len(ax.collections) == 4  # bands of the four strategies on the scale only
    assert ax.get_ylim()[0] > df[df.strategy == "lwcc_si"].accuracy.max()  # the axis is not stretched to reach it
    notes = [t for t in ax.texts if t.get_text().startswith("↓ LWCC-SI")]
    assert len(notes) == 1 and notes[0].get_zorder() > far.get_zorder()
    assert all(h.get_alpha() in (None, 1.0) for h in ax.get_legend().legend_handles)
