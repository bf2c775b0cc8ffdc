"""Sparse training: ERK/uniform densities, RigL's and CigL's invariants on real training steps, weight averaging,
resumable sparse runs, the CLI and the reproduction's sparse figure."""
import copy
import json
import math
import signal

import pytest
import torch
from torch import nn

from helpers import background_cli, cli, wait_until
from lottery_nb.data import BatchLoader, load_in_memory
from lottery_nb.store import RunDir
from lottery_nb.runs import RunContext
from lottery_nb.models import get_model, prunable_parameters
from lottery_nb.sparse import CigL, RigL, layer_densities, random_mask, run_sparse
from lottery_nb.training import fit


@pytest.mark.parametrize("model,sparsity", [("lenet_300_100", 0.9), ("lenet_300_100", 0.98), ("resnet18", 0.95), ("resnet50", 0.8)])
def test_erk_densities_match_formula_and_total(model, sparsity):
    params = prunable_parameters(get_model(model))
    shapes = {k: tuple(p.shape) for k, p in params.items()}
    d = layer_densities(shapes, sparsity)
    n = {k: p.numel() for k, p in params.items()}
    assert sum(d[k] * n[k] for k in d) == pytest.approx((1 - sparsity) * sum(n.values()), rel=1e-9)
    free = [k for k in d if d[k] < 1]
    eps = {k: d[k] * n[k] / sum(shapes[k]) for k in free}  # d = eps * sum(dims) / prod(dims)
    assert max(eps.values()) == pytest.approx(min(eps.values()), rel=1e-9)
    assert all(0 < v <= 1 for v in d.values())
    for k in d:  # a dense layer would have needed density > 1 with the common eps
        if d[k] == 1.0: assert next(iter(eps.values())) * sum(shapes[k]) / n[k] >= 1 - 1e-9
    mask = random_mask(params, d, torch.Generator().manual_seed(0), "exact")
    assert all(int(mask[k].sum()) == round(d[k] * n[k]) for k in d)
    assert abs(sum(int(m.sum()) for m in mask.values()) - (1 - sparsity) * sum(n.values())) <= len(d)


def test_uniform_and_errors():
    shapes = {"a": (300, 784), "b": (100, 300), "c": (10, 100)}
    assert all(v == pytest.approx(0.3) for v in layer_densities(shapes, 0.7, "uniform").values())
    with pytest.raises(ValueError, match=r"\(0, 1\)"): layer_densities(shapes, 1.0)
    with pytest.raises(ValueError, match="distribution"): layer_densities(shapes, 0.5, "snip")
    with pytest.raises(ValueError, match="cannot be reached"): layer_densities(shapes, 0.3, dense=["a"])


def test_bernoulli_layer_counts_are_the_official_draw_and_hashed_only_when_asked():
    """layer_counts='bernoulli', the default, keeps each weight with probability density (a binomial count per layer, as
    the official `torch.rand(shape) < density`); 'exact' keeps round(density * n), and its runs keep their folders."""
    params = prunable_parameters(get_model("lenet_300_100"))
    d = layer_densities({k: tuple(p.shape) for k, p in params.items()}, 0.9)
    n = {k: p.numel() for k, p in params.items()}
    counts = {k: [] for k in d}
    for seed in range(100):
        exact = random_mask(params, d, torch.Generator().manual_seed(seed), "exact")
        assert all(int(exact[k].sum()) == round(d[k] * n[k]) for k in d)
        drawn = random_mask(params, d, torch.Generator().manual_seed(seed))
        assert all(drawn[k].dtype == torch.bool and drawn[k].shape == params[k].shape for k in d)
        for k in d: counts[k].append(int(drawn[k].sum()))
    assert [k for k in d if d[k] == 1] == ["fc.weight"] and set(counts["fc.weight"]) == {n["fc.weight"]}  # ERK keeps it dense
    for k in ("fc1.weight", "fc2.weight"):
        c = torch.tensor(counts[k], dtype=torch.float64)
        sd = math.sqrt(n[k] * d[k] * (1 - d[k]))
        assert abs(c.mean() - d[k] * n[k]) < 4 * sd / 10  # mean of 100 draws
        assert 0.6 * sd < c.std() < 1.4 * sd and len(set(counts[k])) > 10  # a real spread, of the binomial's size
    with pytest.raises(ValueError, match="layer_counts"): random_mask(params, d, torch.Generator(), "poisson")
    from lottery_nb.sparse import sparse_config
    exact = sparse_config("fashion_mnist_lenet", "cigl", 0.9, 0, "quick", epochs=60, lr=0.001, layer_counts="exact")
    assert exact.key == "bfff387debbb"  # the results page's exact-count run keeps its folder
    official = sparse_config("fashion_mnist_lenet", "cigl", 0.9, 0, "quick", epochs=60, lr=0.001)
    assert official.layer_counts == "bernoulli" and official.to_dict()["sparse"]["layer_counts"] == "bernoulli"
    assert official.key == "b3e6e22e36af"  # the committed run made with --set layer_counts=bernoulli
    with pytest.raises(ValueError, match="layer_counts"): sparse_config("digits_lenet", "rigl", 0.9, layer_counts="binomial")


