"""OTOv2's DHSPG (baselines/otov2.py) against small readable versions written from its code on hand-made
inputs: the partition, lambda_g with its midpoint rule, the half-space projection, zero groups that stay
zero, plain steps once the target is met; then end to end on digits, where the masked model equals the
physical one and the group sparsity is exactly the target."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from baselines.otov2 import DHSPG, OTOv2Params, group_lambdas, partition, rows, zero_invariant_groups
from gkp.application.catalog import build_model
from gkp.foundation.contracts import FilterGroup, Recipe


def readable_lambda(x: list[float], d: list[float], penalised: bool, lmbda: float) -> float:
    """The code's lambda_g for one group, line by line."""
    inner = sum(a * b for a, b in zip(x, d, strict=True))
    if not penalised or inner >= 0:
        return lmbda
    x_norm, d_norm = math.sqrt(sum(a * a for a in x)), math.sqrt(sum(b * b for b in d))
    lower, upper = -inner / x_norm, -(d_norm**2) * x_norm / inner
    value = min(max(2 * lower, lmbda), 10 * lmbda)
    return (upper + lower) / 2 if value >= upper else value


def test_lambda_g_is_clipped_and_takes_the_midpoint_where_it_reaches_the_upper_bound():
    lmbda = 0.1
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    d = torch.tensor([[-0.01, 0.0], [-0.3, 0.0], [-0.3, 5.0], [0.5, 0.0], [-0.3, 0.0]], dtype=torch.float64)
    penalised = torch.tensor([True, True, True, True, False])
    got = group_lambdas(x, d, penalised, lmbda).tolist()
    expected = [
        readable_lambda(a, b, p, lmbda) for a, b, p in zip(x.tolist(), d.tolist(), penalised.tolist(), strict=True)
    ]
    assert got == pytest.approx(expected, rel=1e-12)
    # d along -x: both bounds are ||d||, so the midpoint (rows 0, 1); d across x: 2 x 0.3 within [0.1, 1],
    # below the upper bound 83.6 (row 2); <x, d> > 0 or unpenalised: lambda (rows 3, 4)
    assert got[:3] == pytest.approx([0.01, 0.3, 0.6]) and got[3:] == [lmbda, lmbda]
    tight = group_lambdas(torch.tensor([[1.0, 0.0]]), torch.tensor([[-0.3, 0.1]]), torch.tensor([True]), 1.0)
    lower, upper = 0.3, (0.09 + 0.01) * 1.0 / 0.3  # clip(0.6, 1, 10) = 1 >= upper 0.333: the midpoint
    assert float(tight) == pytest.approx((lower + upper) / 2)


def test_the_partition_penalises_the_top_scores_and_leaves_each_layer_one_group():
    """Scores 0.5 normalise(cos(-x, -d)) + 0.5 normalise(size / ||x||): the top floor(N x min(rate +
    tolerance, 0.999)) are penalised, but a layer all of whose groups are chosen keeps its lowest one."""
    torch.manual_seed(0)
    xs = [torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)]
    ds = [torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)]
    x, d = torch.cat(xs), torch.cat(ds)
    cos = torch.tensor([float(torch.dot(-a, -b) / max(a.norm() * b.norm(), 1e-8)) for a, b in zip(x, d, strict=True)])
    inverse = torch.tensor([1.0 / (float(a.norm()) / 3 + 1e-6) for a in x])
    scores = 0.5 * cos / cos.norm() + 0.5 * inverse / inverse.norm()
    for rate in (0.3, 0.5, 0.95):
        count = int(6 * min(rate + 0.05, 0.999))
        top = set(torch.argsort(-scores, stable=True)[:count].tolist())
        got = torch.cat(partition(xs, ds, rate, 0.05)).tolist()
        expected = [i in top for i in range(6)]
        for start, size in ((0, 4), (4, 2)):  # a layer keeps its lowest-scoring group
            if all(expected[start : start + size]):
                expected[start + int(torch.argmin(scores[start : start + size]))] = False
        assert got == expected, rate


