"""The metrics against independent implementations: torchmetrics for ECE (l1) and MCE (max), torch's
`nll_loss` for NLL, and a loop in NumPy for Brier; on random and on awkward inputs."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from lottery_nb.metrics import accuracy, bin_stats, brier, calibration_report, ece, mce, nll, reliability_diagram


def tm(probs, labels, n_bins, norm):
    return multiclass_calibration_error(probs, labels, num_classes=probs.shape[1], n_bins=n_bins, norm=norm).item()


def random_probs(seed, n, k, temperature=1.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, k, generator=g) * 3 / temperature, 1)
    return probs, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("seed,n,k,n_bins", [(0, 1000, 10, 15), (1, 37, 3, 10), (2, 5000, 100, 15), (3, 200, 2, 7), (4, 1, 10, 15)])
def test_ece_mce_match_torchmetrics_on_random_inputs(seed, n, k, n_bins):
    probs, labels = random_probs(seed, n, k)
    assert ece(probs, labels, n_bins) == pytest.approx(tm(probs, labels, n_bins, "l1"), abs=1e-6)
    assert mce(probs, labels, n_bins) == pytest.approx(tm(probs, labels, n_bins, "max"), abs=1e-6)


def rows_with_confidence(conf, k=10):
    "Probability rows whose maximum is exactly `conf` (float32), on class 0."
    conf = torch.as_tensor(conf, dtype=torch.float32)
    rest = ((1 - conf) / (k - 1))[:, None].expand(-1, k - 1)
    return torch.cat([conf[:, None], rest], 1)


def test_awkward_inputs_match_torchmetrics():
    edges = torch.linspace(0, 1, 16)  # float32, as both implementations build them
    cases = {
        # all samples in one bin: the other 14 bins are empty
        "one bin": (rows_with_confidence([0.55] * 20), torch.tensor([0] * 12 + [1] * 8)),
        # confidences exactly on interior bin edges, mixed with confidences just inside the bins on either
        # side, with differing correctness: which bin a tie joins changes the answer
        "ties at edges": (rows_with_confidence(torch.cat([edges[2:15], edges[2:15] + 0.02, edges[2:15] - 0.02])),
                          torch.cat([torch.zeros(13), torch.ones(13), torch.zeros(13)]).long()),
    }
    p, _ = random_probs(5, 300, 10)
    cases["all correct"] = (p, p.argmax(1))
    cases["all wrong"] = (p, (p.argmax(1) + 1) % 10)
    # confidence exactly 1 with no other sample in the last bin: the conventions agree (see below)
    cases["confidence 1"] = (torch.cat([torch.eye(10)[:5], rows_with_confidence([0.3, 0.5])]), torch.tensor([0, 1, 2, 0, 0, 0, 1]))
    for name, (probs, labels) in cases.items():
        assert ece(probs, labels) == pytest.approx(tm(probs, labels, 15, "l1"), abs=1e-6), name
        assert mce(probs, labels) == pytest.approx(tm(probs, labels, 15, "max"), abs=1e-6), name


def test_edges_are_left_closed():
    edges = torch.linspace(0, 1, 16)
    s = bin_stats(rows_with_confidence(edges[3:4]), torch.tensor([0]))
    assert s.counts[3] == 1 and s.counts.sum() == 1  # c == edge 3 falls into bin 3 = [e3, e4)


def test_confidence_one_is_pooled_in_the_last_bin():
    """Where torchmetrics differs, on purpose: it counts c = 1 in a bin of its own; we pool it with [14/15, 1].
    By hand: two samples in the last bin, confidences 1.0 (right) and 0.95 (wrong): acc 0.5, conf 0.975."""
    probs = torch.cat([torch.eye(10)[:1], rows_with_confidence([0.95])])
    labels = torch.tensor([0, 3])
    assert bin_stats(probs, labels).counts[-1] == 2
    assert ece(probs, labels) == pytest.approx(0.475, abs=1e-6)
    assert mce(probs, labels) == pytest.approx(0.475, abs=1e-6)
    assert tm(probs, labels, 15, "l1") == pytest.approx(0.5 * 0.0 + 0.5 * 0.95, abs=1e-6)  # its separate bin


@pytest.mark.parametrize("seed,n,k", [(0, 1000, 10), (1, 3, 2), (2, 500, 100)])
def test_nll_matches_torch(seed, n, k):
    probs, labels = random_probs(seed, n, k, temperature=0.5)
    assert nll(probs, labels) == pytest.approx(F.nll_loss(probs.double().log(), labels).item(), rel=1e-6)


def test_nll_is_finite_at_zero_and_zero_at_one():
    assert nll(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == 0.0
    v = nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert np.isfinite(v) and v == pytest.approx(-np.log(np.finfo(np.float32).tiny), rel=1e-6)


@pytest.mark.parametrize("seed,n,k", [(0, 1000, 10), (1, 1, 3), (2, 64, 100)])
def test_brier_matches_a_hand_computation(seed, n, k):
    probs, labels = random_probs(seed, n, k)
    P, y = probs.double().numpy(), labels.numpy()
    expected = np.mean([sum((P[i, c] - (c == y[i])) ** 2 for c in range(k)) for i in range(n)])
    assert brier(probs, labels) == pytest.approx(expected, rel=1e-9)


def test_accuracy_and_report():
    probs, labels = random_probs(0, 400, 10)
    assert accuracy(probs, labels) == pytest.approx((probs.argmax(1) == labels).float().mean().item())
    r = calibration_report(probs, labels)
    assert set(r) == {"accuracy", "ece", "mce", "nll", "brier", "ece_10", "confidence", "gap", "dead_classes"}
    assert r["ece"] == ece(probs, labels) and all(isinstance(v, float) for k, v in r.items() if k != "dead_classes")
    assert isinstance(r["dead_classes"], int)
    # arrays work too
    assert calibration_report(probs.numpy(), labels.numpy()) == pytest.approx(r)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"): ece(torch.rand(10), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"): ece(torch.rand(10, 3), torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="n_bins"): ece(torch.rand(10, 3), torch.zeros(10, dtype=torch.long), n_bins=0)


def test_reliability_diagram_draws_the_bins(tmp_path):
    import matplotlib; matplotlib.use("Agg")
    probs, labels = random_probs(0, 500, 10)
    ax = reliability_diagram(probs, labels, n_bins=10)
    s = bin_stats(probs, labels, 10)
    filled = s.counts > 0
    acc_bars = next(c for c in ax.containers if c.get_label() == "accuracy")
    assert [b.get_height() for b in acc_bars] == pytest.approx(s.accuracy[filled].tolist())
    assert [b.get_x() for b in acc_bars] == pytest.approx(s.edges[:-1][filled].tolist())
    ax.figure.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


# --- diagnostics (issue 15): against independent computations -------------------------------------------------

from lottery_nb.metrics import (calibration_gap, class_accuracy, cross_fit_temperature, dead_classes, evaluation_report,
                                fit_temperature, mean_confidence, scale_temperature, temperature_report)


@pytest.mark.parametrize("seed,n,k", [(0, 1000, 10), (1, 37, 3), (2, 5000, 100)])
def test_ece_at_10_bins_and_mean_confidence_match_independent_computations(seed, n, k):
    probs, labels = random_probs(seed, n, k)
    report = calibration_report(probs, labels)
    assert report["ece_10"] == pytest.approx(tm(probs, labels, 10, "l1"), abs=1e-6)
    assert report["ece"] == pytest.approx(tm(probs, labels, 15, "l1"), abs=1e-6)
    conf = np.max(probs.numpy().astype(np.float64), axis=1)
    acc = np.mean(np.argmax(probs.numpy(), 1) == labels.numpy())
    assert report["confidence"] == pytest.approx(conf.mean(), abs=1e-9) == mean_confidence(probs)
    assert report["gap"] == pytest.approx(conf.mean() - acc, abs=1e-9)


def test_signed_gap_tells_under_from_overconfidence():
    probs, labels = random_probs(0, 20_000, 10)
    labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(1)).squeeze(1)  # calibrated by construction
    logits = probs.log()
    assert abs(calibration_gap(probs, labels)) < 0.01
    assert calibration_gap(torch.softmax(2 * logits, 1), labels) > 0.05      # sharper: overconfident
    assert calibration_gap(torch.softmax(logits / 2, 1), labels) < -0.05     # flatter: underconfident


def test_class_accuracy_and_dead_classes_match_sklearn_confusion_matrix():
    from sklearn.metrics import confusion_matrix
    probs, labels = random_probs(3, 500, 6)
    probs[:, 4] = 0  # class 4 is never predicted: dead
    cm = confusion_matrix(labels.numpy(), probs.argmax(1).numpy(), labels=range(6))
    expected = np.diag(cm) / cm.sum(1)
    assert np.allclose(class_accuracy(probs, labels), expected)
    assert dead_classes(probs, labels) == int(((np.diag(cm) == 0) & (cm.sum(1) > 0)).sum()) >= 1
    # a class absent from the labels is NaN and not counted as dead
    absent = labels.clone(); absent[absent == 5] = 0
    assert np.isnan(class_accuracy(probs, absent)[5]) and dead_classes(probs, absent) == dead_classes(probs, labels) - (expected[5] == 0)


def nll_at(logits, labels, T):
    return F.cross_entropy(torch.as_tensor(logits, dtype=torch.float64) / T, labels).item()


def grid_search_temperature(logits, labels, lo=0.05, hi=20.0):
    "The NLL-minimising temperature by brute force: a coarse log grid, then a fine one (step 0.02%) around its best point."
    coarse = np.exp(np.linspace(np.log(lo), np.log(hi), 121))
    i = int(np.argmin([nll_at(logits, labels, T) for T in coarse]))
    fine = np.exp(np.linspace(np.log(coarse[max(i - 1, 0)]), np.log(coarse[min(i + 1, 120)]), 501))
    nlls = [nll_at(logits, labels, T) for T in fine]
    return fine[int(np.argmin(nlls))], min(nlls)


@pytest.mark.parametrize("true_T", [0.5, 1.0, 2.5])
def test_fit_temperature_matches_a_fine_grid_search_on_logits_with_a_known_best_temperature(true_T):
    g = torch.Generator().manual_seed(7)
    base = 3 * torch.randn(10_000, 10, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(base, 1), 1, generator=g).squeeze(1)  # calibrated at T = 1 on `base`
    logits = base * true_T  # so the best temperature for these logits is close to true_T
    best, best_nll = grid_search_temperature(logits, labels)
    fitted = fit_temperature(torch.softmax(logits, 1), labels)
    assert fitted == pytest.approx(best, rel=1e-3)
    assert fitted == pytest.approx(true_T, rel=0.05)
    assert nll_at(logits, labels, fitted) <= best_nll + 1e-9


def test_fit_temperature_from_float32_probabilities_and_at_its_bounds():
    g = torch.Generator().manual_seed(4)
    base = 3 * torch.randn(5000, 10, generator=g)
    labels = torch.multinomial(torch.softmax(base, 1), 1, generator=g).squeeze(1)
    probs = torch.softmax(2 * base, 1)  # float32, overconfident: best T near 2
    best, _ = grid_search_temperature(probs.double().clamp_min(torch.finfo(torch.float32).tiny).log(), labels)
    assert fit_temperature(probs, labels) == pytest.approx(best, rel=1e-3) and 1.8 < best < 2.2
    separable = torch.softmax(torch.eye(4) * 5, 1)  # every sample right: sharpening always lowers the NLL
    assert fit_temperature(separable, torch.arange(4)) == 0.01
    assert fit_temperature(torch.softmax(torch.eye(4) * 5, 1), torch.tensor([1, 2, 3, 0])) == 100.0  # every sample wrong


def test_cross_fitting_never_scales_a_sample_by_a_temperature_fitted_on_it():
    probs, labels = random_probs(5, 2001, 10)
    scaled, (t_a, t_b) = cross_fit_temperature(probs, labels, seed=3)
    idx = torch.randperm(2001, generator=torch.Generator().manual_seed(3))
    a, b = idx[:1000], idx[1000:]
    assert t_a == pytest.approx(fit_temperature(probs[a], labels[a])) and t_b == pytest.approx(fit_temperature(probs[b], labels[b]))
    assert torch.allclose(scaled[b], scale_temperature(probs[b], t_a)) and torch.allclose(scaled[a], scale_temperature(probs[a], t_b))
    assert torch.equal(scaled.argmax(1), probs.argmax(1))  # accuracy unchanged
    r = temperature_report(probs, labels, seed=3)
    assert r["temperature"] == pytest.approx((t_a * t_b) ** 0.5)
    assert r["ts_ece"] == pytest.approx(ece(scaled, labels)) and r["ts_nll"] == pytest.approx(nll(scaled, labels))
    # an overconfident model: scaling lowers its ECE and NLL on held-out halves
    over = torch.softmax(probs.log() * 3, 1)
    before, after = calibration_report(over, labels), temperature_report(over, labels)
    assert after["ts_nll"] < before["nll"] and after["ts_ece"] < before["ece"] and after["temperature"] > 1.5


def test_evaluation_report_holds_everything_a_round_records():
    probs, labels = random_probs(6, 400, 10)
    r = evaluation_report(probs, labels)
    assert set(calibration_report(probs, labels)) <= set(r) and set(temperature_report(probs, labels)) <= set(r)
    assert len(r["class_accuracy"]) == 10 and r["dead_classes"] == sum(a == 0 for a in r["class_accuracy"])
