import pytest
import torch
from torch import nn

from lottery_nb.models import get_model, prunable_parameters, pruning_exclusions
from lottery_nb.pruning import MaskedTraining, full_mask, prune, remaining_percent, rewind, sparsity_report


def _step(model, opt, mt, n=4):
    for _ in range(n):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(16, 1, 8, 8)), torch.randint(0, 10, (16,))).backward()
        mt.before_step(); opt.step(); mt.after_step()  # the contract: mask the gradients, step, re-zero the weights


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.Adam(p, 1e-2, weight_decay=1e-2),
    lambda p: torch.optim.AdamW(p, 1e-2, weight_decay=1e-1),
    lambda p: torch.optim.SGD(p, 0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)])
def test_pruned_weights_stay_zero_with_no_optimizer_state(make_opt):
    torch.manual_seed(0)
    m = get_model("lenet_300_100", input_shape=(1, 8, 8))
    mask = full_mask(m)
    g = torch.Generator().manual_seed(1)
    for k in mask: mask[k] = torch.rand(mask[k].shape, generator=g) > 0.5
    opt = make_opt(m.parameters())
    with MaskedTraining(m, mask) as mt:
        _step(m, opt, mt)
        for name, p in prunable_parameters(m).items():
            dead = ~mask[name]
            assert (p[dead] == 0).all() and (p.grad[dead] == 0).all() and (p[~dead] != 0).any()
            for buf in opt.state[p].values():
                if torch.is_tensor(buf) and buf.shape == p.shape: assert (buf[dead] == 0).all()
    # after remove() the hooks are gone: gradients flow to every weight again
    m.zero_grad(); nn.functional.cross_entropy(m(torch.randn(16, 1, 8, 8)), torch.randint(0, 10, (16,))).backward()
    assert (m.fc1.weight.grad[~mask["fc1.weight"]] != 0).any()


def test_forward_sees_exact_zeros():
    m = get_model("lenet_300_100", input_shape=(1, 8, 8))
    mask = full_mask(m); mask["fc.weight"][:] = False
    with MaskedTraining(m, mask):
        out = m(torch.randn(4, 1, 8, 8))
    assert torch.equal(out, m.fc.bias.expand(4, -1))


@pytest.mark.parametrize("rounds", [1, 5, 12])
def test_local_rate_compounds(rounds):
    torch.manual_seed(0)
    m = get_model("lenet_300_100")
    mask = full_mask(m)
    for _ in range(rounds):
        mask = prune(m, mask, 0.2, "local", {"fc.weight": 0.1})
        with torch.no_grad():
            for p in m.parameters(): p.normal_()
    for name, q in (("fc1.weight", 0.2), ("fc2.weight", 0.2), ("fc.weight", 0.1)):
        n = mask[name].numel()
        assert abs(int(mask[name].sum()) - n * (1 - q) ** rounds) <= rounds  # each round rounds its count
        # and exactly what rounding each round's count gives
        keep = n
        for _ in range(rounds): keep -= round(q * keep)
        assert int(mask[name].sum()) == keep


def test_local_prunes_the_smallest_surviving_magnitudes():
    lin = nn.Linear(10, 1, bias=False)
    with torch.no_grad(): lin.weight.copy_(torch.tensor([[5., -1., 3., 0.5, -4., 2., -0.1, 6., 0.2, 1.5]]))
    m1 = prune(lin, full_mask(lin), 0.3)
    assert (~m1["weight"][0]).nonzero().flatten().tolist() == [3, 6, 8]
    with torch.no_grad(): lin.weight[0, 3] = 100.0  # a pruned weight's magnitude must not matter any more
    m2 = prune(lin, m1, 0.5)  # 7 survive; round(3.5) = 4 of them go: 1, 1.5, 2, 3 (indices 1, 9, 5, 2)
    assert sorted((~m2["weight"][0]).nonzero().flatten().tolist()) == [1, 2, 3, 5, 6, 8, 9]


