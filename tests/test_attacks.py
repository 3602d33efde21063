"""Attack invariants over the whole registry, the paper's evaluation mode, and the evaluation loop's
sanity checks and gradient-masking warnings."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from attacks.apgd import checkpoints, should_halve
from gkp.catalog import ATTACKS
from gkp.engine.evaluate import attack_space, check_adversarial, evaluate
from gkp.errors import AttackSanityError
from gkp.schema import build
from gkp.settings import AttackSpec
from gkp.threat import PIXELS, lp_norm

MODERATE = {"linf": 8 / 255, "l2": 1.0}
CASES = [(name, norm) for name, attack in ATTACKS.items() for norm in attack.norms]


def spec(name: str, label: str | None = None, **params) -> AttackSpec:
    """An attack of the registry in its quick settings (its defaults are the papers')."""
    attack = ATTACKS.get(name)
    return AttackSpec(attack, label or name, build(attack.params, {**attack.quick, **params}, "attack"))


def batch(bundle, size=64):
    return next(bundle.test.batches(size))


def is_minimum_norm(name: str) -> bool:
    return ATTACKS.get(name).kind == "minimum_norm"


@pytest.mark.parametrize("name, norm", CASES)
def test_adversarial_images_stay_in_the_ball_and_the_image_range(name, norm, trained_tiny):
    model, bundle = trained_tiny
    x, y = batch(bundle)
    params = spec(name, norm=norm, eps=MODERATE[norm]).params
    x_adv = ATTACKS.get(name).run(model, x, y, params, torch.Generator().manual_seed(0), PIXELS)
    assert x_adv.shape == x.shape and not x_adv.requires_grad and torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    size = lp_norm(x_adv - x, norm)
    if is_minimum_norm(name):  # the smallest adversarial found, or the clean image
        with torch.no_grad():
            fooled = model(x_adv).argmax(1) != y
        assert fooled.any() and (size[~fooled] == 0).all()
    else:
        assert size.max() <= MODERATE[norm] + 1e-6


@pytest.mark.parametrize("name, norm", CASES)
def test_eps_zero_changes_nothing(name, norm, trained_tiny):
    model, bundle = trained_tiny
    report = evaluate(model, bundle.test, [spec(name, norm=norm, eps=0.0)], batch_size=64, seed=0)
    assert report.attacks[0].score.correct == report.benign.correct


@pytest.mark.parametrize("name, norm", CASES)
def test_moderate_eps_lowers_accuracy_clearly(name, norm, trained_tiny):
    model, bundle = trained_tiny
    report = evaluate(model, bundle.test, [spec(name, norm=norm, eps=MODERATE[norm])], batch_size=64, seed=0)
    assert report.benign.accuracy > 0.6
    assert report.attacks[0].score.accuracy < report.benign.accuracy - 0.2


@pytest.mark.parametrize("name, norm", CASES)
def test_same_seed_same_result(name, norm, trained_tiny):
    model, bundle = trained_tiny
    x, y = batch(bundle, 32)
    params = spec(name, norm=norm, eps=MODERATE[norm] / 2).params
    first = ATTACKS.get(name).run(model, x, y, params, torch.Generator().manual_seed(3), PIXELS)
    again = ATTACKS.get(name).run(model, x, y, params, torch.Generator().manual_seed(3), PIXELS)
    assert torch.equal(first, again)


def test_stronger_settings_are_not_weaker_and_the_worst_case_bounds_every_attack(trained_tiny):
    model, bundle = trained_tiny
    suite = [
        spec("pgd", "weak", eps=2 / 255, steps=1),
        spec("pgd", "more_steps", eps=2 / 255, steps=10),
        spec("pgd", "larger_eps", eps=6 / 255, steps=10),
        spec("apgd_ce", "apgd", eps=6 / 255, steps=20),
    ]
    report = evaluate(model, bundle.test, suite, batch_size=64, seed=0)
    weak, more_steps, larger_eps, apgd = (a.score.correct for a in report.attacks)
    assert larger_eps <= more_steps <= weak and apgd <= more_steps
    assert report.worst_case.correct <= min(weak, more_steps, larger_eps, apgd)


def test_apgd_checkpoints_follow_the_reference_schedule():
    # the paper's p_j = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 times N, for N = 100 and 1000
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1000) == [220, 410, 570, 700, 800, 870, 930, 990]
    assert checkpoints(20) == [4, 7, 9, *range(10, 21)]  # the reference's intervals never drop below 1 step
    assert checkpoints(1) == [1]


