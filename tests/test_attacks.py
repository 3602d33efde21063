"""Attack invariants over the whole registry, and the evaluation loop's sanity checks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from attacks import ATTACKS
from gkp.config import AttackSpec
from gkp.engine.evaluate import check_adversarial, evaluate
from gkp.errors import AttackSanityError
from gkp.schema import build


def spec(name: str, **params) -> AttackSpec:
    return AttackSpec(name, name, build(ATTACKS.get(name).params, params, "attack"))


def batch(bundle, size=64):
    return next(bundle.test.batches(size))


@pytest.mark.parametrize("name", ATTACKS.names())
def test_adversarial_images_stay_in_the_ball_and_the_image_range(name, trained_tiny):
    model, bundle = trained_tiny
    x, y = batch(bundle)
    attack = ATTACKS.get(name)
    eps = 8 / 255
    x_adv = attack.run(model, x, y, spec(name, eps=eps).params, torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ATTACKS.names())
def test_eps_zero_changes_nothing(name, trained_tiny):
    model, bundle = trained_tiny
    report = evaluate(model, bundle.test, [spec(name, eps=0.0)], batch_size=64, seed=0)
    assert report.attacks[0].score.correct == report.benign.correct


@pytest.mark.parametrize("name", ATTACKS.names())
def test_moderate_eps_lowers_accuracy_clearly(name, trained_tiny):
    model, bundle = trained_tiny
    report = evaluate(model, bundle.test, [spec(name, eps=8 / 255)], batch_size=64, seed=0)
    assert report.benign.accuracy > 0.6
    assert report.attacks[0].score.accuracy < report.benign.accuracy - 0.2


@pytest.mark.parametrize("name", ATTACKS.names())
def test_same_seed_same_result(name, trained_tiny):
    model, bundle = trained_tiny
    x, y = batch(bundle)
    params = spec(name, eps=4 / 255).params
    first = ATTACKS.get(name).run(model, x, y, params, torch.Generator().manual_seed(3))
    again = ATTACKS.get(name).run(model, x, y, params, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def test_more_pgd_steps_and_a_larger_eps_are_not_weaker(trained_tiny):
    model, bundle = trained_tiny
    suite = [
        replace(spec("pgd", eps=2 / 255, steps=1), label="weak"),
        replace(spec("pgd", eps=2 / 255, steps=10), label="more_steps"),
        replace(spec("pgd", eps=6 / 255, steps=10), label="larger_eps"),
    ]
    report = evaluate(model, bundle.test, suite, batch_size=64, seed=0)
    weak, more_steps, larger_eps = (a.score.correct for a in report.attacks)
    assert larger_eps <= more_steps <= weak
    assert report.worst_case.correct <= min(weak, more_steps, larger_eps)


def test_results_do_not_depend_on_the_other_attacks_in_the_suite(trained_tiny):
    model, bundle = trained_tiny
    alone = evaluate(model, bundle.test, [spec("pgd", eps=4 / 255)], batch_size=64, seed=5)
    together = evaluate(model, bundle.test, [spec("fgsm"), spec("pgd", eps=4 / 255)], batch_size=64, seed=5)
    assert alone.attacks[0].score.correct == together.attacks[1].score.correct


def test_report_fields(trained_tiny):
    model, bundle = trained_tiny
    report = evaluate(model, bundle.test, [spec("fgsm", eps=0.1)], batch_size=50, seed=0).to_dict()
    assert report["benign"]["total"] == bundle.test.num_samples
    entry = report["attacks"][0]
    assert entry["name"] == "fgsm" and entry["params"] == {"eps": 0.1}
    assert entry["accuracy"] == entry["correct"] / entry["total"] and entry["seconds"] >= 0


def test_sanity_checks_catch_bad_adversarial_batches():
    x = torch.rand(2, 3, 4, 4) * 0.5 + 0.25
    check_adversarial(x + 0.01, x, 0.01, "linf", "ok")
    with pytest.raises(AttackSanityError, match="beyond its eps"):
        check_adversarial(x + 0.02, x, 0.01, "linf", "big")
    with pytest.raises(AttackSanityError, match="left the image range"):
        check_adversarial(x + 1.0, x, 2.0, "linf", "range")
    with pytest.raises(AttackSanityError, match="NaN"):
        check_adversarial(torch.full_like(x, float("nan")), x, 0.1, "linf", "nan")


def test_an_attack_that_leaves_eval_mode_is_caught(trained_tiny, monkeypatch):
    model, bundle = trained_tiny
    original = ATTACKS.get("fgsm").run

    def sloppy(model, x, y, params, generator=None):
        model.train()
        return original(model, x, y, params, generator)

    monkeypatch.setitem(ATTACKS._entries, "fgsm", replace(ATTACKS.get("fgsm"), run=sloppy))
    try:
        with pytest.raises(AttackSanityError, match="left eval mode"):
            evaluate(model, bundle.test, [spec("fgsm")], batch_size=64, seed=0)
    finally:
        model.eval()
