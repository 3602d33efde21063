"""LRF (baselines/lrf.py) against small readable versions of its official code on hand-made weights: the
least-squares lambda, the replacement error and its scaling, the compensation (an exactly dependent filter
or input leaves the output unchanged), the channel counts and the distillation loss; then the ratio's
MACs, end to end with an interruption and resume, and on a trained ResNet-20 (slow)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from baselines import lrf
from gkp.application.catalog import LOSSES, build_model
from gkp.application.checkpoints.io import load_model, read_checkpoint
from gkp.application.config import build_experiment
from gkp.application.pipeline.run import run_experiment
from gkp.foundation.contracts import StepContext
from gkp.mechanisms.counting import measure
from gkp.mechanisms.layers.restructured import AdaptedConv2d
from gkp.mechanisms.pruning.plan import AdaptersPlan, Plan
from gkp.mechanisms.pruning.surgery import apply

from conftest import run_interrupted_then_resumed, shared_cifar_npz, tiny_config


def adapted(out_channels=5, in_channels=4, seed=0) -> AdaptedConv2d:
    """A conv between random (not identity) 1x1s, in float64."""
    generator = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator, dtype=torch.float64))
    module = AdaptedConv2d.from_dense(conv, list(range(in_channels)), list(range(out_channels)))
    with torch.no_grad():
        for adapter in (module.pre, module.post):
            adapter.weight.add_(0.3 * torch.randn(adapter.weight.shape, generator=generator, dtype=torch.float64))
    return module


def test_lambda_is_the_least_squares_combination_of_the_other_rows_and_the_error_its_residual():
    rows = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [0.5, -2.0, -1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    errors, lambdas = lrf.replacements(rows)
    assert errors[2] == pytest.approx(0.0, abs=1e-12)  # row 2 = 0.5 row 0 - 2 row 1
    assert lambdas[2].tolist() == pytest.approx([0.5, -2.0, 0.0], abs=1e-12)
    # rows 0-2 are dependent, so the code's explicit inverse of A A^T fails for row 3; least squares
    # gives its projection on their span all the same
    others = rows[:3]
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.inv(others @ others.T)
    projection = torch.linalg.pinv(others) @ others
    assert errors[3].item() == pytest.approx((rows[3] - rows[3] @ projection).norm().item(), rel=1e-9)
    assert (rows[3] - lambdas[3] @ others).norm().item() == pytest.approx(errors[3].item(), rel=1e-9)


def test_all_regressions_from_one_inverse_equal_one_least_squares_each():
    rows = torch.randn(12, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors, lambdas = lrf.replacements(rows)
    expected_errors, expected_lambdas = lrf.least_squares(rows)
    assert torch.allclose(errors, expected_errors, rtol=1e-9) and torch.allclose(lambdas, expected_lambdas, atol=1e-9)


def test_an_exactly_dependent_filter_goes_first_and_the_compensation_leaves_the_output_unchanged():
    module = adapted()
    with torch.no_grad():  # filter 3 = filter 0 - 0.5 filter 4
        module.conv.weight[3] = module.conv.weight[0] - 0.5 * module.conv.weight[4]
    x = torch.rand(2, 4, 6, 6, dtype=torch.float64)
    pruned, removed = lrf.remove_output(module)
    assert removed in (0, 3, 4)  # any of the three is the others' combination
    assert pruned.conv.out_channels == 4 and pruned.post.in_channels == 4
    assert torch.allclose(pruned(x), module(x), atol=1e-5)


def test_an_exactly_dependent_input_goes_first_and_the_compensation_leaves_the_output_unchanged():
    module = adapted(seed=1)
    with torch.no_grad():  # input slice 1 = 2 x slice 2 + slice 3
        module.conv.weight[:, 1] = 2 * module.conv.weight[:, 2] + module.conv.weight[:, 3]
    x = torch.rand(2, 4, 6, 6, dtype=torch.float64)
    pruned, removed = lrf.remove_input(module)
    assert removed in (1, 2, 3) and pruned.conv.in_channels == 3 and pruned.pre.out_channels == 3
    assert torch.allclose(pruned(x), module(x), atol=1e-5)


def test_the_error_is_scaled_by_the_norm_of_the_adapter_column_it_feeds():
    module = adapted(seed=2)
    errors, _ = lrf.replacements(module.conv.weight.flatten(1))
    columns = module.post.weight.detach()[:, :, 0, 0].norm(dim=0)
    with torch.no_grad():  # the raw error's best filter feeds a post column a thousand times larger
        module.post.weight[:, int(errors.argmin())] *= 1000
    _, removed = lrf.remove_output(module)
    scaled = errors * columns
    scaled[int(errors.argmin())] *= 1000
    assert removed == int(scaled.argmin()) != int(errors.argmin())


def test_the_channel_counts_are_the_codes_rounding_and_never_empty_a_conv():
    assert [lrf.removed_count(c, 0.35) for c in (16, 32, 64)] == [6, 11, 22]
    assert [lrf.removed_count(c, 0.46) for c in (16, 32, 64)] == [7, 15, 29]
    assert lrf.removed_count(10, 0.25) == 2  # 2.5 rounds to even, as Python's round in the code
    assert lrf.removed_count(3, 0.99) == 2


def test_the_distillation_is_the_codes_kl_summed_over_classes_per_image_without_t_squared():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 10, generator=generator), torch.randn(6, 10, generator=generator)
    y = torch.randint(0, 10, (6,), generator=generator)
    entry = LOSSES.get("distill")
    objective = entry.objective(entry.params(), 0.0)
    model, teacher_model = (lambda logits: lambda x: logits)(student), (lambda x: teacher)
    loss, _ = objective(StepContext(model, torch.zeros(6), y, teacher=teacher_model))
    code = F.kl_div(F.log_softmax(student / 2, 1), F.softmax(teacher / 2, 1), reduction="sum") / 6
    assert loss.item() == pytest.approx((F.cross_entropy(student, y) + code).item(), rel=1e-6)


def test_identity_adapters_leave_the_model_unchanged():
    model = build_model("resnet20").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        prepared = lrf.prepare(model, None)
        assert isinstance(prepared.layer3[2].conv2, AdaptedConv2d)
        assert torch.allclose(prepared(x), expected, atol=1e-5)


def ratio_plan(model, rate: float) -> Plan:
    layers = {}
    for name in model.grouped_kernel_targets("3x3"):
        conv = model.get_submodule(name)
        keep_in = range(conv.in_channels - lrf.removed_count(conv.in_channels, rate))
        keep_out = range(conv.out_channels - lrf.removed_count(conv.out_channels, rate))
        layers[name] = AdaptersPlan(tuple(keep_in), tuple(keep_out))
    return Plan("lrf", rate, layers)


@pytest.mark.parametrize(
    "arch, rate, params, macs",
    [
        ("resnet32", 0.35, 0.268659, 39.089920),
        ("resnet56", 0.35, 0.492731, 70.846208),
        ("resnet110", 0.35, 0.996893, 142.297856),
        ("resnet32", 0.46, 0.196474, 29.552000),
        ("resnet110", 0.5, 0.630490, 91.865728),
    ],
)
def test_the_ratio_gives_the_papers_parameters_and_our_count_of_its_macs(arch, rate, params, macs):
    """Adapters included. The paper's LRF rows print 0.997M (ResNet-110, r 0.35), 0.196M (ResNet-32, r
    0.46) and 0.638M (ResNet-110, r 0.5, close to 0.630); their MACs (38.791, 71.009, 144.405, 29.915,
    94.479M) came from LRF's thop count, within 2% of these multiply counts."""
    model = build_model(arch)
    cost = measure(apply(model, ratio_plan(model, rate)), 32)
    assert cost.params / 1e6 == pytest.approx(params, abs=1e-6) and cost.macs / 1e6 == pytest.approx(macs, abs=1e-6)


