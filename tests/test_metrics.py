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
    assert set(r) == {"accuracy", "ece", "mce", "nll", "brier"}
    assert r["ece"] == ece(probs, labels) and all(isinstance(v, float) for v in r.values())
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
