"""The training loop's seams, each on hand-made weights and data: losses as entries (distillation with its
teacher), optimizers as entries (AdamW, parameter groups, gradient clipping), a phase's own optimizers and
step, ``start_phase`` before the optimizer exists, a frozen backbone, a phase that trains on the validation
fraction, a phase's stop rule, ``after_step``'s learning rate and step count, and the crops' padding."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gkp.application.catalog import LOSSES, OPTIMIZERS
from gkp.application.config import build_experiment
from gkp.application.pipeline.run import run_experiment
from gkp.entries.losses.distill import distillation_loss
from gkp.foundation.contracts import Choice, ParamGroup, Phase, Recipe, StepContext, TrainingHooks
from gkp.foundation.errors import ConfigError
from gkp.mechanisms.data.splits import TensorSplit
from gkp.mechanisms.engine.optimize import Optimization, model_optimizer, parameter_groups
from gkp.mechanisms.engine.train import NO_HOOKS, Data, LoopSettings, fit

from conftest import MemoryStore, tiny_config

# ------------------------------------------------------------------------------------------- a tiny world


class Tiny(nn.Module):
    """A conv, a BatchNorm and a linear head on 4x4 images; ``head`` may be swapped."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def split(value: float, count: int = 8) -> TensorSplit:
    """``count`` 1x4x4 images all of pixel ``value`` (0..1), labels alternating."""
    images = torch.full((count, 1, 4, 4), round(value * 255), dtype=torch.uint8)
    return TensorSplit(images, torch.arange(count) % 2)


def cross_entropy():
    loss = LOSSES.get("cross_entropy")
    return loss.objective(loss.params(), 0.0)


SETTINGS = LoopSettings(stage="test", seed=0, batch_size=4, amp="off", channels_last="off", eval_every=0)


def run(model, phases, hooks=NO_HOOKS, objective=None, data=None, store=None):
    torch.manual_seed(0)
    return fit(
        model,
        phases,
        data=data or Data(split(0.5)),
        settings=SETTINGS,
        store=store or MemoryStore(),
        objective=objective or cross_entropy(),
        hooks=hooks,
    )


def phase(name: str = "", epochs: int = 1, lr: float = 0.1, **options) -> Phase:
    return Phase(name, Recipe(epochs=epochs, lr=lr, schedule="constant"), **options)


# ------------------------------------------------------------------------------------------- losses


def test_distillation_is_cross_entropy_plus_the_weighted_kl_at_temperature():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, -1.0]])
    y = torch.tensor([0, 2])
    params = LOSSES.get("distill").params(temperature=2.0, weight=0.5)

    def softmax(row):
        exps = [math.exp(v) for v in row]
        return [e / sum(exps) for e in exps]

    ce = -sum(math.log(softmax(s)[label]) for s, label in zip(student.tolist(), y.tolist(), strict=True)) / 2
    kl = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p, q = softmax([v / 2 for v in t_row]), softmax([v / 2 for v in s_row])
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected = ce + 0.5 * kl / 2  # summed over classes, averaged over the batch, no T^2
    assert distillation_loss(student, teacher, y, params, 0.0).item() == pytest.approx(expected, rel=1e-6)


def test_fine_tuning_distils_from_the_dense_model_in_eval_mode(tmp_path, monkeypatch):
    from gkp.application.pipeline import training

    seen = []
    original = training.objective_of

    def recording(cfg):
        objective = original(cfg)

        def wrapped(step: StepContext):
            teacher = None if step.teacher is None else step.teacher.training
            seen.append((cfg.distill is not None, teacher, step.model.training))
            return objective(step)

        return wrapped

    monkeypatch.setattr(training, "objective_of", recording)
    exp = build_experiment(
        tiny_config(train={"epochs": 1}, finetune={"epochs": 1, "distill": {"temperature": 4}}, attacks=[])
    )
    assert exp.finetune.distill.params.temperature == 4 and exp.to_dict()["finetune"]["distill"] == {
        "temperature": 4.0,
        "weight": 1.0,
    }
    run_experiment(exp, out=tmp_path)
    training_steps = [teacher for distils, teacher, _ in seen if not distils]
    distilling = [(teacher, student) for distils, teacher, student in seen if distils]
    assert training_steps and all(teacher is None for teacher in training_steps)  # the train stage has none
    assert distilling and all(teacher is False and student for teacher, student in distilling)  # eval, train


