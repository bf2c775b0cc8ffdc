"""Sparse training: ERK/uniform densities, RigL's and CigL's invariants on real training steps, weight averaging,
resumable sparse runs, the CLI and the reproduction's sparse figure."""
import json
import signal

import pytest
import torch
from torch import nn

from helpers import background_cli, cli, wait_until
from lottery_nb.data import BatchLoader, load_in_memory
from lottery_nb.runs import RunContext, RunDir
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
    mask = random_mask(params, d, torch.Generator().manual_seed(0))
    assert all(int(mask[k].sum()) == round(d[k] * n[k]) for k in d)
    assert abs(sum(int(m.sum()) for m in mask.values()) - (1 - sparsity) * sum(n.values())) <= len(d)


def test_uniform_and_errors():
    shapes = {"a": (300, 784), "b": (100, 300), "c": (10, 100)}
    assert all(v == pytest.approx(0.3) for v in layer_densities(shapes, 0.7, "uniform").values())
    with pytest.raises(ValueError, match=r"\(0, 1\)"): layer_densities(shapes, 1.0)
    with pytest.raises(ValueError, match="distribution"): layer_densities(shapes, 0.5, "snip")
    with pytest.raises(ValueError, match="cannot be reached"): layer_densities(shapes, 0.3, dense=["a"])


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
    log = {"snapshots": [], "unchanged": [], "grown_zero": [], "counts": [], "n_updates": 0}
    ce = lambda model, x, y: nn.functional.cross_entropy(model(x), y)
    def after_step():
        n_before = len(method.updates)
        old_mask = {k: v.clone() for k, v in method.mask.items()}
        if isinstance(method, CigL):
            dropped = {k: (~method.keep[k]) & method.mask[k] for k in method.params}
            before = {k: method.saved[k].clone() for k in method.params}
        method.after_step()
        if isinstance(method, CigL):  # (a mask update in this step may still drop or regrow some: compare the others)
            stay = {k: dropped[k] & method.mask[k] & old_mask[k] for k in dropped}
            log["unchanged"].append(all(torch.equal(w[stay[k]], before[k][stay[k]]) for k, w in method.params.items()))
            log["n_dropped"] = log.get("n_dropped", 0) + sum(int(v.sum()) for v in stay.values())
        log["counts"].append(all(int(method.mask[k].sum()) == counts[k] for k in counts))
        if len(method.updates) > n_before:
            log["n_updates"] += 1
            for k, w in method.params.items():
                grown = method.mask[k] & ~old_mask[k]
                log["grown_zero"].append(bool((w[grown] == 0).all()) and all(
                    (b[grown] == 0).all() for b in opt.state[w].values() if torch.is_tensor(b) and b.shape == w.shape))
    def after_epoch(e, row):
        method.after_epoch(e)  # every RoundMethod has the hook (a no-op for RigL)
        log["snapshots"].append([p.detach().clone() for p in m.parameters()])
    fit(m, dl, epochs, opt, loss_fn=method.wrap_loss(ce), before_step=method.before_step, after_step=after_step, after_epoch=after_epoch,
        progress=False)
    return m, method, mask, log


def test_rigl_invariants():
    m, rigl, mask0, log = _train(RigL)
    steps = 3 * 23
    expected = [s for s in range(1, steps + 1) if s % 7 == 0 and s < 0.75 * steps]
    assert [u["step"] for u in rigl.updates] == expected and log["n_updates"] == len(expected)
    assert all(log["counts"])  # exact sparsity of every layer after every step and update
    assert all(log["grown_zero"])  # grown weights and their momentum start at zero
    for u in rigl.updates:
        for k, v in u.items():
            if k != "step": assert v[0] == v[1] > 0  # dropped == grown
    moved = sum(int((rigl.mask[k] ^ mask0[k]).sum()) for k in mask0)
    assert moved > 0
    assert rigl.drop_fraction_at(0) == pytest.approx(0.3) and rigl.drop_fraction_at(0.75 * steps) == pytest.approx(0.0, abs=1e-12)


def test_cigl_random_mask_and_weight_averaging():
    m, cigl, _, log = _train(CigL, epochs=4, dpnum=5, swa_start=0.5)
    assert len(log["unchanged"]) == 4 * 23 and all(log["unchanged"])  # randomly dropped weights unchanged by each step
    assert log["n_dropped"] > 1000  # and there were many of them (1 in 5 active weights per step)
    assert all(log["counts"]) and all(log["grown_zero"])
    assert cigl.n_avg == 2  # the epochs after half of training: 3 and 4
    mean = [(a + b) / 2 for a, b in zip(log["snapshots"][2], log["snapshots"][3])]
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(cigl.avg, mean))
    cigl.finish(None)  # LeNet has no batch norm: the model's weights become the average
    assert all(torch.allclose(p, b, atol=1e-7) for p, b in zip(m.parameters(), mean))
    # inverted-dropout scaling: the forward used w * keep * dpnum/(dpnum-1)
    assert cigl.scale == pytest.approx(5 / 4)


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
    assert r.round_metrics()[0]["remaining"] == pytest.approx(5.0, abs=0.05)
    final = torch.load(r.round_dir(0) / "final.pt")
    nonzero = sum(int((final[k] != 0).sum()) for k in ("fc1.weight", "fc2.weight", "fc.weight"))
    total = sum(final[k].numel() for k in ("fc1.weight", "fc2.weight", "fc.weight"))
    assert nonzero <= 0.05 * total + 3


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