def _train(cls, epochs=3, delta_t=7, **kw):
    "A LeNet on digits at 90% ERK sparsity with `cls`, checking invariants at every step."
    torch.manual_seed(0)
    m = get_model("lenet_300_100", input_shape=(1, 8, 8))
    params = prunable_parameters(m)
    mask = random_mask(params, layer_densities({k: tuple(p.shape) for k, p in params.items()}, 0.9), torch.Generator().manual_seed(0))
    counts = {k: int(v.sum()) for k, v in mask.items()}
    dl = BatchLoader(load_in_memory("digits"), 60, shuffle=True)
    opt = torch.optim.SGD(m.parameters(), 0.05, momentum=0.9, weight_decay=1e-3)
    method = cls(m, mask, delta_t=delta_t, **kw); method.attach(opt, dl, epochs)
    log = {"snapshots": [], "grown_zero": [], "counts": [], "n_updates": 0, "skipped": 0}
    ce = lambda model, x, y: nn.functional.cross_entropy(model(x), y)
    old_mask = {}
    def before_step():
        old_mask.update({k: v.clone() for k, v in method.mask.items()})
        before = {k: p.detach().clone() for k, p in method.params.items()}
        stepped = method.before_step()
        if stepped is False:  # a mask update replaced the step: nothing but the update moved a weight
            log["skipped"] += 1
            log["n_updates"] += 1
            for k, w in method.params.items():
                grown = method.mask[k] & ~old_mask[k]
                kept = method.mask[k] & old_mask[k]
                unmoved = (w[kept] == before[k][kept]) | (w[kept] == 0)  # kept, or dropped and regrown at zero
                log["grown_zero"].append(bool((w[grown] == 0).all()) and bool(unmoved.all()) and all(
                    (b[grown] == 0).all() for b in opt.state[w].values() if torch.is_tensor(b) and b.shape == w.shape))
        return stepped
    def after_step():
        method.after_step()
        log["counts"].append(all(int(method.mask[k].sum()) == counts[k] for k in counts))
        log["counts"].append(all((w[~method.mask[k]] == 0).all() for k, w in method.params.items()))
    def after_epoch(e, row):
        method.after_epoch(e)  # every RoundMethod has the hook (a no-op for RigL)
        log["snapshots"].append([p.detach().clone() for p in m.parameters()])
    fit(m, dl, epochs, opt, loss_fn=method.wrap_loss(ce), before_step=before_step, after_step=after_step, after_epoch=after_epoch,
        progress=False)
    return m, method, mask, log


def test_rigl_invariants():
    m, rigl, mask0, log = _train(RigL)
    steps = 3 * 23
    expected = [s for s in range(1, steps + 1) if s % 7 == 0 and s - 1 < 0.75 * steps]  # the official (global_step + 1) % 7, global_step < end
    assert [u["step"] for u in rigl.updates] == expected and log["n_updates"] == log["skipped"] == len(expected)
    assert all(log["counts"])  # exact sparsity of every layer after every step and update; pruned weights zero
    assert all(log["grown_zero"])  # the update replaced the step: grown weights and their momentum at zero, the others unmoved
    for u in rigl.updates:
        for k, v in u.items():
            if k != "step": assert v[0] == v[1] > 0  # dropped == grown
    moved = sum(int((rigl.mask[k] ^ mask0[k]).sum()) for k in mask0)
    assert moved > 0
    assert rigl.drop_fraction_at(0) == pytest.approx(0.3) and rigl.drop_fraction_at(0.75 * steps) == pytest.approx(0.0, abs=1e-12)