def test_apgd_halves_after_few_rises_or_a_stall_not_halved_last_time():
    interval = 4
    rises = torch.tensor([3.0, 4.0, 4.0, 4.0])  # 3 <= 75% of 4: too few
    best = torch.tensor([1.0, 1.0, 2.0, 1.0])
    best_before = torch.ones(4)
    halved_before = torch.tensor([False, False, False, True])
    halve = should_halve(rises, interval, best, best_before, halved_before)
    assert halve.tolist() == [True, True, False, False]


def test_minimum_norm_attacks_record_norms_and_threshold_them(trained_tiny):
    model, bundle = trained_tiny
    report = evaluate(
        model, bundle.test, [spec("fmn", "fmn_any"), spec("fmn", "fmn_at", eps=4 / 255)], batch_size=64, seed=0
    )
    norms = report.per_sample["fmn_any_norm"]
    benign = report.per_sample["benign"]
    assert (norms[~benign] == 0).all() and (norms[benign] > 0).all()
    assert report.attacks[1].score.correct == int((norms > 4 / 255).sum())
    assert report.attacks[0].to_dict()["median_norm"] > 0
    # without eps the attack bounds no threat: the worst case is taken over the benign and eps-bounded flags
    assert report.worst_case.correct == int((benign & report.per_sample["fmn_at"]).sum())


@pytest.mark.parametrize("name, norm", [case for case in CASES if is_minimum_norm(case[0])])
def test_minimum_norm_attacks_return_misclassified_images_unchanged(name, norm, trained_tiny):
    model, bundle = trained_tiny
    x, y = batch(bundle)
    x = x.clone()
    x[:, :, :4] = x[:, :, :4].round()  # pixels on the box's edges, as real images have
    with torch.no_grad():
        misclassified = model(x).argmax(1) != y
    assert misclassified.any()
    params = spec(name, norm=norm).params
    x_adv = ATTACKS.get(name).run(model, x, y, params, torch.Generator().manual_seed(0), PIXELS)
    assert torch.equal(x_adv[misclassified], x[misclassified])


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
    assert entry["name"] == "fgsm"
    assert entry["params"] == {"eps": 0.1, "norm": "linf", "space": "pixel", "labels": "true", "clip": True}
    assert entry["accuracy"] == entry["correct"] / entry["total"] and entry["seconds"] >= 0


def test_the_papers_normalized_space(trained_tiny):
    model, bundle = trained_tiny
    x, y = batch(bundle, 16)
    normalized = replace(spec("fgsm", eps=0.1), space="normalized")
    target, z, box = attack_space(model, x, normalized)
    mean, std = model.normalize.mean, model.normalize.std
    assert box.lower == pytest.approx(float((-mean / std).min())) and box.upper == pytest.approx(
        float(((1 - mean) / std).max())
    )
    with torch.no_grad():
        assert torch.allclose(target(z), model(x), atol=1e-5)
    z_adv = ATTACKS.get("fgsm").run(target, z, y, normalized.params, None, box)
    assert (z_adv - z).abs().max() <= 0.1 + 1e-6
    unclipped = attack_space(model, x, replace(normalized, clip=False))[2]
    assert unclipped.lower == float("-inf") and unclipped.upper == float("inf")


