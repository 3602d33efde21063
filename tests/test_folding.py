"""The model the evaluator attacks: BatchNorm folding (the folded copy computes the same logits and input
gradients, for dense and grouped-kernel models; only safe conv-BatchNorm pairs are folded) and the
channels_last copy; the model itself is untouched, and the config switches reach every evaluation."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gkp.application import api
from gkp.application.catalog import build_model
from gkp.application.config import EvalConfig, build_experiment
from gkp.application.pipeline import prune, training
from gkp.application.pipeline.run import run_experiment
from gkp.mechanisms.engine.evaluate import evaluate, evaluated_model
from gkp.mechanisms.engine.folding import batchnorm_folded, conv_batchnorm_pairs
from gkp.mechanisms.layers.grouped_conv import FORMS, GroupedKernelConv2d
from gkp.mechanisms.pruning.surgery import apply

from conftest import tiny_config
from test_attacks import spec
from test_grouped import CASES, assert_same_logits, plan_for
from test_pruning import randomise_batchnorm


def batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def set_form(model: nn.Module, form: str) -> None:
    for module in model.modules():
        if isinstance(module, GroupedKernelConv2d):
            module.form = form


@pytest.mark.parametrize("arch, args, method, params", CASES, ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_every_batchnorm_folds_and_the_logits_stay_the_same(arch, args, method, params):
    torch.manual_seed(0)
    dense = randomise_batchnorm(build_model(arch, **args)).eval()
    grouped = apply(dense, plan_for(dense, method, **params)).eval()
    x = torch.rand(2, 3, 32, 32)
    for model in (dense, grouped):
        before = {name: value.clone() for name, value in model.state_dict().items()}
        folded = batchnorm_folded(model)
        assert batchnorms(model) > 0 and batchnorms(folded) == 0
        for form in FORMS:
            set_form(model, form)
            set_form(folded, form)
            with torch.no_grad():
                assert_same_logits(folded(x), model(x))
        assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), torch.arange(len(x)) % 10), x)
    return grad


@pytest.fixture(scope="module")
def resnet20_dense_and_grouped() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    dense = randomise_batchnorm(build_model("resnet20")).eval()
    return dense, apply(dense, plan_for(dense, "srgkp")).eval()


def test_the_input_gradient_attacks_use_stays_the_same(resnet20_dense_and_grouped):
    """Checked in float64, where the folded, channels_last copy and the model agree to 1e-15: the same
    function. In float32 the copy sums in another order, and a pre-activation within rounding of zero can
    land on the other side of its ReLU, which changes that sample's gradient by percents (seen: 3% on one
    of four samples, with channels_last alone, no folding), so float32 cannot tell a bug from rounding."""
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for model in resnet20_dense_and_grouped:
        model = copy.deepcopy(model).double()
        reference = input_gradient(model, x)
        evaluated = evaluated_model(model, EvalConfig())
        assert (input_gradient(evaluated, x) - reference).abs().max() <= 1e-10 * reference.abs().max()


class Branching(nn.Module):
    """A conv read by its BatchNorm and by a second branch; a conv called twice; a BatchNorm without
    running statistics; and one safe pair."""

    def __init__(self):
        super().__init__()
        self.shared_output = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_shared_output = nn.BatchNorm2d(4)
        self.called_twice = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_called_twice = nn.BatchNorm2d(4)
        self.batch_statistics = nn.Conv2d(4, 4, 1)
        self.bn_batch_statistics = nn.BatchNorm2d(4, track_running_stats=False)
        self.safe = nn.Conv2d(4, 4, 1)
        self.bn_safe = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shared_output(x)
        y = self.bn_shared_output(y) + y
        y = self.bn_called_twice(self.called_twice(self.called_twice(y)))
        y = self.bn_batch_statistics(self.batch_statistics(y))
        return self.bn_safe(self.safe(y)).mean((2, 3))


def test_only_safe_pairs_fold():
    torch.manual_seed(0)
    model = randomise_batchnorm(Branching()).eval()
    assert conv_batchnorm_pairs(model) == [("safe", "bn_safe")]
    folded = batchnorm_folded(model)
    assert batchnorms(folded) == batchnorms(model) - 1
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert_same_logits(folded(x), model(x))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def test_a_model_fx_cannot_trace_is_evaluated_unfolded(caplog):
    model = randomise_batchnorm(DataDependent()).eval()
    with caplog.at_level(logging.INFO, logger="gkp.mechanisms.engine.folding"):
        folded = batchnorm_folded(model)
    assert "BatchNorm folding skipped" in caplog.text
    assert batchnorms(folded) == 1 and folded is not model
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))


PLAIN = EvalConfig(fold_batchnorm=False, channels_last=False)


def test_the_evaluated_copy_is_folded_and_channels_last_and_computes_the_same(resnet20_dense_and_grouped):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for model in resnet20_dense_and_grouped:
        evaluated = evaluated_model(model, EvalConfig())
        assert batchnorms(evaluated) == 0 and batchnorms(model) > 0
        weights = [m.weight for m in evaluated.modules() if isinstance(m, (nn.Conv2d, GroupedKernelConv2d))]
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
        assert all(p.is_contiguous() for p in model.parameters())
        with torch.no_grad():
            assert_same_logits(evaluated(x), model(x))
    assert evaluated_model(resnet20_dense_and_grouped[0], PLAIN) is resnet20_dense_and_grouped[0]


def test_evaluation_gives_the_same_accuracies_on_the_evaluated_copy(trained_tiny):
    model, bundle = trained_tiny
    suite = [spec("fgsm", eps=4 / 255), spec("pgd", eps=4 / 255)]
    fast = evaluate(model, bundle.test, suite, batch_size=64, seed=0)
    plain = evaluate(model, bundle.test, suite, batch_size=64, seed=0, options=PLAIN)
    assert fast.benign.correct == plain.benign.correct
    for first, second in zip(fast.attacks, plain.attacks, strict=True):
        assert abs(first.score.correct - second.score.correct) <= 1


def test_the_config_switch_reaches_every_evaluation(tmp_path, monkeypatch):
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs["options"])
        return evaluate(*args, **kwargs)

    for module, name in ((training, "evaluate"), (prune, "evaluate"), (api, "evaluate_on")):
        monkeypatch.setattr(module, name, recording)
    config = tiny_config(
        stages=["train", "prune", "eval"],
        train={"epochs": 1},
        attacks=[],
        eval={"fold_batchnorm": False, "channels_last": False},
    )
    run_experiment(build_experiment(config), out=tmp_path)
    assert seen == [PLAIN] * 3  # training's epoch evaluation, the pruned model, the final one