@pytest.mark.parametrize("arch", ["resnet32", "resnet56", "resnet110"])
def test_each_paper_config_searches_then_distils_300_epochs_with_the_codes_decay(arch):
    from pathlib import Path

    from gkp.application.config import load_experiment
    from gkp.foundation.contracts import PruningContext, Recipe

    exp = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "paper" / f"lrf_{arch}.yaml")
    model = build_model(arch)
    phases, _ = lrf.build(model, exp.prune.rate, exp.prune.params, PruningContext(), Recipe.of(exp.finetune))
    init, *removals, final = phases
    assert (init.recipe.epochs, init.recipe.lr) == (20, 1e-3) and init.step is lrf.cross_entropy_step
    assert len(removals) == 2 * len(model.grouped_kernel_targets("3x3")) and removals[0].name.startswith("layer3")
    assert all((phase.recipe.epochs, phase.recipe.lr) == (1, 1e-3) for phase in removals)
    assert (final.recipe.epochs, final.recipe.lr, final.recipe.milestones) == (300, 0.01, (151,))
    assert exp.finetune.distill is not None and exp.finetune.weight_decay == 1e-4 and exp.prune.rate == 0.35


# ------------------------------------------------------------------------------------------- end to end


DIGITS = {"name": "digits", "batch_size": 64, "image_size": None, "train_size": 128, "test_size": 64}


