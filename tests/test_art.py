"""Cross-checks against the adversarial-robustness-toolbox (ART), the attack library of the SR-GKP
authors, on their ResNet-20 and real CIFAR-10 images. ART is an optional test dependency (``pip install
-e .[art]``); without it these tests are skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gkp.application.catalog import ATTACKS
from gkp.application.checkpoints.io import load_model
from gkp.application.config import EvalConfig, build_experiment
from gkp.foundation.schema import build
from gkp.foundation.threat import PIXELS, lp_norm
from gkp.mechanisms.engine.evaluate import attack_space, evaluated_model

art = pytest.importorskip("art")
from art.attacks import evasion  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402

BATCH = 200


@pytest.fixture(scope="module")
def authors(shared, authors_checkpoint):
    model, _ = load_model(authors_checkpoint)
    with np.load(shared / "data" / "cifar10_train_prefix.npz") as arrays:
        x = torch.from_numpy(arrays["images"][:1000]).permute(0, 3, 1, 2).float().div(255)
        y = torch.from_numpy(arrays["labels"][:1000])
    return model, x, y


def classifier(model, box) -> PyTorchClassifier:
    return PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(3, 32, 32),
        nb_classes=10,
        clip_values=(box.lower, box.upper),
    )


def correct(model, inputs: torch.Tensor, y: torch.Tensor) -> int:
    with torch.no_grad():
        return sum(
            int((model(inputs[i : i + BATCH]).argmax(1) == y[i : i + BATCH]).sum()) for i in range(0, len(y), BATCH)
        )


def ours(model, inputs, labels, name, params, box) -> torch.Tensor:
    return torch.cat(
        [
            ATTACKS.get(name).run(
                model, inputs[i : i + BATCH], labels[i : i + BATCH], params, torch.Generator().manual_seed(i), box
            )
            for i in range(0, len(labels), BATCH)
        ]
    )


@pytest.mark.parametrize("images", [pytest.param(1000, marks=pytest.mark.slow), 400])
def test_the_papers_fgsm_and_pgd_match_art(authors, images):
    model, x, y = authors
    x, y = x[:images], y[:images]
    suite = build_experiment(
        {"model": {"arch": "resnet20"}, "stages": ["eval"], "attacks": [{"suite": "paper-cifar"}]}
    ).attacks
    target, z, box = attack_space(model, x, suite[0])
    assert (round(box.lower, 4), round(box.upper, 4)) == (-2.4291, 2.7537)  # the authors' clip_values
    evaluated, _, _ = attack_space(evaluated_model(model, EvalConfig()), x, suite[0])  # as `gkp eval` attacks it
    estimator = classifier(target, box)  # ART on the model as loaded, as the authors ran it
    with torch.no_grad():
        predictions = torch.cat([evaluated(z[i : i + BATCH]).argmax(1) for i in range(0, len(y), BATCH)])
    for spec in suite:
        labels = predictions if spec.labels == "predicted" else y
        mine = correct(evaluated, ours(evaluated, z, labels, spec.name, spec.params, box), y)
        if spec.name == "fgsm":  # ART attacks the predictions when no labels are given, as the authors' code did
            reference = evasion.FastGradientMethod(estimator, eps=spec.params.eps, batch_size=BATCH).generate(
                x=z.numpy()
            )
        else:
            reference = evasion.ProjectedGradientDescent(
                estimator,
                eps=spec.params.eps,
                eps_step=spec.params.step_size,
                max_iter=spec.params.steps,
                num_random_init=0,
                batch_size=BATCH,
                verbose=False,
            ).generate(x=z.numpy(), y=y.numpy())
        theirs = correct(target, torch.from_numpy(reference), y)
        assert abs(mine - theirs) <= 2, (spec.label, mine, theirs)


def _robust_at(model, x, y, x_adv, eps: float) -> float:
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    return float((~fooled | (lp_norm(x_adv - x, "l2") > eps)).float().mean())


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, ours_params, build_art",
    [
        (
            "apgd_ce",
            {"eps": 8 / 255, "steps": 20},
            lambda c: evasion.AutoProjectedGradientDescent(
                c,
                norm=np.inf,
                eps=8 / 255,
                eps_step=16 / 255,
                max_iter=20,
                nb_random_init=1,
                batch_size=BATCH,
                verbose=False,
            ),
        ),
        (
            "square",
            {"eps": 8 / 255, "queries": 300},
            lambda c: evasion.SquareAttack(
                c, norm=np.inf, eps=8 / 255, max_iter=300, p_init=0.8, nb_restarts=1, batch_size=BATCH, verbose=False
            ),
        ),
    ],
)
def test_apgd_and_square_land_within_2_points_of_art(authors, name, ours_params, build_art):
    model, x, y = authors
    x, y = x[:500], y[:500]
    params = build(ATTACKS.get(name).params, ours_params, "attack")
    mine = correct(model, ours(model, x, y, name, params, PIXELS), y) / len(y)
    theirs = correct(
        model, torch.from_numpy(build_art(classifier(model, PIXELS)).generate(x=x.numpy(), y=y.numpy())), y
    )
    assert abs(mine - theirs / len(y)) <= 0.02


@pytest.mark.slow
def test_carlini_wagner_lands_within_2_points_of_art(authors):
    """At L2 eps 0.25 (ART's C&W takes about 5.5 s per image on 2 CPU cores: 50 images, about 5 minutes)."""
    model, x, y = authors
    x, y = x[:50], y[:50]
    settings = {"steps": 10, "binary_search_steps": 10, "learning_rate": 0.01, "initial_const": 0.01}
    mine = ours(model, x, y, "cw_l2", build(ATTACKS.get("cw_l2").params, settings, "attack"), PIXELS)
    attack = evasion.CarliniL2Method(
        classifier(model, PIXELS),
        confidence=0.0,
        learning_rate=0.01,
        binary_search_steps=10,
        max_iter=10,
        initial_const=0.01,
        batch_size=BATCH,
        verbose=False,
    )
    theirs = torch.from_numpy(attack.generate(x=x.numpy(), y=y.numpy()))
    assert abs(_robust_at(model, x, y, mine, 0.25) - _robust_at(model, x, y, theirs, 0.25)) <= 0.02
