"""What is particular to each architecture (the contract every one fulfils is checked in test_contracts.py)."""

from __future__ import annotations

import pytest
import torch

from gkp.application.catalog import build_model
from gkp.foundation.errors import ConfigError


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
