"""The seven strategies against plain reference implementations written from ../shared/methods.md
(explicit probabilities, loops over passes and samples), and the properties the issue asks for."""
import math

import pytest
import torch
import torch.nn.functional as F

from lottery_nb.losses import kl_uniform, lwcc_loss, lwcc_si_loss, mda_loss, mixup, nba_loss, soft_cross_entropy, soft_histogram, stochastic_logits, vwcc_loss
from lottery_nb.calibration import STRATEGIES, get_strategy
from lottery_nb.models import ResNet18, VGG19, get_model



@pytest.fixture(autouse=True)
def double_precision():
    "The references are exact: compare in double precision, and leave the default as it was."
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def ref_kl_u(p):
    K = len(p)
    return sum((1 / K) * math.log((1 / K) / p[k]) for k in range(K))


def ref_vwcc(logits_T, y):
    T, N, K = logits_T.shape
    P = torch.softmax(logits_T, -1).tolist()
    total = 0.0
    for i in range(N):
        pbar = [sum(P[t][i][k] for t in range(T)) / T for k in range(K)]
        alpha = 1 - sum(sum(math.sqrt(P[t][i][k] * pbar[k]) for k in range(K)) for t in range(T)) / T
        total += sum((1 - alpha) * -math.log(P[t][i][y[i]]) + alpha * ref_kl_u(P[t][i]) for t in range(T)) / T
    return total / N


def ref_lwcc_on_probs(P, y, form="convex"):
    total = 0.0
    for p, yi in zip(P, y):
        pred = max(range(len(p)), key=p.__getitem__)
        w = 1.0 if pred != yi else 1 - max(p)
        ce_weight = 1.0 if form == "additive" else 1 - w
        total += ce_weight * -math.log(p[yi]) + w * ref_kl_u(p)
    return total / len(P)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 12, 7, generator=g) * 2, torch.randint(0, 7, (12,), generator=g)


def test_vwcc_matches_reference(batch):
    zT, y = batch
    assert vwcc_loss(zT, y).item() == pytest.approx(ref_vwcc(zT, y.tolist()), rel=1e-9)


def test_vwcc_with_identical_passes_is_cross_entropy(batch):
    zT, y = batch
    assert vwcc_loss(zT[0].expand(5, -1, -1), y).item() == pytest.approx(F.cross_entropy(zT[0], y).item(), rel=1e-9)


def test_vwcc_weight_carries_no_gradient(batch):
    zT, y = batch
    zT = zT.clone().requires_grad_()
    vwcc_loss(zT, y).backward()
    logp = F.log_softmax(zT, -1)
    with torch.no_grad():
        pbar = logp.exp().mean(0)
        alpha = 1 - (logp.exp() * pbar).sqrt().sum(-1).mean(0)
    z2 = zT.detach().clone().requires_grad_()
    lp = F.log_softmax(z2, -1)
    ((1 - alpha) * -lp.gather(-1, y.expand(5, -1)[..., None]).squeeze(-1) + alpha * kl_uniform(lp)).mean().backward()
    assert torch.allclose(zT.grad, z2.grad, atol=1e-12)
    # with gradient through alpha the result would differ: the test can tell the two apart
    z3 = zT.detach().clone().requires_grad_()
    lp = F.log_softmax(z3, -1); p = lp.exp(); a = 1 - (p * p.mean(0)).sqrt().sum(-1).mean(0)
    ((1 - a) * -lp.gather(-1, y.expand(5, -1)[..., None]).squeeze(-1) + a * kl_uniform(lp)).mean().backward()
    assert not torch.allclose(zT.grad, z3.grad, atol=1e-6)