def test_rigl_rounds_the_drop_count_up_and_zeroes_every_grown_weight():
    "Official magnitude_prune: ceil(rate * nonzeros); official abs_grad_growth: every grown weight set to 0, a weight dropped and regrown too."
    torch.manual_seed(0)
    m = nn.Linear(10, 1, bias=False)
    with torch.no_grad(): m.weight.copy_(torch.tensor([[5., 4., 3., 2., 1., 0., 0., 0., 0., 0.]]))
    mask = {"weight": torch.tensor([[True] * 5 + [False] * 5])}
    rigl = RigL(m, mask, delta_t=1, drop_fraction=0.5, end_fraction=1.0)
    rigl.attach(torch.optim.SGD(m.parameters(), 0.1), range(1000), 1)
    rigl.step = 1  # drop_fraction_at(0) = 0.5: ceil(0.5 * 5) = 3 dropped (round() would give 2)
    grad = torch.tensor([[0., 0., 0., 0., 9., 8., 7., 0., 0., 0.]])  # the dropped weight 1.0 has the largest gradient: regrown
    rigl.update_masks({"weight": grad})
    assert rigl.updates[-1]["weight"] == (3, 3)
    assert rigl.mask["weight"].tolist() == [[True, True, False, False, True, True, True, False, False, False]]
    assert m.weight.tolist() == [[5., 4., 0., 0., 0., 0., 0., 0., 0., 0.]]  # the regrown weight restarts at zero


class OfficialCigL:
    """CigL's `Masking` in step-end mode, transcribed from StevenBoys/CigL (`sparselearning/core.py`: `step`, `apply_w_raw`,
    `apply_dropout`, `dp_generate`, `apply_mask`, `reset_momentum`; `funcs/prune.py`: `magnitude_prune`; `funcs/grow.py`:
    `abs_grad_growth`; `funcs/decay.py`: `CosineDecay`), with `main.train`'s rule that a mask update replaces the step."""
    def __init__(self, model, optimizer, mask, dpnum, interval, prune_rate, end_when):
        self.opt, self.dpnum, self.interval, self.prune_rate, self.end_when = optimizer, dpnum, interval, prune_rate, end_when
        self.params = {k: p for k, p in model.named_parameters() if k in mask}
        self.mask = {k: v.float() for k, v in mask.items()}
        self.dp = {k: torch.ones_like(p) for k, p in self.params.items()}
        for k, p in self.params.items(): p.data = p.data * self.mask[k]  # init: apply_mask
        # add_module: w_raw_dict[name] = weight.data. Officially this aliases the dense weights before init's apply_mask; here the
        # masked ones, the one deliberate difference (a never-active weight grown and dropped at once restarts at zero, not at θ0 * s)
        self.raw = {k: p.data for k, p in self.params.items()}
        self.mask_step = 0

    def rate(self):  # CosineAnnealingLR(prune_rate, T_max=end_when) as stepped to mask_step by the last step()
        t = max(self.mask_step - 1, 0)
        return self.prune_rate * (1 + math.cos(math.pi * t / self.end_when)) / 2

    @torch.no_grad()
    def step(self):
        s = self.dpnum / (self.dpnum - 1)
        for k, w in self.params.items():  # apply_w_raw
            self.raw[k] = self.raw[k] * (1 - self.dp[k] * self.mask[k]) + w.data * self.dp[k] * self.mask[k] * (self.dpnum - 1) / self.dpnum
        for k, w in self.params.items():  # apply_dropout
            w.data = w.data * self.dp[k] * self.mask[k] + self.raw[k] * (1 - self.dp[k] * self.mask[k]) * s
            self.dp[k] = (torch.randint_like(w, 0, self.dpnum) < self.dpnum - 1).float()
            w.data = w.data * self.dp[k] * self.mask[k]
        self.opt.step()
        for k, w in self.params.items(): w.data = w.data * self.mask[k]  # apply_mask
        self.reset_momentum()
        self.mask_step += 1

    @torch.no_grad()
    def reset_momentum(self):
        for k, w in self.params.items():
            buf = self.opt.state[w].get("momentum_buffer")
            if buf is not None: buf *= self.mask[k]

    @torch.no_grad()
    def update_connections(self):
        rate = self.rate()
        for k, w in self.params.items():
            nonzeros = int(self.mask[k].sum()); zeros = self.mask[k].numel() - nonzeros
            num_remove = math.ceil(rate * nonzeros)
            if num_remove == 0: continue
            new = self.mask[k].clone()
            _, idx = torch.sort(torch.abs(w.data.view(-1)))
            new.view(-1)[idx[: zeros + num_remove]] = 0.0
            new = new.bool()
            grad = w.grad * (new == 0).float()
            _, idx = torch.sort(torch.abs(grad).flatten(), descending=True)
            new.view(-1)[idx[:num_remove]] = True
            w.data.view(-1)[idx[:num_remove]] = 0.0
            self.mask[k] = new.float()
        for k, w in self.params.items(): w.data = w.data * self.mask[k]
        self.reset_momentum()
        self.mask_step += 1

    def train_step(self, global_step: int):  # main.train: the update replaces the step
        if global_step < self.end_when and (global_step + 1) % self.interval == 0: self.update_connections()
        else: self.step()


