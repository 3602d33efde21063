"""Dependency tables traced with torch.fx (``gkp.mechanisms.pruning.tracing``): equal to the written tables
of every registered architecture, right on torchvision's models, and clear about what it cannot trace."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from gkp.application.catalog import MODELS, build_model
from gkp.foundation.contracts import FilterGroup
from gkp.foundation.errors import PruningError
from gkp.mechanisms.pruning.dependencies import SCOPES
from gkp.mechanisms.pruning.tracing import trace_tables


def registered_models():
    """Every registered architecture, with each stem where it has two."""
    for name in MODELS.names():
        yield pytest.param(name, {}, id=name)
    for name in ("resnet50", "resnet101"):
        yield pytest.param(name, {"stem": "small"}, id=f"{name}-small")


@pytest.mark.parametrize("arch, args", registered_models())
def test_the_traced_tables_equal_the_written_ones_of_every_registered_architecture(arch, args):
    model = build_model(arch, num_classes=10, **args)
    side = MODELS.get(arch).input_size if not args else 64
    tables = trace_tables(model, torch.rand(1, 3, side, side))
    assert list(tables.filter_groups) == model.filter_pruning_groups()
    for scope in SCOPES:
        assert list(tables.targets[scope]) == model.grouped_kernel_targets(scope), scope


def test_resnet18_prunes_the_inner_conv_of_each_block_and_says_why_not_the_others():
    tables = trace_tables(torchvision.models.resnet18(num_classes=10), torch.rand(1, 3, 32, 32))
    assert [g.conv for g in tables.filter_groups] == [f"layer{s}.{i}.conv1" for s in (1, 2, 3, 4) for i in (0, 1)]
    assert tables.filter_groups[0] == FilterGroup("layer1.0.conv1", "layer1.0.bn1", ("layer1.0.conv2",))
    assert "add" in tables.why["layer1.0.conv2"] and "add" in tables.why["conv1"]
    assert "layer2.0.downsample.0" not in tables.targets["all"]  # a shortcut's projection
    assert "conv1" not in tables.targets["3x3"]  # reads the image
    assert len(tables.targets["3x3"]) == 16


def test_vgg16_bn_keeps_the_conv_whose_channels_a_flatten_of_49_positions_spreads():
    tables = trace_tables(torchvision.models.vgg16_bn(num_classes=10), torch.rand(1, 3, 32, 32))
    assert len(tables.filter_groups) == 12
    assert tables.filter_groups[-1] == FilterGroup("features.37", "features.38", ("features.40",))
    assert "flatten" in tables.why["features.40"]


def test_mobilenet_v2_shrinks_depthwise_convs_with_the_conv_before_them():
    tables = trace_tables(torchvision.models.mobilenet_v2(num_classes=10), torch.rand(1, 3, 32, 32))
    expand = next(g for g in tables.filter_groups if g.conv == "features.2.conv.0.0")
    assert expand == FilterGroup(
        "features.2.conv.0.0",
        "features.2.conv.0.1",
        ("features.2.conv.2",),
        ("features.2.conv.1.0", "features.2.conv.1.1"),
    )
    assert "add" in tables.why["features.3.conv.2"]  # a projection into a residual sum
    assert tables.targets["3x3"] == ()  # its only ungrouped 3x3 conv reads the image


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x  # control flow on a tensor's value


class WithBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.odd = DataDependent()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.odd(torch.relu(self.bn(self.stem(x))))
        return self.fc(torch.relu(self.bn2(self.conv(x))).mean((2, 3)))


def test_a_layer_torch_fx_cannot_trace_is_named_and_can_be_kept_whole():
    model, x = WithBranch(), torch.rand(2, 3, 16, 16)
    with pytest.raises(PruningError, match=r"cannot trace 'odd'.*leave_unpruned=\['odd'\]"):
        trace_tables(model, x)
    tables = trace_tables(model, x, leave_unpruned=["odd"])
    assert [g.conv for g in tables.filter_groups] == ["conv"]  # its consumer is the linear layer
    assert "'odd' (DataDependent) (kept whole)" in tables.why["stem"]
    assert tables.targets["3x3"] == ("conv",)  # odd.conv is inside a layer kept whole
    with pytest.raises(PruningError, match="leave_unpruned names nope"):
        trace_tables(model, x, leave_unpruned=["nope"])


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.twice = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.twice(self.twice(self.bn(self.conv(x)))).mean((2, 3)))


class MixedView(Twice):
    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).permute(0, 2, 3, 1).reshape(-1, 4))  # positions become samples


def test_a_conv_read_by_a_layer_called_twice_or_through_a_view_that_mixes_positions_keeps_its_filters():
    x = torch.rand(1, 3, 2, 2)
    twice = trace_tables(Twice(), x)
    assert twice.filter_groups == () and "called more than once" in twice.why["conv"]
    mixed = trace_tables(MixedView(), x)
    assert mixed.filter_groups == () and "permute" in mixed.why["conv"]