def test_lwcc_matches_reference_and_limits(batch):
    z, y = batch[0][0], batch[1]
    assert lwcc_loss(z, y).item() == pytest.approx(ref_lwcc_on_probs(torch.softmax(z, -1).tolist(), y.tolist()), rel=1e-9)
    wrong, y0 = torch.tensor([[0.0, 9.0, 1.0]]), torch.tensor([0])
    assert lwcc_loss(wrong, y0).item() == pytest.approx(ref_kl_u(torch.softmax(wrong, -1)[0].tolist()), rel=1e-12)
    gaps = [abs(lwcc_loss(torch.tensor([[s, 0.0, 0.0]]), y0).item() - F.cross_entropy(torch.tensor([[s, 0.0, 0.0]]), y0).item())
            for s in (1.0, 3.0, 6.0, 12.0, 24.0, 36.0)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-9


def test_lwcc_si_is_lwcc_on_the_mean_softmax(batch):
    zT, y = batch
    pbar = torch.softmax(zT, -1).mean(0).tolist()
    assert lwcc_si_loss(zT, y).item() == pytest.approx(ref_lwcc_on_probs(pbar, y.tolist()), rel=1e-9)
    assert lwcc_si_loss(zT[0].expand(5, -1, -1), y).item() == pytest.approx(lwcc_loss(zT[0], y).item(), rel=1e-9)


def test_lwcc_additive_reading_against_the_reference(batch):
    zT, y = batch
    assert lwcc_loss(zT[0], y, "additive").item() == pytest.approx(ref_lwcc_on_probs(torch.softmax(zT[0], -1).tolist(), y.tolist(), "additive"), rel=1e-9)
    pbar = torch.softmax(zT, -1).mean(0).tolist()
    assert lwcc_si_loss(zT, y, "additive").item() == pytest.approx(ref_lwcc_on_probs(pbar, y.tolist(), "additive"), rel=1e-9)
    assert get_strategy("lwcc", form="additive").form == "additive" and get_strategy("lwcc_si").form == "convex"
    with pytest.raises(ValueError, match="LWCC form"): get_strategy("lwcc", form="mixture")
    model = get_model("lenet_300_100", input_shape=(1, 4, 4), dropout=0.3)
    x = torch.randn(12, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for name in ("lwcc", "lwcc_si"):  # the strategies use the form they were given
        torch.manual_seed(0); a = get_strategy(name, form="additive")(model, x, y)
        torch.manual_seed(0); c = get_strategy(name)(model, x, y)
        assert a.item() > c.item()  # additive adds CE on the samples the convex form gives (1 - w) < 1 of it


def test_convex_lwcc_gives_a_wrong_sample_no_pull_towards_its_label():
    "The dead-class mechanism: d KL(U||p)/dz = p - 1/K whatever the label; the additive reading pulls the label up."
    z = torch.tensor([[0.3, 2.5, -0.7, 0.1, 1.0]], requires_grad=True)  # predicts class 1
    p = torch.softmax(z.detach(), -1)[0]
    for label in (0, 2, 3, 4):
        g_convex, = torch.autograd.grad(lwcc_loss(z, torch.tensor([label])), z)
        g_additive, = torch.autograd.grad(lwcc_loss(z, torch.tensor([label]), "additive"), z)
        assert torch.allclose(g_convex[0], p - 1 / 5, atol=1e-12)
        onehot = F.one_hot(torch.tensor(label), 5).double()
        assert torch.allclose(g_additive[0], (p - onehot) + (p - 1 / 5), atol=1e-12)


def test_mda():
    K = 6
    assert abs(mda_loss(4 * torch.eye(K)).item()) < 1e-12  # batch-mean prediction uniform
    z = torch.randn(20, K, generator=torch.Generator().manual_seed(1))
    pbar = torch.softmax(z, -1).mean(0)
    assert mda_loss(z).item() == pytest.approx(sum((1 / K) * math.log((1 / K) / q) for q in pbar.tolist()), rel=1e-9)
    assert mda_loss(z).item() > 0 and mda_loss(4 * torch.eye(K)[[0] * K]).item() > mda_loss(z).item()
    prior = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert mda_loss(z, prior).item() == pytest.approx(sum(p * math.log(p / q) for p, q in zip(prior.tolist(), pbar.tolist())), rel=1e-9)


def test_soft_histogram():
    c = torch.rand(500, generator=torch.Generator().manual_seed(2)).requires_grad_()
    h = soft_histogram(c, 8)
    assert h.sum().item() == pytest.approx(500)
    h[0].backward()
    assert c.grad is not None and c.grad.abs().sum() > 0
    hard = torch.histc(c.detach(), bins=8, min=0, max=1)
    errs = [(soft_histogram(c.detach(), 8, s) - hard).abs().sum().item() for s in (0.1, 0.03, 0.01, 0.001)]
    assert all(a > b for a, b in zip(errs, errs[1:])) and errs[-1] < 2


def test_nba_prefers_spread_confidences():
    def with_conf(conf, K=10):
        conf = torch.as_tensor(conf)
        return torch.log(torch.cat([conf[:, None], ((1 - conf) / (K - 1))[:, None].expand(-1, K - 1)], 1))
    spread = nba_loss(with_conf(torch.linspace(0.11, 0.99, 200)))
    assert nba_loss(with_conf(torch.full((200,), 0.995))) > spread
    assert nba_loss(with_conf(torch.full((200,), 0.11))) > spread


def test_mixup():
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 5, (8,))
    xm, t = mixup(x, y, 0.3, 5, lam=1.0)
    assert torch.equal(xm, x) and torch.equal(t, F.one_hot(y, 5).to(t.dtype))
    a = mixup(x, y, 0.3, 5, torch.Generator().manual_seed(3))
    b = mixup(x, y, 0.3, 5, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    xm, t = a
    assert torch.allclose(t.sum(1), torch.ones(8))
    lam = t.max(1).values.min()  # every row mixes x_i and x_j with the same lambda
    assert ((t == 0) | (t - lam).abs().lt(1e-9) | (t - (1 - lam)).abs().lt(1e-9) | (t - 1).abs().lt(1e-9)).all()
    assert soft_cross_entropy(torch.zeros(2, 5), F.one_hot(torch.tensor([0, 1]), 5).double()).item() == pytest.approx(math.log(5))
    with pytest.raises(ValueError, match="alpha"): mixup(x, y, 0.0, 5)


def test_losses_finite_on_extreme_logits():
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 1e4]], dtype=torch.float32).requires_grad_()
    y = torch.tensor([1, 1, 2])
    zT = z.expand(4, -1, -1)
    for f in (lambda: vwcc_loss(zT, y), lambda: lwcc_loss(z, y), lambda: lwcc_si_loss(zT, y), lambda: mda_loss(z),
              lambda: nba_loss(z), lambda: soft_cross_entropy(z, F.one_hot(y, 3).float())):
        z.grad = None
        loss = f()
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_trains_the_weights(name):
    s = get_strategy(name)
    model = get_model("lenet_300_100", dropout=s.dropout, input_shape=(1, 8, 8)).float()
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float32), torch.randint(0, 10, (16,))
    s(model, x, y).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", ["vwcc", "lwcc_si"])