def test_cigl_follows_the_official_code_step_by_step():
    """Our CigL and the transcription of the official code, side by side on the same LeNet, batches and random draws:
    the same weights after every step (the official s = dpnum/(dpnum-1) factors cancel: no weight is ever scaled),
    the same masks after every update."""
    torch.manual_seed(0)
    base = get_model("lenet_300_100", input_shape=(1, 8, 8))
    params = prunable_parameters(base)
    # exact counts: a mask under which no two candidates for growth have gradients equal to float rounding (with the
    # Bernoulli draw of seed 0, two such pairs at step 20, 0.000981225632 against ...749, swap places: rounding, not method)
    mask = random_mask(params, layer_densities({k: tuple(p.shape) for k, p in params.items()}, 0.9), torch.Generator().manual_seed(0), "exact")
    data = load_in_memory("digits")
    batches = [(x.clone(), y.clone()) for x, y in BatchLoader(data, 30)][:40]  # normalised, in order
    models = [copy.deepcopy(base) for _ in range(2)]
    opts = [torch.optim.SGD(mm.parameters(), 0.05, momentum=0.9, weight_decay=1e-4) for mm in models]
    ours = CigL(models[0], mask, delta_t=7, drop_fraction=0.3, end_fraction=0.75, dpnum=5)
    ours.attach(opts[0], batches, 1)
    ref = OfficialCigL(models[1], opts[1], mask, dpnum=5, interval=7, prune_rate=0.3, end_when=0.75 * len(batches))
    gen_state = torch.get_rng_state()
    for t, (x, y) in enumerate(batches):
        for i, (mm, opt) in enumerate(zip(models, opts)):
            torch.set_rng_state(gen_state)  # both draw the same random masks
            opt.zero_grad(); nn.functional.cross_entropy(mm(x), y).backward()
            if i == 0:
                if ours.before_step() is not False: opt.step()
                ours.after_step()
            else: ref.train_step(t)
        gen_state = torch.get_rng_state()
        for k, p in models[0].named_parameters():
            q = dict(models[1].named_parameters())[k]
            assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), (t, k, (p - q).abs().max())
        for k in mask: assert torch.equal(ours.mask[k], ref.mask[k].bool()), (t, k)
    assert len(ours.updates) == 4  # steps 7, 14, 21, 28 (global_step < 30)
    dropped = sum(int((~ours.keep[k] & ours.mask[k]).sum()) for k in mask)
    held = sum(int(((~ours.keep[k] & ours.mask[k]) & (models[0].state_dict()[k] != 0)).sum()) for k in mask)
    assert dropped > 0 and held > 0.5 * dropped  # a dropped weight holds its small update, not zero, until it is restored


def _side_by_side(base, mask, steps=40, **ours_kw):
    "Our CigL and the transcription of the official code on copies of `base`, the same batches and random draws; both, after `steps`."
    data = load_in_memory("digits")
    batches = [(x.clone(), y.clone()) for x, y in BatchLoader(data, 30)][:steps]
    models = [copy.deepcopy(base) for _ in range(2)]
    opts = [torch.optim.SGD(mm.parameters(), 0.05, momentum=0.9, weight_decay=1e-4) for mm in models]
    ours = CigL(models[0], mask, delta_t=7, drop_fraction=0.3, end_fraction=0.75, dpnum=5, **ours_kw)
    ours.attach(opts[0], batches, 1)
    ref = OfficialCigL(models[1], opts[1], mask, dpnum=5, interval=7, prune_rate=0.3, end_when=0.75 * len(batches))
    gen_state = torch.get_rng_state()
    for t, (x, y) in enumerate(batches):
        for i, (mm, opt) in enumerate(zip(models, opts)):
            torch.set_rng_state(gen_state)
            opt.zero_grad(); nn.functional.cross_entropy(mm(x), y).backward()
            if i == 0:
                if ours.before_step() is not False: opt.step()
                ours.after_step()
            else: ref.train_step(t)
        gen_state = torch.get_rng_state()
        yield t, ours, ref, models