def lrf_config(stages=("train", "prune", "eval")) -> dict:
    """ResNet-8 (6 adapted convs) on digits: one init epoch, one after each of the 12 removals, one final
    epoch, distilling from the dense model."""
    prune = {"method": "lrf", "rate": 0.5, "params": {"init_epochs": 1}}
    finetune = {"epochs": 14, "lr": 0.01, "eval_every": 0, "distill": {"temperature": 2}}
    return tiny_config(
        stages=list(stages), data=DIGITS, train={"epochs": 1}, prune=prune, finetune=finetune, attacks=[]
    )


def test_lrf_runs_end_to_end_and_an_interrupted_search_resumes_bit_identically(tmp_path, monkeypatch):
    config = build_experiment(lrf_config())
    results = run_experiment(config, out=tmp_path / "straight")
    plan = json.loads((tmp_path / "straight" / "plan.json").read_text())
    widths = {"layer1.0.conv1": (16, 16), "layer2.0.conv1": (16, 32), "layer3.0.conv2": (64, 64)}
    for name, (inputs, outputs) in widths.items():
        layer = plan["layers"][name]
        assert layer["type"] == "adapters"
        assert (len(layer["keep_in"]), len(layer["keep_out"])) == (inputs // 2, outputs // 2)
    pruned, _ = load_model(tmp_path / "straight" / "pruned.ckpt")
    assert isinstance(pruned.layer2[0].conv1, AdaptedConv2d) and pruned.layer2[0].conv1.conv.weight.shape[:2] == (
        16,
        8,
    )
    assert results["macs"] < 0.6 * plan["metadata"]["dense"]["macs"]

    # interrupted after the train epoch and five removal epochs, into the sixth (2 batches an epoch)
    run_interrupted_then_resumed(config, tmp_path / "interrupted", monkeypatch, [2 + 2 * 5 + 1])
    straight = read_checkpoint(tmp_path / "straight" / "pruned.ckpt")
    resumed = read_checkpoint(tmp_path / "interrupted" / "pruned.ckpt")
    assert straight["plan"] == resumed["plan"]
    assert all(torch.equal(straight["state_dict"][k], resumed["state_dict"][k]) for k in straight["state_dict"])


@pytest.mark.slow
def test_lrf_prunes_a_trained_resnet20_on_real_cifar_images(tmp_path, shared, authors_checkpoint):
    """The authors' trained ResNet-20 and 2,660 real CIFAR-10 images (2,000 to train on, 660 held out):
    r 0.35, one init epoch, one epoch after each of the 36 removals and two final ones, distilling; the
    pruned model stays far above chance (10%) on the held-out images (0.476 measured, the dense 0.997)."""
    config = {
        "name": "lrf",
        "device": "cpu",
        "stages": ["prune", "eval"],
        "model": {"checkpoint": str(authors_checkpoint)},
        "data": shared_cifar_npz(shared, tmp_path, train=2000),
        "prune": {"method": "lrf", "rate": 0.35, "params": {"init_epochs": 1}},
        "finetune": {"epochs": 39, "lr": 0.01, "eval_every": 0, "weight_decay": 1e-4, "distill": {"temperature": 2}},
        "eval": {"models": ["final", "dense"]},
    }
    results = run_experiment(build_experiment(config), out=tmp_path / "run")
    dense = results["other_models"][0]
    print(f"lrf: pruned {results['benign']['accuracy']:.4f}, dense {dense['benign']['accuracy']:.4f}")
    assert results["benign"]["accuracy"] > 0.3 and results["macs"] < 0.6 * dense["macs"]