def test_stochastic_passes_are_one_forward_that_runs_the_first_layer_once(name):
    s = get_strategy(name, T=7)
    model = get_model("lenet_300_100", dropout=0.3, input_shape=(1, 8, 8)).float()
    rows = {}
    for n in ("fc1", "fc2", "fc"):
        getattr(model, n).register_forward_hook(lambda m, i, o, n=n: rows.setdefault(n, []).append(len(i[0])))
    s(model, torch.randn(10, 1, 8, 8, dtype=torch.float32), torch.randint(0, 10, (10,)))
    assert rows == {"fc1": [10], "fc2": [70], "fc": [70]}  # before the first dropout once, after it T times
    zT = stochastic_logits(model, torch.randn(3, 1, 8, 8, dtype=torch.float32), 4)
    assert zT.shape == (4, 3, 10) and not torch.allclose(zT[0], zT[1])


def _tiny(model_name):
    if model_name == "lenet_300_100": return get_model(model_name, dropout=0.3, input_shape=(1, 8, 8)), (5, 1, 8, 8)
    if model_name == "vgg19": return VGG19(dropout=0.3, stages=((4,), (8,), (8,), (8,), (8,))), (5, 3, 32, 32)
    return ResNet18(dropout=0.3, widths=(4, 8, 8, 8)), (5, 3, 16, 16)


@pytest.mark.parametrize("model_name", ["lenet_300_100", "resnet18", "vgg19"])
@pytest.mark.parametrize("name", ["vwcc", "lwcc_si"])
def test_shared_passes_give_the_loss_and_gradients_of_the_repeated_batch(name, model_name):
    """The strategy's loss and gradients, with the layers before the first dropout run once, against the loss
    computed on the model's plain forward of the batch repeated T times (the same dropout masks: same seed)."""
    model, shape = _tiny(model_name)
    model = model.double().train()
    x, y = torch.randn(*shape, dtype=torch.float64), torch.randint(0, 10, (shape[0],))
    loss_of = {"vwcc": vwcc_loss, "lwcc_si": lwcc_si_loss}[name]
    def repeated(m, xb, T):
        return m(xb.repeat(T, *[1] * (xb.ndim - 1))).view(T, len(xb), -1)
    results = []
    for logits in (repeated, None):
        torch.manual_seed(0); model.zero_grad()
        loss = loss_of(repeated(model, x, 5), y) if logits else get_strategy(name, T=5)(model, x, y)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, rtol=1e-12)
    for a, b in zip(g1, g2): assert torch.allclose(a, b, rtol=1e-9, atol=1e-12 * a.abs().max())


