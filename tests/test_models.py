import pytest
import torch
from torch import nn

from lottery_nb.models import MODELS, count_parameters, get_model, prunable_parameters, pruning_exclusions


@pytest.mark.parametrize("name,expected", [("lenet_300_100", 266_610), ("resnet18", 11_173_962), ("vgg19", 20_035_018), ("resnet50", 23_520_842)])
def test_parameter_counts(name, expected):
    assert count_parameters(get_model(name)) == expected


def test_lenet_on_digits_has_64_inputs():
    m = get_model("lenet_300_100", input_shape=(1, 8, 8))
    assert m.fc1.in_features == 64 and count_parameters(m) == 266_610 - (784 - 64) * 300


@pytest.mark.parametrize("name,shape", [("lenet_300_100", (1, 28, 28)), ("resnet18", (3, 32, 32)), ("vgg19", (3, 32, 32))])
def test_forward_and_num_classes(name, shape):
    m = get_model(name, num_classes=7).eval()
    assert m(torch.randn(2, *shape)).shape == (2, 7)


def test_prunable_parameters_are_linear_and_conv_weights_only():
    for name in MODELS:
        m = get_model(name)
        prunable = prunable_parameters(m)
        named = dict(m.named_parameters())
        assert all(named[k] is v for k, v in prunable.items())
        assert all(v.ndim in (2, 4) for v in prunable.values())  # no biases, no batch norm
        bn = {f"{n}.weight" for n, mod in m.named_modules() if isinstance(mod, nn.BatchNorm2d)}
        assert not bn & set(prunable)
        assert set(pruning_exclusions(m)) <= set(prunable)


def test_paper_exclusions():
    assert pruning_exclusions(get_model("lenet_300_100")) == ()
    r = get_model("resnet18")
    ex = pruning_exclusions(r)
    assert "fc.weight" in ex and sum("downsample" in k for k in ex) == 3
    assert all(dict(r.named_parameters())[k].shape[-2:] == (1, 1) for k in ex if "downsample" in k)
    assert pruning_exclusions(get_model("vgg19")) == ("fc.weight",)


def test_dropout_places_and_validation():
    m = get_model("lenet_300_100", dropout=0.3)
    assert [type(x).__name__ for x in m.children()] == ["Flatten", "Linear", "Dropout", "Linear", "Dropout", "Linear"]
    for name in ("resnet18", "vgg19"):
        assert isinstance(get_model(name, dropout=0.3).drop, nn.Dropout)
        assert isinstance(get_model(name).drop, nn.Identity)
    with pytest.raises(ValueError, match="dropout"): get_model("lenet_300_100", dropout=1.0)
    with pytest.raises(ValueError, match="lenet_300_100"): get_model("alexnet")


def test_cpu_dropout_matches_torch_dropout_in_distribution():
    """The models' CPU dropout draws its masks from torch.rand; nn.Dropout from bernoulli_. Same keep rate, same
    scaling, same mean and variance of the output, and the models use it wherever they have dropout."""
    from lottery_nb.models import Dropout
    torch.manual_seed(0)
    x = torch.rand(2000, 500) + 0.5
    ours, ref = Dropout(0.3)(x), nn.Dropout(0.3)(x)
    for a in (ours, ref): assert abs((a > 0).float().mean().item() - 0.7) < 0.002
    assert torch.allclose(ours[ours > 0], (x / 0.7)[ours > 0])
    assert abs(ours.mean().item() - ref.mean().item()) < 0.005 and abs(ours.var().item() - ref.var().item()) < 0.01
    for name in ("lenet_300_100", "resnet18", "vgg19", "resnet50"):
        drops = [m for m in get_model(name, dropout=0.2).modules() if isinstance(m, nn.Dropout)]
        assert drops and all(type(m) is Dropout for m in drops), name
