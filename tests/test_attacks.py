"""Attack invariants over the whole registry, the strength of the attacks this project ships, the paper's
evaluation mode, and the evaluation loop's sanity checks and gradient-masking warnings."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from attacks.apgd_ce import checkpoints, should_halve
from gkp.application.catalog import ATTACKS
from gkp.foundation.errors import AttackSanityError
from gkp.foundation.schema import build
from gkp.foundation.settings import AttackSpec
from gkp.foundation.threat import PIXELS, Box, lp_norm
from gkp.mechanisms.engine.evaluate import attack_space, check_adversarial, evaluate

MODERATE = {"linf": 8 / 255, "l2": 1.0}
CASES = [(name, norm) for name, attack in ATTACKS.items() for norm in attack.norms]
# The attacks whose strength is checked: a claim about each of these, not a contract every registered
# attack must meet (a deliberately weak control attack may be registered too).
STRONG_ATTACKS = ("fgsm", "pgd", "apgd_ce", "apgd_t", "fab_t", "square", "cw_l2", "fmn", "pgd_kl")


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


@pytest.mark.parametrize("name, norm", [case for case in CASES if case[0] in STRONG_ATTACKS])
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

    ATTACKS.add("fgsm", replace(ATTACKS.get("fgsm"), run=sloppy))
    try:
        with pytest.raises(AttackSanityError, match="left eval mode"):
            evaluate(model, bundle.test, [spec("fgsm")], batch_size=64, seed=0)
    finally:
        ATTACKS.remove("fgsm")
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
    from gkp.entries.suites.strong import ENTRY as STRONG

    square = next(a for a in STRONG.make(eps=8 / 255) if a["name"] == "square")
    assert square["rescale_schedule"] is False


def test_square_l2_follows_autoattacks_pattern_windows_and_radius():
    """The pieces of AutoAttack's L2 Square (its square.py): the rings of a half pattern, centred on the
    cell (h // 2, w // 2), hold 1/(k+1)^2 summed from the cell's ring outwards; windows are odd and at
    least 3 wide; the initial tiles are laid out centred; every proposal has norm exactly eps."""
    from attacks.square import _initial_l2, _odd_side, _propose_l2, _rings, pseudo_gaussian

    like = torch.zeros((), dtype=torch.float64)
    centre, middle, outer = 1 + 1 / 4 + 1 / 9, 1 / 4 + 1 / 9, 1 / 9
    expected = torch.tensor(
        [[outer, middle, middle, middle, outer], [outer, middle, centre, middle, outer]], dtype=torch.float64
    )
    assert torch.allclose(_rings(2, 5, like), expected / expected.norm())
    generator = torch.Generator().manual_seed(0)
    for pattern in (pseudo_gaussian(5, like, generator) for _ in range(8)):  # transposed half of the time
        upright = pattern if pattern[-1, 0] < 0 else pattern.T
        assert torch.allclose(upright[:2] / upright[:2].norm(), _rings(2, 5, like))
        assert torch.allclose(-upright[2:] / upright[2:].norm(), _rings(3, 5, like))
    assert [_odd_side(side, 32, 32) for side in (1, 2, 3, 4, 28, 29)] == [3, 3, 3, 5, 29, 29]
    assert _odd_side(4, 4, 4) == 4  # the window cannot outgrow the image

    initial = _initial_l2(torch.zeros(2, 3, 32, 32), 0.5, generator)
    rows = initial.abs().sum(dim=(0, 1, 3)) > 0
    assert rows.tolist() == [False] + [True] * 30 + [False]  # five tiles of 6 from row 1
    assert torch.allclose(lp_norm(initial, "l2"), torch.full((2,), 0.5))
    for side in (3, 13, 29):
        proposal = _propose_l2(initial * 0.5, 0.5, side, generator)
        assert torch.allclose(lp_norm(proposal, "l2"), torch.full((2,), 0.5))


def without_name(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if key != "name"}


def test_the_strong_suite_is_autoattacks_standard_evaluation():
    """autoattack.py, version='standard': apgd-ce, apgd-t, fab-t, square in that order, 100 iterations, 1 run,
    9 target classes, 5,000 queries with p_init 0.8 and resc_schedule=False."""
    from gkp.entries.suites.strong import ENTRY as STRONG

    entries = STRONG.make(eps=8 / 255)
    expanded = {a["name"]: build(ATTACKS.get(a["name"]).params, without_name(a), "attack") for a in entries}
    assert list(expanded) == ["apgd_ce", "apgd_t", "fab_t", "square"]
    apgd_ce, apgd_t, fab_t, square = expanded.values()
    assert (apgd_ce.steps, apgd_ce.restarts) == (100, 1)
    assert (apgd_t.steps, apgd_t.targets, apgd_t.restarts) == (100, 9, 1)
    assert (fab_t.steps, fab_t.targets, fab_t.restarts) == (100, 9, 1)
    assert (fab_t.alpha_max, fab_t.eta, fab_t.beta) == (0.1, 1.05, 0.9)
    assert (square.queries, square.p_init, square.rescale_schedule) == (5000, 0.8, False)
    assert all(p.eps == 8 / 255 and p.norm == "linf" for p in expanded.values())
    rescaled = STRONG.make(eps=0.5, norm="l2", rescale_schedule=True)
    assert rescaled[-1]["rescale_schedule"] is True and {a["norm"] for a in rescaled} == {"l2"}


class Linear(nn.Module):
    """A linear classifier of flattened images: its decision boundaries are hyperplanes."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_reaches_a_linear_boundary_at_its_distance(norm):
    """On a two-class linear model FAB's linearisation is exact: it fools every image within 6% (eta's 5%
    overshoot) beyond its distance to the boundary, |f(x)| / ||w||_dual, and none below it."""
    torch.manual_seed(0)
    model = Linear(torch.randn(2, 12, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)).eval()
    x = torch.randn(40, 3, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    w = (model.weight[1] - model.weight[0]).detach()
    dual = w.abs().sum() if norm == "linf" else w.norm()
    with torch.no_grad():
        distance = (x.flatten(1) @ w).abs() / dual
    unbounded = Box(-math.inf, math.inf)
    fab = ATTACKS.get("fab_t")
    for factor, fooled in ((1.06, True), (0.99, False)):
        for i in range(len(x)):  # each image at its own eps
            params = build(fab.params, {"eps": factor * float(distance[i]), "norm": norm, "steps": 20}, "attack")
            x_adv = fab.run(model, x[i : i + 1], y[i : i + 1], params, None, unbounded)
            with torch.no_grad():
                assert bool(model(x_adv).argmax(1) != y[i]) is fooled
            assert fooled or torch.equal(x_adv, x[i : i + 1])  # the clean image where it fails


def test_fab_t_leaves_misclassified_and_unbroken_images_clean(trained_tiny):
    model, bundle = trained_tiny
    x, y = batch(bundle)
    x = x.clone()
    x[:, :, :4] = x[:, :, :4].round()  # pixels on the box's edges, as real images have: some misclassified
    params = spec("fab_t", eps=1e-4).params
    x_adv = ATTACKS.get("fab_t").run(model, x, y, params, torch.Generator().manual_seed(0), PIXELS)
    assert torch.equal(x_adv, x)
    with torch.no_grad():
        misclassified = model(x).argmax(1) != y
    assert misclassified.any()
    x_adv = ATTACKS.get("fab_t").run(model, x, y, spec("fab_t", eps=8 / 255).params, None, PIXELS)
    assert torch.equal(x_adv[misclassified], x[misclassified]) and not torch.equal(x_adv, x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fabs_boundary_step_is_the_shortest_one_inside_the_box(norm):
    """Against scipy: a linear program for L-inf, bounded least squares for L2 (the plane as a heavily weighted
    row); where the box keeps the plane out of reach, every coordinate moves to its edge towards it."""
    from scipy.optimize import linprog, lsq_linear

    from attacks.fab_t import boundary_step

    generator = np.random.default_rng(0)
    size = 8
    x = torch.from_numpy(generator.uniform(size=(60, size)))
    w = torch.from_numpy(generator.normal(size=(60, size)))
    w[::7, 3] = 0.0
    need = torch.from_numpy(generator.normal(size=60) * np.tile([0.2, 1.0, 4.0], 20))
    steps = boundary_step(x, w, need, PIXELS, norm).numpy()
    reachable = 0
    for t, v, r, d in zip(x.numpy(), w.numpy(), need.numpy(), steps, strict=True):
        low, high = -t, 1 - t
        assert (d >= low - 1e-12).all() and (d <= high + 1e-12).all()
        towards = np.sign(v) * np.sign(r)
        edge = np.where(towards > 0, high, np.where(towards < 0, low, 0.0))
        if abs(r) > v @ edge * np.sign(r):
            assert np.allclose(d, edge)
            continue
        reachable += 1
        assert v @ d == pytest.approx(r, abs=1e-9)
        if norm == "linf":
            bounds = [*zip(low, high, strict=True), (0, None)]
            ball = np.block([[np.eye(size), -np.ones((size, 1))], [-np.eye(size), -np.ones((size, 1))]])
            cost = np.r_[np.zeros(size), 1.0]
            best = linprog(cost, ball, np.zeros(2 * size), np.r_[v, 0][None], [r], bounds=bounds).fun
            assert np.abs(d).max() == pytest.approx(best, abs=1e-9)
        else:
            weight = 1e5
            rows = np.vstack([np.eye(size), weight * v[None]])
            best = lsq_linear(rows, np.r_[np.zeros(size), weight * r], bounds=(low, high), tol=1e-12).x
            assert np.abs(d - best).max() < 1e-6
    assert 20 < reachable < 60