def test_predicted_labels_only_change_misclassified_samples(trained_tiny):
    model, bundle = trained_tiny
    true = evaluate(model, bundle.test, [spec("fgsm", eps=0.05)], batch_size=64, seed=0)
    predicted = evaluate(
        model, bundle.test, [replace(spec("fgsm", eps=0.05), labels="predicted")], batch_size=64, seed=0
    )
    clean = true.per_sample["benign"]
    assert (true.per_sample["fgsm"][clean] == predicted.per_sample["fgsm"][clean]).all()


def test_sanity_checks_catch_bad_adversarial_batches():
    x = torch.rand(2, 3, 4, 4) * 0.5 + 0.25
    params = build(ATTACKS.get("pgd").params, {"eps": 0.01}, "attack")
    check_adversarial(x + 0.01, x, params, True, PIXELS, "ok")
    with pytest.raises(AttackSanityError, match="beyond its eps"):
        check_adversarial(x + 0.02, x, params, True, PIXELS, "big")
    with pytest.raises(AttackSanityError, match="left the image range"):
        check_adversarial(x + 1.0, x, params, False, PIXELS, "range")
    with pytest.raises(AttackSanityError, match="NaN"):
        check_adversarial(torch.full_like(x, float("nan")), x, params, False, PIXELS, "nan")


def test_nan_logits_stop_the_evaluation(trained_tiny):
    model, bundle = trained_tiny
    broken = copy.deepcopy(model)
    next(p for p in broken.parameters() if p.dim() == 4).data[0, 0, 0, 0] = float("nan")
    with pytest.raises(AttackSanityError, match="NaN or infinite logits on clean images"):
        evaluate(broken, bundle.test, [spec("fgsm")], batch_size=64, seed=0)


def test_an_attack_that_leaves_eval_mode_is_caught(trained_tiny, monkeypatch):
    model, bundle = trained_tiny
    original = ATTACKS.get("fgsm").run

    def sloppy(model, x, y, params, generator=None, box=PIXELS):
        model.train()
        return original(model, x, y, params, generator, box)

    monkeypatch.setitem(ATTACKS._entries, "fgsm", replace(ATTACKS.get("fgsm"), run=sloppy))
    try:
        with pytest.raises(AttackSanityError, match="left eval mode"):
            evaluate(model, bundle.test, [spec("fgsm")], batch_size=64, seed=0)
    finally:
        model.eval()


class GradientBlocked(nn.Module):
    """A model whose input gradient is zero: it classifies a detached copy of its input."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.normalize = model, model.normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.detach()) + 0 * x.sum()


def test_gradient_masking_is_reported(trained_tiny):
    model, bundle = trained_tiny
    masked = GradientBlocked(model).eval()
    suite = [spec("pgd", eps=8 / 255), spec("square", eps=8 / 255)]
    report = evaluate(masked, bundle.test, suite, batch_size=64, seed=0)
    assert any("exactly zero cross-entropy input gradient" in w for w in report.warnings)
    assert any("gradient-free attack 'square'" in w and "gradient masking" in w for w in report.warnings)
    assert report.attacks[0].score.correct == report.benign.correct  # the gradient attack is blind here


def test_square_halves_its_window_at_query_counts_in_autoattacks_standard_evaluation():
    """AutoAttack's standard Square (resc_schedule=False) halves p after queries 10, 50, 200, ..., whatever
    the budget; Square's own code rescales those marks to a budget of 10,000."""
    from attacks.square import window_side

    side = lambda query, rescale: window_side(0.8, query, 5000, 32, 32, rescale)  # noqa: E731
    assert [side(q, False) for q in (10, 11, 50, 51, 4000, 4001)] == [29, 20, 20, 14, 4, 3]
    assert side(30, False) == 20 and side(30, True) == 14  # 30 of 5,000 is 60 of 10,000
    from gkp.suites import STRONG

    square = next(a for a in STRONG.make(eps=8 / 255) if a["name"] == "square")
    assert square["rescale_schedule"] is False