def test_official_ties_are_the_official_sorts_where_dead_units_tie():
    """Twenty dead hidden units (no output, so their outgoing weights get no gradient, and those weights start at zero):
    the official sorts fill the growth from the tie at zero and the output layer loses weights for good. With
    ties='official' ours is the transcription of the official code step by step; with 'exact' no layer's count moves."""
    torch.manual_seed(0)
    base = get_model("lenet_300_100", input_shape=(1, 8, 8))
    with torch.no_grad():
        base.fc2.weight[:20] = 0; base.fc2.bias[:20] = -1; base.fc.weight[:, :20] = 0
    params = prunable_parameters(base)
    mask = random_mask(params, layer_densities({k: tuple(p.shape) for k, p in params.items()}, 0.9), torch.Generator().manual_seed(0), "exact")
    for t, ours, ref, models in _side_by_side(base, mask, ties="official"):
        for k, p in models[0].named_parameters():
            assert torch.allclose(p, dict(models[1].named_parameters())[k], rtol=1e-5, atol=1e-6), (t, k)
        for k in mask: assert torch.equal(ours.mask[k], ref.mask[k].bool()), (t, k)
    lost = int(mask["fc.weight"].sum()) - int(ours.mask["fc.weight"].sum())
    assert lost > 0 and any(v[0] > v[1] for u in ours.updates for k, v in u.items() if k != "step")  # fewer grown than dropped
    for t, ours, ref, models in _side_by_side(base, mask): pass
    assert all(int(ours.mask[k].sum()) == int(mask[k].sum()) for k in mask)
    with pytest.raises(ValueError, match="ties"): RigL(copy.deepcopy(base), mask, ties="sorted")


def test_cigl_weight_averaging_from_swa_start_inclusive():
    m, cigl, _, log = _train(CigL, epochs=4, dpnum=5, swa_start=0.5)
    assert all(log["counts"]) and all(log["grown_zero"])
    assert cigl.n_avg == 3  # official begin_save: epoch + 1 >= 0.5 * 4, so epochs 2, 3 and 4
    mean = [(a + b + c) / 3 for a, b, c in zip(log["snapshots"][1], log["snapshots"][2], log["snapshots"][3])]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(cigl.avg, mean))
    cigl.finish(None)  # LeNet has no batch norm: the model's weights become the average
    assert all(torch.allclose(p, b, atol=1e-6) for p, b in zip(m.parameters(), mean))
    assert not hasattr(cigl, "scale")  # no inverted-dropout scaling: the official factors cancel