class OneBlock(nn.Module):
    """conv -> bn -> relu -> conv2 -> bn2 -> mean; one removable conv, three groups."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn(self.conv(x))))).mean(dim=(2, 3))

    def filter_pruning_groups(self):
        return [FilterGroup("conv", "bn", ("conv2",))]


def hand_made(grads: list[float], epsilon: float = 0.95, tolerance: float = 0.0) -> tuple[OneBlock, DHSPG]:
    """Groups x = (w, 1, 0) with w = 1, 2, 3 and gradients (g, 0, 0), the target one group of three (rate
    1/3), lambda 1, lr 0.1; every other gradient zero."""
    model = OneBlock()
    with torch.no_grad():
        model.conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1))
        model.bn.weight.fill_(1.0)
        model.bn.bias.zero_()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.conv.weight.grad.copy_(torch.tensor(grads).view(3, 1, 1, 1))
    params = OTOv2Params(start_epoch=0, epsilon=epsilon, lmbda=1.0, tolerance=tolerance)
    optimizer = DHSPG(model, Recipe(epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0), 1 / 3, params)
    return model, optimizer


def test_before_pruning_starts_a_step_is_plain_sgd():
    model, optimizer = hand_made([1.0, 1.0, 1.0])
    optimizer.step()
    assert model.conv.weight.flatten().tolist() == pytest.approx([0.9, 1.9, 2.9]) and not optimizer.partitioned


def test_a_penalised_group_moves_toward_zero_and_the_half_space_projection_zeroes_it():
    """Tolerance 0: one group penalised, the highest score: group 0, the smallest, whose gradient points
    along it (cos(-x, -d) 0.71; the others' are 0). Its step x^ = x - 0.1 d - 0.1 x / ||x|| (lambda_g =
    lambda: <x, d> > 0) has <x^, x> = 1.36 < 0.95 ||x||^2 = 1.9, so it is zeroed, and stays so."""
    model, optimizer = hand_made([5.0, 0.0, 0.0])
    optimizer.pruning = True
    x, d = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([5.0, 0.0, 0.0])
    moved = x - 0.1 * d - 0.1 * x / x.norm()
    assert float(moved @ x) < 0.95 * float(x @ x)
    optimizer.step()
    assert optimizer.state[model.conv.weight]["penalised"].tolist() == [True, False, False]
    assert model.conv.weight.flatten().tolist() == [0.0, 2.0, 3.0] and model.bn.weight.tolist() == [0.0, 1.0, 1.0]
    assert optimizer.group_sparsity() == pytest.approx(1 / 3)
    for p in model.parameters():
        p.grad = torch.full_like(p, -1.0)
    optimizer.step()  # the target is met: plain steps, and the zero group stays zero
    assert model.conv.weight.flatten().tolist() == pytest.approx([0.0, 2.1, 3.1])
    assert model.bn.weight.tolist() == pytest.approx([0.0, 1.1, 1.1])
    assert model.bn.bias.tolist() == pytest.approx([0.0, 0.1, 0.1])


def test_a_penalised_group_not_across_the_half_space_only_shrinks():
    model, optimizer = hand_made([0.0, 0.0, 0.0], epsilon=0.5)
    optimizer.pruning = True
    optimizer.step()  # d = 0: every cosine 0, the smallest group (w = 1) scores highest
    x = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    shrunk = x - 0.1 * 1.0 * x / x.norm()  # lambda_g = lambda: <x, d> = 0; <x^, x> = 1.86 > 0.5 x 2
    assert model.conv.weight.flatten().tolist() == pytest.approx([float(shrunk[0]), 2.0, 3.0])
    assert model.bn.weight.tolist() == pytest.approx([float(shrunk[1]), 1.0, 1.0])


def test_one_step_never_zeroes_more_groups_than_the_target_needs():
    """Tolerance 0.999: groups 0 and 1 penalised (the layer keeps group 2), both across the half-space
    (<x^, x> / ||x||^2 = -0.07 and 0.16); the target is one group, so only the deeper, group 0, is zeroed."""
    model, optimizer = hand_made([20.0, 20.0, 20.0], tolerance=0.999)
    optimizer.pruning = True
    optimizer.step()
    assert optimizer.state[model.conv.weight]["penalised"].tolist() == [True, True, False]
    weights = model.conv.weight.flatten().tolist()
    assert weights[0] == 0 and weights[1] == pytest.approx(-0.0894, abs=1e-4) and weights[2] == pytest.approx(1.0)
    assert optimizer.group_sparsity() == pytest.approx(1 / 3)


def test_the_groups_of_a_resnet_are_its_inner_channels():
    model = build_model("resnet20")
    layers = zero_invariant_groups(model)
    assert len(layers) == 9 and sum(len(layer[0]) for layer in layers) == 3 * (16 + 32 + 64)
    assert layers[0][0] is model.layer1[0].conv1.weight and layers[0][1] is model.layer1[0].bn1.weight
    assert rows(layers[0]).shape == (16, 16 * 9 + 2)


@pytest.mark.parametrize("during", ["train", "finetune"])
def test_otov2_meets_its_group_sparsity_exactly_and_the_physical_model_equals_the_trained_one(tmp_path, during):
    """From scratch (the prune stage trains) or post-train (from the dense model): ResNet-8's 112 inner
    channels, rate 0.5, so exactly 56 are cut; the trained model and the one surgery builds from the plan
    give the same logits."""
    from gkp.application.config import build_experiment
    from gkp.application.pipeline.run import run_experiment

    from conftest import tiny_config

    section = {"epochs": 3, "momentum": 0.0}
    prune = {"method": "otov2", "rate": 0.5, "during": during, "params": {"start_epoch": 1, "lmbda": 10.0}}
    stages = ["prune", "eval"] if during == "train" else ["train", "prune", "eval"]
    config = tiny_config(stages=stages, prune=prune, **{during: section})
    run_experiment(build_experiment(config), out=tmp_path)
    plan = json.loads((tmp_path / "plan.json").read_text())
    kept = {name: len(layer["kept"]) for name, layer in plan["layers"].items()}
    widths = {"layer1.0.conv1": 16, "layer2.0.conv1": 32, "layer3.0.conv1": 64}
    assert sum(widths[name] - kept.get(name, widths[name]) for name in widths) == 56
    assert plan["metadata"]["masked_max_logit_difference"] <= 1e-5


def test_otov2_refuses_settings_it_cannot_honour():
    from gkp.application.config import build_experiment
    from gkp.application.pipeline.run import check_experiment
    from gkp.foundation.errors import ConfigError, PruningError

    from conftest import tiny_config

    def config(**changes):
        sections = {"prune": {"method": "otov2", "rate": 0.5, "params": {"start_epoch": 1}}, "train": {"epochs": 3}}
        return check_experiment(build_experiment(tiny_config(stages=["prune"], **{**sections, **changes})))

    with pytest.raises(ConfigError, match="its own optimizer, DHSPG .* remove optimizer \\(adamw\\)"):
        config(train={"epochs": 3, "optimizer": {"name": "adamw"}})
    with pytest.raises(ConfigError, match="start_epoch: 5 leaves no epoch of the 3"):
        config(prune={"method": "otov2", "rate": 0.5, "params": {"start_epoch": 5}})
    with pytest.raises(PruningError, match="each of the 3 layers keeps one"):
        config(prune={"method": "otov2", "rate": 0.99})


@pytest.mark.slow
def test_otov2_post_train_prunes_the_authors_resnet20_on_real_cifar_images(tmp_path, shared, authors_checkpoint):
    """The authors' trained ResNet-20 and 4,660 real CIFAR-10 images (4,000 to train on, 660 held out):
    four epochs of DHSPG from the first step (lambda 1, a thousand times the default, so that four epochs
    reach the target) cut exactly half of its 336 inner channels, stay far above chance (10%) on the
    held-out images (0.80 measured), and the physical model equals the trained one."""
    from gkp.application.config import build_experiment
    from gkp.application.pipeline.run import run_experiment

    from conftest import shared_cifar_npz

    config = {
        "name": "otov2",
        "device": "cpu",
        "stages": ["prune", "eval"],
        "model": {"checkpoint": str(authors_checkpoint)},
        "data": shared_cifar_npz(shared, tmp_path),
        "prune": {"method": "otov2", "rate": 0.5, "during": "finetune", "params": {"start_epoch": 0, "lmbda": 1.0}},
        "finetune": {"epochs": 4, "lr": 0.01, "momentum": 0.0, "schedule": "cosine", "eval_every": 0},
        "eval": {"models": ["masked", "final"]},
    }
    results = run_experiment(build_experiment(config), out=tmp_path / "run")
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    model = build_model("resnet20")
    cut = sum(model.get_submodule(name).out_channels - len(layer["kept"]) for name, layer in plan["layers"].items())
    masked, final = results, results["other_models"][0]
    print(f"otov2: masked {masked['benign']['accuracy']:.4f}, physical {final['benign']['accuracy']:.4f}, cut {cut}")
    assert cut == 168 and plan["metadata"]["masked_max_logit_difference"] <= 1e-5
    assert masked["benign"]["accuracy"] > 0.3 and final["benign"]["accuracy"] == masked["benign"]["accuracy"]