def test_global_pruning_ranks_across_layers_and_respects_exclusions():
    torch.manual_seed(0)
    r18 = get_model("resnet18")
    ex = pruning_exclusions(r18)
    params = prunable_parameters(r18)
    mask = prune(r18, full_mask(r18), 0.2, "global", exclude=ex)
    assert all(mask[n].all() for n in ex)
    ranked = [n for n in mask if n not in ex]
    pruned = sum(int((~mask[n]).sum()) for n in ranked)
    assert pruned == round(0.2 * sum(mask[n].numel() for n in ranked))
    # one threshold for all layers: every pruned magnitude <= every kept one
    dead = torch.cat([params[n].detach().abs()[~mask[n]] for n in ranked])
    alive = torch.cat([params[n].detach().abs()[mask[n]] for n in ranked])
    assert dead.max() <= alive.min()
    # layers are pruned at different rates (global), unlike local pruning
    rates = {n: 1 - mask[n].float().mean().item() for n in ranked}
    assert max(rates.values()) - min(rates.values()) > 0.05
    assert remaining_percent(mask, exclude=ex) == pytest.approx(80.0, abs=1e-3)


def test_bad_fractions_and_scopes():
    m = get_model("lenet_300_100")
    for q in (0, 1, 1.2, -0.1):
        with pytest.raises(ValueError, match=r"\(0, 1\)"): prune(m, full_mask(m), q)
    with pytest.raises(ValueError, match=r"\(0, 1\)"): prune(m, full_mask(m), 0.2, layer_fractions={"fc.weight": 1.0})
    with pytest.raises(ValueError, match="scope"): prune(m, full_mask(m), 0.2, "layerwise")
    with pytest.raises(ValueError, match="not in the mask"): prune(m, full_mask(m), 0.2, exclude=["conv1.weight"])


def test_sparsity_report():
    m = get_model("lenet_300_100")
    mask = full_mask(m); mask["fc.weight"][:5] = False
    rows = {r["layer"]: r for r in sparsity_report(mask)}
    assert rows["fc.weight"]["remaining"] == 500 and rows["fc.weight"]["% remaining"] == 50.0
    assert rows["total"]["weights"] == 784 * 300 + 300 * 100 + 1000 and rows["total"]["remaining"] == rows["total"]["weights"] - 500


def test_rewinding():
    torch.manual_seed(0)
    m = get_model("lenet_300_100", input_shape=(1, 8, 8))
    init = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters(): p.mul_(3).add_(1)
    mask = prune(m, full_mask(m), 0.4)
    rewind(m, mask, init)
    for name, p in prunable_parameters(m).items():
        assert torch.equal(p[mask[name]], init[name][mask[name]]) and (p[~mask[name]] == 0).all()
    assert torch.equal(m.fc2.bias, init["fc2.bias"])
    rewind(m, mask, seed=5)
    a = m.fc1.weight.clone()
    rewind(m, mask, seed=5)
    assert torch.equal(a, m.fc1.weight) and not torch.equal(a[mask["fc1.weight"]], init["fc1.weight"][mask["fc1.weight"]])
    assert (a[~mask["fc1.weight"]] == 0).all()
    with pytest.raises(ValueError): rewind(m, mask)


def test_a_pruning_criterion_is_a_declared_choice_of_the_preset(tmp_path):
    "A lottery run with the random criterion: a folder of its own, as many weights pruned per layer as by magnitude, other ones, the same on a rerun."
    from lottery_nb.lottery import run_lottery
    from lottery_nb.pruning import PRUNING_CRITERIA, pruning_criterion
    from lottery_nb.runs import RunContext
    kw = dict(rounds=1, budget="smoke", ctx=RunContext(progress=False))
    mag = run_lottery("digits_lenet", "none", out_dir=tmp_path / "a", **kw)
    rnd = run_lottery("digits_lenet", "none", out_dir=tmp_path / "a", pruning_criterion="random", **kw)
    again = run_lottery("digits_lenet", "none", out_dir=tmp_path / "b", pruning_criterion="random", **kw)
    assert mag.path.name != rnd.path.name == again.path.name and set(PRUNING_CRITERIA) >= {"magnitude", "random"}
    m, r, r2 = (torch.load(x.round_dir(1) / "mask.pt") for x in (mag, rnd, again))
    for n in m:
        assert int(m[n].sum()) == int(r[n].sum()) and not torch.equal(m[n], r[n]) and torch.equal(r[n], r2[n])
    with pytest.raises(ValueError, match="pruning_criterion"): run_lottery("digits_lenet", "none", out_dir=tmp_path, pruning_criterion="taylor", **kw)
    with pytest.raises(ValueError, match="declared twice"): pruning_criterion("random")(lambda w, g: w)