def test_distillation_where_no_teacher_exists_or_beside_another_loss_is_refused():
    with pytest.raises(ConfigError, match="train.distill: the teacher is the dense model"):
        build_experiment(tiny_config(train={"distill": {}}))
    with pytest.raises(ConfigError, match="finetune.distill: a section minimises one loss"):
        build_experiment(tiny_config(finetune={"distill": {}, "adversarial": {"method": "pgd"}}))


# ------------------------------------------------------------------------------------------- optimizers


def test_the_optimizer_and_its_parameter_groups_come_from_the_section():
    exp = build_experiment(
        tiny_config(
            finetune={
                "optimizer": {"name": "adamw", "betas": [0.8, 0.9]},
                "weight_decay": 0.01,
                "param_groups": [{"match": "*bn*", "weight_decay": 0}, {"match": "fc.*", "lr": 0.5}],
            }
        )
    )
    assert exp.to_dict()["finetune"]["optimizer"] == {
        "name": "adamw",
        "betas": [0.8, 0.9],
        "eps": 1e-8,
        "amsgrad": False,
    }
    assert exp.to_dict()["train"]["optimizer"] == {"name": "sgd"}
    from gkp.application.catalog import build_model

    model = build_model("resnet8")
    optimizer = model_optimizer(model, Recipe.of(exp.finetune))
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.8, 0.9)
    rest, bn, fc = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("bn" in names[id(p)] for p in bn["params"]) and bn["weight_decay"] == 0
    assert [names[id(p)] for p in fc["params"]] == ["fc.weight", "fc.bias"] and fc["lr"] == 0.5
    assert rest["weight_decay"] == 0.01 and rest["lr"] == exp.finetune.lr


def test_a_parameter_group_that_matches_nothing_and_nesterov_with_adamw_are_refused():
    recipe = Recipe(epochs=1, lr=0.1, param_groups=(ParamGroup("*.gamma"),))
    with pytest.raises(ConfigError, match=r"param_groups\[0\].match: '\*.gamma' matches no parameter"):
        parameter_groups(Tiny(), recipe)
    with pytest.raises(ConfigError, match="finetune.nesterov: Nesterov momentum is SGD's"):
        build_experiment(tiny_config(finetune={"optimizer": "adamw", "nesterov": True}))
    with pytest.raises(ConfigError, match="finetune.optimizer.name: unknown optimizer 'adam'"):
        build_experiment(tiny_config(finetune={"optimizer": "adam"}))


def test_the_gradients_global_norm_is_clipped_before_the_step():
    model = Tiny()
    optimization = Optimization({"model": torch.optim.SGD(model.parameters(), lr=0.1)}, {}, None, 0.5)
    (1000 * model(torch.rand(4, 1, 4, 4)).sum()).backward()
    optimization.clip()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm == pytest.approx(0.5, rel=1e-5)


def test_sgd_is_the_default_and_its_entry_builds_the_same_optimizer():
    model = Tiny()
    recipe = Recipe(epochs=1, lr=0.1, momentum=0.8, weight_decay=1e-3, nesterov=True)
    sgd = OPTIMIZERS.get("sgd")
    by_entry = model_optimizer(model, replace(recipe, optimizer=Choice(sgd, sgd.params())))
    assert by_entry.state_dict() == model_optimizer(model, recipe).state_dict()


# ------------------------------------------------------------------------------------------- phases


