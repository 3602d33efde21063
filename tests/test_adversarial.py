"""Adversarial training (PGD, TRADES, FGSM-RS) as the training loop's objective: its examples stay in the
threat model, TRADES's loss is the paper's, BatchNorm's mode is honoured, the config reads it, and a
PGD-trained model is more robust than a plainly trained one."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from gkp.application.catalog import ATTACKS, LOSSES, build_model
from gkp.application.config import build_experiment
from gkp.application.pipeline.run import run_experiment
from gkp.entries.losses.crafting import craft
from gkp.entries.losses.trades import trades_loss
from gkp.foundation.contracts import StepContext
from gkp.foundation.errors import ConfigError
from gkp.foundation.schema import build

from conftest import tiny_config


def attack_of(name: str, **params):
    entry = LOSSES.get(name)
    settings = build(entry.params, params, "adversarial")
    return entry, settings


def test_trades_loss_is_cross_entropy_plus_beta_times_the_batch_mean_kl():
    clean = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    adversarial = torch.tensor([[1.0, 1.0, 0.0], [0.5, -0.5, 0.0]])
    y = torch.tensor([0, 2])

    def softmax(row):
        exps = [math.exp(v) for v in row]
        return [e / sum(exps) for e in exps]

    ce = -sum(math.log(softmax(row)[label]) for row, label in zip(clean.tolist(), y.tolist(), strict=True)) / 2
    kl = 0.0
    for p_row, q_row in zip(clean.tolist(), adversarial.tolist(), strict=True):
        p, q = softmax(p_row), softmax(q_row)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected = ce + 6.0 * kl / 2
    assert trades_loss(clean, adversarial, y, beta=6.0, label_smoothing=0.0).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["pgd", "fgsm_rs", "trades"])
def test_the_training_examples_stay_in_the_eps_ball_and_the_image_box(name):
    torch.manual_seed(0)
    model = build_model("resnet8").train()
    entry, params = attack_of(name, eps=6 / 255)
    attack = ATTACKS.get(entry.attack)
    objective = entry.objective(params, 0.0, attack)
    seen = []
    forward = model.forward

    def recording(x):
        seen.append(x.detach().clone())
        return forward(x)

    model.forward = recording
    x, y = torch.rand(6, 3, 16, 16), torch.randint(0, 10, (6,))
    objective(StepContext(model, x, y, torch.Generator().manual_seed(0)))
    trained_on = seen[-1]  # the last forward pass of the objective is the adversarial batch
    assert (trained_on - x).abs().max() <= 6 / 255 + 1e-6 and trained_on.min() >= 0 and trained_on.max() <= 1
    assert not torch.equal(trained_on, x)


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_batchnorm_running_statistics_move_during_the_attack_only_in_train_mode(bn_mode):
    torch.manual_seed(0)
    model = build_model("resnet8").train()
    pgd = ATTACKS.get("pgd")
    before = model.bn1.running_mean.clone()
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    craft(StepContext(model, x, y), pgd, pgd.params(eps=4 / 255, steps=2), bn_mode)
    assert model.training
    assert torch.equal(model.bn1.running_mean, before) == (bn_mode == "eval")


def test_the_config_reads_adversarial_training_and_names_what_is_wrong():
    exp = build_experiment(tiny_config(finetune={"adversarial": {"method": "trades", "beta": 3}}))
    assert exp.finetune.adversarial.entry.name == "trades" and exp.finetune.adversarial.params.beta == 3
    assert exp.to_dict()["finetune"]["adversarial"]["method"] == "trades"
    assert exp.train.adversarial is None
    with pytest.raises(ConfigError, match="train.adversarial.method: unknown"):
        build_experiment(tiny_config(train={"adversarial": {"method": "madry"}}))
    with pytest.raises(ConfigError, match="train.adversarial: a mapping with a 'method'"):
        build_experiment(tiny_config(train={"adversarial": "pgd"}))
    with pytest.raises(ConfigError, match="train.adversarial.beta"):
        build_experiment(tiny_config(train={"adversarial": {"method": "pgd", "beta": 6}}))
    with pytest.raises(ConfigError, match="train.adversarial.method: 'distill' is not an adversarial training"):
        build_experiment(tiny_config(train={"adversarial": {"method": "distill"}}))


def test_a_pgd_trained_model_resists_pgd_far_better_than_a_plainly_trained_one(tmp_path):
    eps = 0.05
    accuracies = {}
    for name, adversarial in (
        ("plain", None),
        ("pgd", {"method": "pgd", "eps": eps, "step_size": eps / 2, "steps": 3}),
    ):
        train = {"epochs": 4, "lr": 0.05, "schedule": "cosine", "eval_every": 0}
        if adversarial:
            train["adversarial"] = adversarial
        config = tiny_config(
            stages=["train", "eval"],
            data={"name": "digits", "batch_size": 32, "image_size": None, "train_size": 600, "test_size": 300},
            train=train,
            attacks=[{"name": "pgd", "eps": eps, "steps": 10}],
            eval={"models": ["dense"]},
        )
        results = run_experiment(build_experiment(config), out=tmp_path / name)
        accuracies[name] = results["attacks"][0]["accuracy"]
    assert accuracies["pgd"] >= accuracies["plain"] + 0.1, accuracies


def test_an_adversarially_trained_dense_model_pruned_one_shot_and_fine_tuned_with_trades(tmp_path):
    """The Adversarial Pruning Benchmark's setting: PGD-trained dense model, any method, adversarial
    fine-tuning; each training section's objective is its own."""
    config = tiny_config(
        train={"epochs": 1, "adversarial": {"method": "pgd", "steps": 2}},
        prune={"method": "l1", "rate": 0.5},
        finetune={"epochs": 1, "adversarial": {"method": "trades", "steps": 2}},
    )
    results = run_experiment(build_experiment(config), out=tmp_path)
    assert results["model"] == "final" and set(results["training"]) == {"train", "finetune"}
    saved = build_experiment(yaml.safe_load((tmp_path / "config.yaml").read_text()))  # the resolved config reloads
    assert saved.train.adversarial.entry.name == "pgd" and saved.finetune.adversarial.entry.name == "trades"
    assert saved.finetune.adversarial.params.steps == 2


def test_fgsm_rs_takes_one_step_of_1_25_eps_from_a_random_start():
    """Wong et al.'s setting, through the registered PGD attack."""
    import dataclasses

    entry, params = attack_of("fgsm_rs", eps=8 / 255)
    seen = []
    pgd = ATTACKS.get(entry.attack)
    recording = dataclasses.replace(pgd, run=lambda model, x, y, p, generator, box: seen.append(p) or x)
    objective = entry.objective(params, 0.0, recording)
    objective(StepContext(build_model("resnet8").train(), torch.rand(2, 3, 16, 16), torch.tensor([0, 1])))
    (used,) = seen
    assert (used.steps, used.random_start, used.norm) == (1, True, "linf")
    assert used.step_size == pytest.approx(1.25 * 8 / 255) and used.eps == pytest.approx(8 / 255)