def test_a_path_around_the_dropout_falls_back_to_the_repeated_batch():
    class Skip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn, self.drop, self.out = torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6), torch.nn.Dropout(0.5), torch.nn.Linear(6, 3)
        def forward(self, x):
            h = self.bn(self.fc(x))
            return self.out(self.drop(h) + h)
    a, b, x = Skip(), Skip(), torch.randn(4, 6)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(0); za = a(x.repeat(3, 1)).view(3, 4, 3)
    torch.manual_seed(0); zb = stochastic_logits(b, x, 3)
    assert torch.allclose(za, zb)
    assert torch.allclose(a.bn.running_mean, b.bn.running_mean) and torch.allclose(a.bn.running_var, b.bn.running_var)
    torch.manual_seed(1); zb2 = stochastic_logits(b, x, 3)  # later calls go straight to the repeated batch
    torch.manual_seed(1); za2 = a(x.repeat(3, 1)).view(3, 4, 3)
    assert torch.allclose(za2, zb2) and b.bn.num_batches_tracked == 2


def test_get_strategy_errors_and_defaults():
    with pytest.raises(ValueError) as e: get_strategy("focal")
    assert all(n in str(e.value) for n in STRATEGIES)
    for kwargs, needle in [(dict(name="vwcc", T=0), "T"), (dict(name="lwcc_si", T=2.5), "T"), (dict(name="mixup", alpha=-1), "alpha"),
                           (dict(name="mixup", alpha=0), "alpha"), (dict(name="nba", n_bins=1), "n_bins"), (dict(name="mda", weight=-1), "weight"),
                           (dict(name="lwcc", T=3), "no hyper-parameter")]:
        with pytest.raises(ValueError, match=needle): get_strategy(**kwargs)
    with pytest.raises(ValueError, match="dropout"):
        get_strategy("vwcc")(get_model("lenet_300_100", input_shape=(1, 8, 8)).float(), torch.zeros(2, 1, 8, 8, dtype=torch.float32), torch.zeros(2).long())
    assert get_strategy("mda", "mnist").weight != get_strategy("mda", "cifar10").weight == get_strategy("mda", "fashion_mnist").weight
    assert get_strategy("mda", "mnist_b").weight == get_strategy("mda", "mnist").weight
    assert get_strategy("vwcc").stochastic and get_strategy("lwcc_si").stochastic
    assert not any(get_strategy(n).stochastic for n in ("none", "mixup", "mda", "lwcc", "nba"))
    assert get_strategy("vwcc", T=3).hparams == {"T": 3}


def test_a_strategy_is_one_declaration(monkeypatch):
    "A subclass of Strategy with a name is in the registry, the groups, the CLI's choices and the figures' styles; without a label or colour it is refused where it is declared."
    from dataclasses import dataclass
    from typing import ClassVar
    import lottery_nb.calibration as calibration
    from lottery_nb.data import LotteryError
    monkeypatch.setattr(calibration, "STRATEGIES", dict(calibration.STRATEGIES))  # restored after the test
    @dataclass(repr=False)
    class LabelSmoothing(calibration.Strategy):
        name: ClassVar[str] = "ls"; label: ClassVar[str] = "Label smoothing"; color: ClassVar[str] = "#7f7f7f"
        eps: float = 0.1
        def loss(self, model, x, y): return F.cross_entropy(model(x), y, label_smoothing=self.eps)
    assert calibration.STRATEGIES["ls"] is LabelSmoothing and "ls" in calibration.strategy_names("all")
    assert calibration.get_strategy("ls", eps=0.2).eps == 0.2 and "ls" not in calibration.strategy_names("paper")
    with pytest.raises(LotteryError, match="label or colour"):
        class Unstyled(calibration.Strategy): name: ClassVar[str] = "unstyled"
    with pytest.raises(LotteryError, match="declared twice"):
        class Again(calibration.Strategy): name: ClassVar[str] = "ls"; label: ClassVar[str] = "x"; color: ClassVar[str] = "red"