class Discriminated(TrainingHooks):
    """A discriminator beside the model, trained in alternation with it by a phase's own step."""

    def __init__(self):
        torch.manual_seed(1)
        self.discriminator = nn.Linear(2, 1)

    def optimizers(self, model, recipe):
        return {
            "model": torch.optim.SGD(model.parameters(), lr=recipe.lr),
            "discriminator": torch.optim.SGD(self.discriminator.parameters(), lr=recipe.lr),
        }

    def step(self, step: StepContext, optimizers, objective):
        loss, logits = objective(step)
        real = self.discriminator(torch.randn(logits.shape, generator=step.generator))  # randomness: the step's
        fake = self.discriminator(logits.detach())
        critic = F.softplus(-real).mean() + F.softplus(fake).mean()
        optimizers["discriminator"].zero_grad()
        critic.backward()
        optimizers["discriminator"].step()
        fooled = loss + F.softplus(-self.discriminator(logits)).mean()
        optimizers["model"].zero_grad()
        fooled.backward()
        optimizers["model"].step()
        return fooled, logits

    def state_dict(self):
        return {"discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state, model):
        self.discriminator.load_state_dict(state["discriminator"])


def test_a_phase_with_its_own_optimizers_and_step_trains_both_networks_and_resumes_exactly():
    hooks = Discriminated()
    before = [p.detach().clone() for p in hooks.discriminator.parameters()]
    own = phase(epochs=3, optimizers=hooks.optimizers, step=hooks.step)
    model, store = Tiny(), MemoryStore()
    start = model.head.weight.detach().clone()
    run(model, [own], hooks, store=store)
    assert not torch.equal(model.head.weight, start)
    assert all(not torch.equal(b, p) for b, p in zip(before, hooks.discriminator.parameters(), strict=True))
    state, weights = store.last
    assert set(state.optimization["optimizers"]) == {"model", "discriminator"}
    # Two epochs straight, then the third resumed from a store holding only epoch 2: the same weights.
    again, partial = Discriminated(), MemoryStore()
    twice = Tiny()
    run(twice, [phase(epochs=2, optimizers=again.optimizers, step=again.step)], again, store=partial)
    resumed_hooks, resumed = Discriminated(), Tiny()
    run(
        resumed,
        [phase(epochs=3, optimizers=resumed_hooks.optimizers, step=resumed_hooks.step)],
        resumed_hooks,
        store=partial,
    )
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True)
    )
    assert torch.equal(hooks.discriminator.weight, resumed_hooks.discriminator.weight)


class SwapsTheHead(TrainingHooks):
    """Puts a fresh head in at the start of the phase: the optimizer must see it."""

    def start_phase(self, model, phase):
        torch.manual_seed(2)
        model.head = nn.Linear(2, 2)
        self.fresh = model.head.weight.detach().clone()


def test_a_module_swapped_in_when_a_phase_starts_is_optimised():
    model, hooks = Tiny(), SwapsTheHead()
    run(model, [phase(epochs=1)], hooks)
    assert not torch.equal(model.head.weight, hooks.fresh)