def test_sparse_run_directory_and_resume_after_kill(tmp_path):
    args = ["sparse", "--preset", "digits_lenet", "--method", "cigl", "--sparsity", "0.9", "--budget", "smoke",
            "--set", "epochs=16", "--set", "swa_start=0.5", "--quiet", "--device", "cpu"]
    assert cli(*args, "--out", str(tmp_path / "ref")).returncode == 0
    out = tmp_path / "killed"
    with background_cli(*args, "--out", str(out)) as proc:
        wait_until(lambda: list(out.glob("*/round_00/checkpoint.pt")), proc, "the first checkpoint")
        ck = next(out.glob("*/round_00/checkpoint.pt"))
        wait_until(lambda: torch.load(ck, weights_only=False)["epoch"] >= 9, proc, "epoch 9")  # past the start of weight averaging
        proc.send_signal(signal.SIGKILL); proc.wait(30)
    run = RunDir(next(out.iterdir()))
    assert not run.done(0)
    assert cli(*args, "--out", str(out)).returncode == 0
    ref = RunDir(next((tmp_path / "ref").iterdir()))
    strip = lambda ms: [{k: v for k, v in x.items() if k not in ("seconds", "resumed_at_epochs")} for x in ms]
    assert strip(run.round_metrics()) == strip(ref.round_metrics())
    a, b = torch.load(run.round_dir(0) / "final.pt"), torch.load(ref.round_dir(0) / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    m = run.round_metrics()[0]
    assert m["remaining"] == pytest.approx(10.0, abs=0.05)
    cfg = json.loads((run.path / "config.json").read_text())["config"]
    assert cfg["sparse"]["method"] == "cigl" and cfg["sparse"]["swa_start"] == 0.5


def test_rigl_run_api_and_rerun_is_a_no_op(tmp_path):
    r = run_sparse("digits_lenet", "rigl", 0.95, out_dir=tmp_path, budget="smoke", ctx=RunContext(progress=False))
    stamp = (r.round_dir(0) / "final.pt").stat().st_mtime_ns
    again = run_sparse("digits_lenet", "rigl", 0.95, out_dir=tmp_path, budget="smoke", ctx=RunContext(progress=False))
    assert again.path == r.path and (r.round_dir(0) / "final.pt").stat().st_mtime_ns == stamp
    assert r.round_metrics()[0]["remaining"] == pytest.approx(5.0, abs=0.3)  # the official draw: a binomial count (sd 0.1 points here)
    final = torch.load(r.round_dir(0) / "final.pt")
    nonzero = sum(int((final[k] != 0).sum()) for k in ("fc1.weight", "fc2.weight", "fc.weight"))
    total = sum(final[k].numel() for k in ("fc1.weight", "fc2.weight", "fc.weight"))
    assert nonzero <= r.round_metrics()[0]["remaining"] / 100 * total + 3  # no pruned weight is non-zero


@pytest.mark.parametrize("args,needle", [
    (["--method", "rigl", "--sparsity", "1.5"], "(0, 1)"),
    (["--method", "rigl", "--sparsity", "0"], "(0, 1)"),
    (["--method", "snip", "--sparsity", "0.9"], "invalid choice"),
    (["--method", "cigl", "--sparsity", "0.9", "--set", "delta_t=0"], "delta_t")])
def test_sparse_cli_bad_input(tmp_path, args, needle):
    r = cli("sparse", "--preset", "digits_lenet", *args, "--budget", "smoke", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_reproduce_with_sparsities_draws_the_sparse_figure(tmp_path):
    out = tmp_path / "repro"
    r = cli("reproduce", "--budget", "smoke", "--datasets", "digits", "--strategies", "none", "--seeds", "0",
            "--sparsities", "0.9", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    import pandas as pd
    df = pd.read_csv(out / "results.csv")
    assert set(df[df.kind == "sparse"].method) == {"rigl", "cigl"}
    assert (out / "figures" / "sparse_training.png").exists() and (out / "notebooks" / "sparse_grid_digits.ipynb").exists()


def test_rigl_masks_do_not_depend_on_the_memory_format():
    """Channels-last (the default for convolutional networks on CUDA) changes the weights' strides, not their
    logical order: RigL's drops, grows and resets must give the same masks as in the default format."""
    from lottery_nb.models import ResNet18
    from lottery_nb.training import make_optimizer
    x, y = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (8,))
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        m = ResNet18(widths=(4, 8, 8, 8)).double().to(memory_format=fmt)
        params = prunable_parameters(m)
        mask = random_mask(params, layer_densities({k: tuple(p.shape) for k, p in params.items()}, 0.8), torch.Generator().manual_seed(0))
        opt = make_optimizer(m, "sgd", 0.05, momentum=0.9)
        rigl = RigL(m, mask, delta_t=2); rigl.attach(opt, range(12), 1)
        assert m.conv1.weight.is_contiguous(memory_format=fmt)
        for _ in range(12):
            opt.zero_grad(); nn.functional.cross_entropy(m(x), y).backward()
            rigl.before_step(); opt.step(); rigl.after_step()
        assert m.conv1.weight.is_contiguous(memory_format=fmt) and len(rigl.updates) == 4
        results.append((rigl.mask, [p.detach().clone() for p in m.parameters()]))
    (m1, w1), (m2, w2) = results
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(w1, w2))


def test_sparse_command_reports_ece_at_10_bins_beside_15(tmp_path):
    "CigL's paper reports ECE with 10 bins: the sparse command prints it beside ours (15), as every round's metrics.json records it."
    r = cli("sparse", "--preset", "digits_lenet", "--method", "rigl", "--sparsity", "0.9", "--budget", "smoke", "--quiet",
            "--device", "cpu", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    header, row = r.stdout.splitlines()[:2]
    m = json.loads(next(tmp_path.glob("*/round_00/metrics.json")).read_text())
    values = dict(zip(header.split(), row.split()))
    assert float(values["ece_10"]) == pytest.approx(m["ece_10"], abs=1e-4) and float(values["ece"]) == pytest.approx(m["ece"], abs=1e-4)


# CigL's CIFAR-10 setup, checked against transcriptions of its official code (the preset itself needs a GPU to train)

def test_step_schedule_is_the_official_warmup_then_step_lr():
    """Official main.py: `scheduler = lr_scheduler if epoch >= warmup_steps / len(train_loader) else warmup_scheduler`, stepped
    after every step; WarmUpLR: base_lr * last_epoch / total_iters; StepLR(decay_frequency, decay_factor) made with the optimiser."""
    from lottery_nb.training import make_step_scheduler
    class WarmUpLR(torch.optim.lr_scheduler._LRScheduler):  # sparselearning/utils/warmup_scheduler.py
        def __init__(self, optimizer, total_iters, last_epoch=-1):
            self.total_iters = total_iters
            super().__init__(optimizer, last_epoch)
        def get_lr(self): return [base_lr * self.last_epoch / (self.total_iters + 1e-8) for base_lr in self.base_lrs]
    steps_per_epoch, warmup, every, epochs = 8, 16, 20, 12  # warm-up of 2 epochs, as 1,760 steps are 5 epochs of 352
    lrs = {}
    for kind in ("official", "ours"):
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        if kind == "official":
            step_lr, warm = torch.optim.lr_scheduler.StepLR(opt, every, gamma=0.5), WarmUpLR(opt, warmup)
        else: ours = make_step_scheduler(opt, warmup, every, 0.5)
        lrs[kind] = []
        for epoch in range(epochs):
            for _ in range(steps_per_epoch):
                lrs[kind].append(opt.param_groups[0]["lr"]); opt.step()
                if kind == "official": (step_lr if epoch >= warmup / steps_per_epoch else warm).step()
                else: ours.step()
    assert lrs["ours"] == pytest.approx(lrs["official"], abs=1e-9)
    assert lrs["ours"][0] == 0 and lrs["ours"][warmup] == pytest.approx(0.1) and lrs["ours"][warmup + every] == pytest.approx(0.05)


def test_weight_decay_groups_are_the_official_ones():
    "Official _add_weight_decay: a parameter with one dimension (batch norm, bias) goes to the group without decay; Nesterov momentum."
    from lottery_nb.models import get_model
    from lottery_nb.training import make_optimizer
    model = get_model("resnet50")
    no_decay = [p for _, p in model.named_parameters() if len(p.shape) == 1]
    decay = [p for _, p in model.named_parameters() if len(p.shape) != 1]
    opt = make_optimizer(model, "sgd", 0.1, 0.9, 1e-4, nesterov=True, decay_bn_bias=False)
    (g1, g2) = opt.param_groups
    assert [id(p) for p in g1["params"]] == [id(p) for p in decay] and g1["weight_decay"] == 1e-4
    assert [id(p) for p in g2["params"]] == [id(p) for p in no_decay] and g2["weight_decay"] == 0.0
    assert g1["nesterov"] and g1["momentum"] == 0.9
    plain = make_optimizer(model, "sgd", 0.1, 0.9, 1e-4)  # the other presets: one group, decay everywhere, no Nesterov
    assert len(plain.param_groups) == 1 and not plain.param_groups[0]["nesterov"]


def test_validation_split_holds_out_the_last_tenth():
    "Official data.py without fixed_shuffle: index_map = arange(n); train = the first floor(0.9 n), validation the rest."
    from lottery_nb.presets import get_preset
    from lottery_nb.runs import run_data
    full, _ = run_data(get_preset("digits_lenet"))
    train, test = run_data(get_preset("digits_lenet", validation_split=0.1))
    n = math.floor(0.9 * len(full))
    assert len(train) == n and torch.equal(train.x, full.x[:n]) and torch.equal(train.y, full.y[:n]) and len(test) > 0


def test_official_init_is_the_official_resnet_init():
    "Official models/resnet.py: kaiming_normal_(fan_out, relu) on every Conv2d, BatchNorm2d at 1 and 0 (in module order), zero_init_residual."
    from lottery_nb.models import Bottleneck, get_model, official_init
    torch.manual_seed(0); ours = official_init(get_model("resnet50"))
    torch.manual_seed(0); ref = get_model("resnet50")
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.Conv2d): nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)): nn.init.constant_(m.weight, 1); nn.init.constant_(m.bias, 0)
        for m in ref.modules():
            if isinstance(m, Bottleneck): nn.init.constant_(m.bn3.weight, 0)  # residual_function[-1]: the block's last batch norm
    a, b = ours.state_dict(), ref.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_cigl_preset_is_the_official_setup():
    from lottery_nb.sparse import SparseRun, sparse_config
    cfg = sparse_config("cifar10_resnet50", "cigl", 0.8, budget="paper")
    p = cfg.preset
    assert (p.lr, p.momentum, p.weight_decay, p.batch_size, p.epochs, p.gamma) == (0.1, 0.9, 1e-4, 128, 250, 0.5)
    assert (p.nesterov, p.decay_bn_bias, p.warmup_steps, p.decay_every_steps, p.validation_split, p.init) == (True, False, 1760, 20_000, 0.1, "official")
    assert p.milestones == () and cfg.warmup_epochs == 0 and (cfg.delta_t, cfg.drop_fraction, cfg.dpnum) == (100, 0.3, 100)
    steps = p.epochs * math.ceil(45_000 / p.batch_size)  # 352 batches an epoch
    assert steps == 88_000 and cfg.end_fraction * steps == pytest.approx(65_918)  # conf/specific: end_when 65918
    assert cfg.swa_start * p.epochs == 200  # begin_save


