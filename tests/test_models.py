"""Every registered architecture builds, runs forward and backward, and takes [0, 1] images."""

from __future__ import annotations

import pytest
import torch

from gkp.catalog import MODELS, build_model
from gkp.contracts import model_spec
from gkp.errors import ConfigError

SIDES = {"resnet50": 64, "resnet101": 64}


@pytest.mark.parametrize("arch", MODELS.names())
def test_every_arch_runs_forward_and_backward(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7)
    side = SIDES.get(arch, 32)
    x = torch.rand(2, 3, side, side)
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model_spec(model).arch == arch and model_spec(model).args == {"num_classes": 7}


@pytest.mark.parametrize("arch", MODELS.names())
def test_every_arch_declares_its_filter_groups(arch):
    model = build_model(arch)
    modules = dict(model.named_modules())
    groups = model.filter_pruning_groups()
    assert groups
    for group in groups:
        assert isinstance(modules[group.conv], torch.nn.Conv2d)
        assert isinstance(modules[group.bn], torch.nn.BatchNorm2d)
        assert all(name in modules for name in group.consumers)


def test_cifar_resnet_module_names_and_depths():
    model = build_model("resnet20")
    names = {name for name, _ in model.named_modules()}
    assert {"conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer3.2.bn2", "fc"} <= names
    assert len(model.layer1) == 3
    assert len(build_model("resnet110").layer2) == 18


def test_option_a_shortcut_appends_zero_channels():
    block = build_model("resnet20").layer2[0]
    x = torch.randn(1, 16, 8, 8)
    shortcut = block.shortcut(x)
    assert shortcut.shape == (1, 32, 4, 4)
    assert torch.equal(shortcut[:, :16], x[:, :, ::2, ::2]) and not shortcut[:, 16:].any()


def test_normalisation_is_inside_the_model():
    model = build_model("resnet20", mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).eval()
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(model.normalize(x), (x - 0.5) / 0.25)
    assert "normalize.mean" in model.state_dict()


def test_bottleneck_stems():
    small = build_model("resnet50", stem="small")
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    assert build_model("resnet50").conv1.kernel_size == (7, 7)


def test_unknown_arch_and_argument_name_the_choices():
    with pytest.raises(ConfigError, match="valid choices: .*resnet20"):
        build_model("resnet21")
    with pytest.raises(ConfigError, match="valid arguments: .*num_classes"):
        build_model("resnet20", widht=3)


@pytest.mark.parametrize("arch", MODELS.names())
@pytest.mark.parametrize("scope", ["3x3", "all"])
def test_every_arch_names_its_grouped_kernel_targets(arch, scope):
    model = build_model(arch)
    targets = model.grouped_kernel_targets(scope)
    assert targets and all(isinstance(model.get_submodule(t), torch.nn.Conv2d) for t in targets)
    if scope == "3x3":
        assert all(model.get_submodule(t).kernel_size == (3, 3) for t in targets)