class Gated(Tiny):
    """Tiny with a gate on its logits: what a method's ``prepare`` would add beside the backbone."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return super().forward(x) * self.gate


def gate_only(model, recipe):
    return {"gates": torch.optim.SGD([model.gate], lr=0.5)}


def test_a_frozen_backbone_runs_in_eval_mode_and_trains_only_its_optimizers_parameters():
    model = Gated()
    backbone = {k: v.clone() for k, v in model.state_dict().items() if k != "gate"}
    modes = []

    def recording(step: StepContext):
        modes.append(step.model.training)
        return cross_entropy()(step)

    run(model, [phase(epochs=2, frozen_backbone=True, optimizers=gate_only)], objective=recording)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone.items())  # weights and BatchNorm statistics
    assert not torch.equal(model.gate, torch.ones(2)) and modes and not any(modes)
    assert all(p.requires_grad for p in model.parameters())  # given back after the phase


def test_an_adversarial_loss_leaves_a_frozen_backbone_in_eval_mode():
    """Crafting restores the mode it found: in a frozen phase, eval (its BatchNorm statistics stay)."""
    from gkp.application.catalog import ATTACKS

    pgd = LOSSES.get("pgd")
    objective = pgd.objective(pgd.params(steps=2, bn_mode="train"), 0.0, ATTACKS.get("pgd"))
    model = Gated()
    statistics = model.bn.running_mean.clone()
    run(model, [phase(epochs=1, frozen_backbone=True, optimizers=gate_only)], objective=objective)
    assert torch.equal(model.bn.running_mean, statistics) and not torch.equal(model.gate, torch.ones(2))


def test_a_phase_trains_on_the_validation_fraction_when_it_asks_for_it():
    seen = []

    def recording(step: StepContext):
        seen.append(round(step.x.mean().item(), 2))
        return cross_entropy()(step)

    run(Tiny(), [phase("search", data="val"), phase("train")], objective=recording, data=Data(split(0.2), split(0.8)))
    assert seen == [0.8, 0.8, 0.2, 0.2]  # two batches of the validation fraction, then two of the training split
    with pytest.raises(ConfigError, match="phase 'search' trains on the validation fraction"):
        run(Tiny(), [phase("search", data="val")], data=Data(split(0.2)))


class Counting(TrainingHooks):
    def __init__(self):
        self.steps, self.phases = [], []

    def start_phase(self, model, phase):
        self.phases.append(phase)

    def after_step(self, model, lr, step):
        self.steps.append((lr, step))


def test_a_stop_rule_ends_its_phase_and_after_step_gets_the_learning_rate_and_the_step():
    hooks = Counting()
    search = phase("search", epochs=5, lr=0.3, stop=lambda model: len(hooks.steps) >= 3)
    train = Phase("train", Recipe(epochs=2, lr=0.1, schedule="step", step_size=1, gamma=0.5))
    outcome = run(Tiny(), [search, train], hooks)
    assert hooks.phases == [0, 1]
    assert [row["phase"] for row in outcome.history] == ["search", "search", "train", "train"]
    assert [row["epoch"] for row in outcome.history] == [1, 2, 3, 4]
    assert hooks.steps == [(0.3, 1), (0.3, 2), (0.3, 3), (0.1, 4), (0.1, 5), (0.05, 6), (0.05, 7)]


def test_a_stopped_phase_is_complete_when_its_run_resumes():
    hooks, store = Counting(), MemoryStore()
    search = phase("search", epochs=5, stop=lambda model: len(hooks.steps) >= 3)
    run(Tiny(), [search], hooks, store=store)
    state, _ = store.last
    assert (state.phase, state.epoch, state.steps) == (0, 5, 3)
    later = Counting()
    outcome = run(Tiny(), [search, phase("train")], later, store=store)
    assert later.phases == [1] and [s for _, s in later.steps] == [4, 5] and len(outcome.history) == 3


# ------------------------------------------------------------------------------------------- data


def test_the_crop_padding_is_a_setting_that_reaches_the_training_split():
    from gkp.application.catalog import load_data

    exp = build_experiment(tiny_config(data={"crop_padding": 8, "val_fraction": 0.25}))
    bundle = load_data(exp.data, torch.device("cpu"))
    assert bundle.train.crop_padding == bundle.val.crop_padding == 8 and bundle.test.augment_kind == "none"
    assert build_experiment(tiny_config()).data.crop_padding is None  # a side/8 border
    white = torch.full((64, 1, 4, 4), 255, dtype=torch.uint8)

    def blank_crops(padding: int | None) -> int:
        split = TensorSplit(white, torch.zeros(64, dtype=torch.long), "crop", padding)
        (images, _), *_ = split.batches(64, train=True, seed=0)
        return int((images.flatten(1).amax(1) == 0).sum())

    assert blank_crops(4) > 0 and blank_crops(None) == blank_crops(1) == 0  # 4x4 images: a border of 1


def test_a_training_sections_crop_padding_applies_to_its_training_alone():
    """``finetune.crop_padding`` pads the fine-tune's crops (CC's 8) and leaves the dense model's training,
    and so its fingerprint, as it was: a sweep still shares the dense model."""
    from gkp.application.pipeline.stages import stage_named
    from gkp.application.pipeline.training import _padded
    from gkp.mechanisms.engine.train import Data

    plain, padded = build_experiment(tiny_config()), build_experiment(tiny_config(finetune={"crop_padding": 8}))
    inputs = {"data": None}
    assert stage_named("train").fingerprint(plain, inputs) == stage_named("train").fingerprint(padded, inputs)
    assert stage_named("finetune").fingerprint(plain, inputs) != stage_named("finetune").fingerprint(padded, inputs)
    split = TensorSplit(torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), "crop")
    data = _padded(Data(split, split), 8)
    assert data.train.crop_padding == data.val.crop_padding == 8 and split.crop_padding is None
    assert data.train.images is split.images and _padded(Data(split), None).train is split