@pytest.mark.parametrize("with_column", [True, False])
def test_sparse_view_gives_one_point_per_sparsity_whatever_each_seed_drew(with_column):
    "With the official Bernoulli draw the weights remaining differ by seed (9.91, 10.04, ...): the figure still averages the seeds at each sparsity asked for (from the column, or from the run's name in tables written before it)."
    import pandas as pd
    from lottery_nb.figures import sparse_figure
    from lottery_nb.tables import sparse_view
    rows = [dict(dataset="mnist", preset="mnist_lenet", strategy="none", kind="sparse", method=m, seed=s, remaining=100 * (1 - sp) + 0.1 * (s - 1),
                 run=f"mnist_lenet-{m}-sparsity{sp:g}-seed{s}-abc", target_sparsity=sp, accuracy=0.9, ece=0.02, nll=0.3, brier=0.1)
            for m in ("rigl", "cigl") for sp in (0.9, 0.95) for s in (0, 1, 2)]
    df = pd.DataFrame(rows)
    if not with_column: df = df.drop(columns="target_sparsity")
    v = sparse_view(df)
    assert sorted(v["round"].unique()) == [90.0, 95.0]
    fig = sparse_figure(df)
    line = next(l for l in fig.axes[0].lines if l.get_label() == "RigL")
    assert sorted(line.get_xdata()) == pytest.approx([5.0, 10.0])  # one point per sparsity, at the seeds' mean remaining


def test_summary_keeps_sparse_runs_apart_from_the_tickets():
    "A sparse run's one round is not a ticket's dense round: summary.md gives the tickets their rows and RigL/CigL rows of their own."
    import pandas as pd
    from lottery_nb.tables import summary_table
    tickets = [dict(dataset="digits", preset="digits_lenet", strategy="none", kind="lottery", method="imp", seed=s, round=r, remaining=100 * 0.8**r,
                    run=f"digits_lenet-none-seed{s}-abc", accuracy=0.95, ece=0.02, nll=0.2, brier=0.08) for s in (0, 1) for r in range(3)]
    sparse = [dict(dataset="digits", preset="digits_lenet", strategy="none", kind="sparse", method=m, seed=s, round=0, remaining=10.0 + 0.1 * s, target_sparsity=0.9,
                   run=f"digits_lenet-{m}-sparsity0.9-seed{s}-abc", accuracy=0.5, ece=0.3, nll=1.0, brier=0.5) for m in ("rigl", "cigl") for s in (0, 1)]
    t = summary_table(pd.DataFrame(tickets + sparse)).set_index(["round", "strategy"])
    assert t.loc[("dense", "none"), "% remaining"] == 100.0 and t.loc[("dense", "none"), "accuracy"] == "0.9500 ± 0.0000"
    assert t.loc[("round 2", "none"), "seeds"] == 2
    assert t.loc[("sparse 90%", "rigl"), "accuracy"] == "0.5000 ± 0.0000" and t.loc[("sparse 90%", "cigl"), "% remaining"] == 10.05
    assert len(t) == 4
