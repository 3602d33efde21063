"""Grouped kernel pruning beyond SR-GKP's selection: the grouped convolution (equivalent to the masked
dense conv, saved and reloaded), the authors' MACs convention, and the ablation methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gkp.application.catalog import PRUNING_METHODS, build_model
from gkp.application.checkpoints.io import load_model, save_checkpoint
from gkp.entries.grouped_kernels import loop_reference as oracle
from gkp.foundation.contracts import model_spec
from gkp.foundation.schema import build
from gkp.mechanisms.counting import measure
from gkp.mechanisms.layers import forms
from gkp.mechanisms.layers.forms import choose_forms
from gkp.mechanisms.layers.grouped_conv import FORMS, GroupedKernelConv2d
from gkp.mechanisms.pruning.plan import Plan
from gkp.mechanisms.pruning.surgery import apply, apply_mask

from test_pruning import randomise_batchnorm


def plan_for(model, method: str, rate: float = 0.4375, **params) -> Plan:
    entry = PRUNING_METHODS.get(method)
    settings = build(entry.params, params, "prune.params")
    return Plan(method, rate, entry.select(model, rate, settings).layers, params)


CASES = [
    ("resnet20", {}, "srgkp", {}),
    ("resnet56", {}, "srgkp", {}),
    ("vgg16", {}, "gkp_random", {}),
    ("resnet50", {"stem": "small"}, "gkp_random", {}),
    ("resnet50", {"stem": "small"}, "gkp_random", {"scope": "all"}),
]


def assert_same_logits(first: torch.Tensor, second: torch.Tensor) -> None:
    """Equal to 1e-5, relative to the logits' scale (float32 sums in another order differ by ~1e-7)."""
    assert (first - second).abs().max() <= 1e-5 * max(1.0, second.abs().max().item())


@pytest.mark.parametrize("arch, args, method, params", CASES, ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_grouped_model_equals_the_masked_dense_model_and_survives_a_round_trip(arch, args, method, params, tmp_path):
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model(arch, **args))
    plan = plan_for(model, method, **params)
    grouped, masked = apply(model, plan), apply_mask(model, plan)
    assert any(isinstance(m, GroupedKernelConv2d) for m in grouped.modules())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        reference = masked(x)
        assert_same_logits(grouped(x), reference)
        exact = (grouped.double()(x.double()) - masked.double()(x.double())).abs().max()
        assert exact <= 1e-9  # in float64 the two computations agree to rounding
    save_checkpoint(tmp_path / "grouped.ckpt", grouped.float())
    reloaded, _ = load_model(tmp_path / "grouped.ckpt")
    moved = reloaded.to("cpu", torch.float64).to(torch.float32)
    with torch.no_grad():
        assert_same_logits(moved(x), reference)
    assert model_spec(reloaded).plan == plan.to_dict()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_grouped_model_moves_to_the_gpu():
    model = randomise_batchnorm(build_model("resnet20"))
    plan = plan_for(model, "gkp_random")
    grouped, masked = apply(model, plan), apply_mask(model, plan)
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():  # float64, which cuDNN never runs in TF32 (float32 convolutions may differ by 1e-3)
        on_gpu = grouped.to("cuda", torch.float64)(x.cuda()).cpu()
        assert (on_gpu - masked.double()(x)).abs().max() <= 1e-9


def test_each_pruned_conv_loses_exactly_the_rate():
    model = build_model("resnet20")
    grouped = apply(model, plan_for(model, "gkp_random"))
    for name in model.grouped_kernel_targets():
        dense, pruned = model.get_submodule(name), grouped.get_submodule(name)
        assert pruned.weight.numel() / dense.weight.numel() == pruned.keep / dense.in_channels == 9 / 16
        assert pruned.gather.dtype == torch.long


def test_output_orders_fold_into_the_next_layers_where_the_architecture_allows():
    model = build_model("resnet20")
    grouped = apply(model, plan_for(model, "gkp_random"))
    block = grouped.layer2[1]
    assert block.conv1.restore is None  # bn1 and conv2's gather take the grouped order instead
    assert sorted(block.conv2.restore.tolist()) == list(range(32))  # the residual sum needs filter order
    assert "layer2.1.conv1.restore" not in grouped.state_dict()


@pytest.mark.parametrize(
    "arch, dense, pruned",
    [
        ("resnet32", (69.479, 0.464), (39.545, 0.263)),
        ("resnet56", (126.561, 0.853), (71.855, 0.482)),
        ("resnet110", (254.995, 1.728), (144.551, 0.976)),
    ],
)
def test_the_authors_counting_convention_gives_the_papers_figures(arch, dense, pruned):
    model = build_model(arch)
    grouped = apply(model, plan_for(model, "gkp_random"))
    for net, (macs, params) in ((model, dense), (grouped, pruned)):
        cost = measure(net, 32, convention="authors")
        assert (round(cost.macs / 1e6, 3), round(cost.params / 1e6, 3)) == (macs, params)


def test_vgg16_parameters_match_the_paper_before_and_after_pruning():
    model = build_model("vgg16")
    grouped = apply(model, plan_for(model, "gkp_random"))
    assert (round(measure(model, 32).params / 1e6, 3), round(measure(grouped, 32).params / 1e6, 3)) == (14.728, 8.293)


def _single_layer_model(weight: np.ndarray):
    model = build_model("resnet8")
    with torch.no_grad():
        model.layer1[0].conv1.weight.copy_(torch.from_numpy(weight))
    return model


def test_greedy_selection_equals_its_oracle():
    weight = torch.randn(16, 16, 3, 3, generator=torch.Generator().manual_seed(4)).numpy()
    model = _single_layer_model(weight)
    layer = plan_for(model, "gkp_greedy", groups=4).layers["layer1.0.conv1"]
    w = weight.astype(np.float64)
    order = list(layer.filter_order)
    assert order == oracle.snake_order([oracle.smoothness_of(w[f].tolist()) for f in range(16)], 4)
    from scipy.spatial.distance import cdist

    for g, kept in enumerate(layer.kept):
        members = order[g * 4 : (g + 1) * 4]
        vectors = np.stack([w[members, j].ravel() for j in range(16)])
        sim = (1 - cdist(vectors, vectors)).tolist()
        assert list(kept) == oracle.greedy_group(sim, keep=9, match=1)


def test_least_smooth_keeps_the_smoothest_and_l2_the_largest():
    weight = torch.randn(8, 16, 3, 3, generator=torch.Generator().manual_seed(5)).numpy()
    model = build_model("resnet8")
    model.layer1[0].conv1 = torch.nn.Conv2d(16, 8, 3, padding=1, bias=False)
    model.layer1[0].bn1 = torch.nn.BatchNorm2d(8)
    model.layer1[0].conv2 = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False)
    with torch.no_grad():
        model.layer1[0].conv1.weight.copy_(torch.from_numpy(weight))
    smooth_layer = plan_for(model, "gkp_least_smooth", groups=2).layers["layer1.0.conv1"]
    large_layer = plan_for(model, "gkp_l2", groups=2).layers["layer1.0.conv1"]
    w = weight.astype(np.float64)
    for g in range(2):
        members = list(smooth_layer.filter_order[g * 4 : (g + 1) * 4])
        smooth = [oracle.smoothness_of([w[f, j].tolist() for f in members]) for j in range(16)]
        assert list(smooth_layer.kept[g]) == sorted(sorted(range(16), key=lambda j: smooth[j])[:9])
        norms = [np.linalg.norm(w[members, j]) for j in range(16)]
        assert list(large_layer.kept[g]) == sorted(sorted(range(16), key=lambda j: -norms[j])[:9])


def test_random_kernels_are_seeded_and_per_layer():
    model = build_model("resnet20")
    first, again = plan_for(model, "gkp_random", seed=1), plan_for(model, "gkp_random", seed=1)
    other = plan_for(model, "gkp_random", seed=2)
    assert first.layers == again.layers and first.layers != other.layers
    assert all(len(set(k)) == len(k) for layer in first.layers.values() for k in layer.kept)


@pytest.mark.parametrize("form", FORMS)
def test_every_form_computes_the_same_function_and_gradient(form):
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model("resnet20"))
    grouped, masked = apply(model, plan_for(model, "srgkp")), apply_mask(model, plan_for(model, "srgkp"))
    for layer in grouped.modules():
        if isinstance(layer, GroupedKernelConv2d):
            layer.form = form
    x = torch.rand(2, 3, 32, 32)
    assert_same_logits(grouped(x).detach(), masked(x).detach())
    layer = grouped.layer3[0].conv1
    inputs = torch.randn(2, 32, 16, 16)
    layer(inputs).square().sum().backward()
    gradient = layer.weight.grad.clone()
    layer.weight.grad, layer.form = None, "grouped"
    layer(inputs).square().sum().backward()
    assert torch.allclose(gradient, layer.weight.grad, rtol=1e-4, atol=1e-4)


def test_choose_forms_picks_a_timed_form_for_every_grouped_layer():
    model = build_model("resnet20")
    grouped = apply(model, plan_for(model, "gkp_random"))
    chosen = choose_forms(grouped, 32, batch_size=2, rounds=1)
    layers = [name for name, m in grouped.named_modules() if isinstance(m, GroupedKernelConv2d)]
    assert sorted(chosen) == sorted(layers) and set(chosen.values()) <= set(FORMS)
    assert all(grouped.get_submodule(name).form == form for name, form in chosen.items())


@pytest.mark.parametrize("channels_last", [False, True])
def test_choose_forms_times_in_the_memory_format_that_will_run(channels_last, monkeypatch):
    model = build_model("resnet20")
    grouped = apply(model, plan_for(model, "gkp_random"))
    seen = set()

    def recording(layer, x, form, train):
        seen.add(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return timed(layer, x, form, train)

    timed = forms._time_form
    monkeypatch.setattr(forms, "_time_form", recording)
    choose_forms(grouped, 32, batch_size=2, channels_last=channels_last, rounds=1)
    assert seen == {channels_last}


def chosen_forms_win_the_whole_model(monkeypatch) -> None:
    """Whole-model timing that keeps whatever forms the layers' timings chose."""
    monkeypatch.setattr(forms, "_time_pass", lambda net, x, train: 0.5 if chosen_somewhere(net) else 1.0)


def chosen_somewhere(net) -> bool:
    return any(m.form != "dense" for m in net.modules() if isinstance(m, GroupedKernelConv2d))


def test_form_timings_are_kept_so_a_layer_shape_is_timed_once_per_machine(monkeypatch):
    model = build_model("resnet20")
    grouped = apply(model, plan_for(model, "gkp_random"))
    timed_calls = []

    def counting(layer, x, form, train):
        timed_calls.append(form)
        return {"grouped": 3.0, "per_group": 2.0, "dense": 1.0}[form]

    monkeypatch.setattr(forms, "_time_form", counting)
    chosen_forms_win_the_whole_model(monkeypatch)
    timings: dict[str, str] = {}
    first = choose_forms(grouped, 32, batch_size=2, timings=timings)
    assert set(first.values()) == {"dense"} and timed_calls and all("| forward |" in key for key in timings)
    calls = len(timed_calls)
    timings = {key: "per_group" for key in timings}  # what an earlier run recorded wins over timing
    second = choose_forms(grouped, 32, batch_size=2, timings=timings)
    assert len(timed_calls) == calls and set(second.values()) == {"per_group"}


@pytest.mark.parametrize(("per_group", "expected"), [(0.85, "per_group"), (0.95, "dense")])
def test_a_form_replaces_the_dense_one_only_where_it_is_clearly_faster(per_group, expected, monkeypatch):
    """Timed in alternating rounds (the median of each form), a form must take at most 90% of the dense
    form's time to be chosen: a timing accident on a loaded machine must not make a pruned model slower."""
    model = build_model("resnet20")
    grouped = apply(model, plan_for(model, "gkp_random"))
    order = []

    def timed(layer, x, form, train):
        order.append(form)
        return {"grouped": 2.0, "per_group": per_group, "dense": 1.0}[form]

    monkeypatch.setattr(forms, "_time_form", timed)
    chosen_forms_win_the_whole_model(monkeypatch)
    chosen = choose_forms(grouped, 32, batch_size=2, rounds=3)
    assert set(chosen.values()) == {expected}
    assert order[: 2 * len(FORMS)] == [*FORMS, *FORMS]  # round by round, every form once in each


@pytest.mark.parametrize(("model_ratio", "expected"), [(0.95, "per_group"), (0.99, "dense")])
def test_the_whole_model_must_beat_the_dense_form_or_every_layer_runs_dense(model_ratio, expected, monkeypatch):
    """Layers that each win alone can lose together: the chosen forms stay only where the whole model takes
    at most 98% of its time in the dense form everywhere; the verdict is kept with the layers' timings."""
    model = build_model("resnet20")
    grouped = apply(model, plan_for(model, "gkp_random"))
    model_passes = []

    def timed_model(net, x, train):
        model_passes.append(chosen_somewhere(net))
        return model_ratio if model_passes[-1] else 1.0

    monkeypatch.setattr(forms, "_time_form", lambda layer, x, form, train: 0.5 if form == "per_group" else 1.0)
    monkeypatch.setattr(forms, "_time_pass", timed_model)
    timings: dict[str, str] = {}
    chosen = choose_forms(grouped, 32, batch_size=2, rounds=3, timings=timings)
    assert set(chosen.values()) == {expected}
    assert {m.form for m in grouped.modules() if isinstance(m, GroupedKernelConv2d)} == {expected}
    assert model_passes == [True, False] * 4  # a warm-up round, then 3 alternating rounds
    assert sum("| model " in key for key in timings) == 1
    again = choose_forms(grouped, 32, batch_size=2, rounds=3, timings=timings)
    assert again == chosen and len(model_passes) == 8  # the verdict was kept, not timed again


def test_a_model_whose_layers_all_run_dense_is_not_timed_whole(monkeypatch):
    model = build_model("resnet20")
    grouped = apply(model, plan_for(model, "gkp_random"))
    monkeypatch.setattr(forms, "_time_form", lambda layer, x, form, train: 1.0 if form == "dense" else 2.0)
    monkeypatch.setattr(forms, "_time_pass", lambda *args: pytest.fail("the whole model was timed"))
    assert set(choose_forms(grouped, 32, batch_size=2, rounds=1).values()) == {"dense"}


def test_the_same_grouped_command_gives_the_same_numbers(tmp_path):
    """Fine-tuning runs in the dense form and evaluation forms are timed once per machine, so two runs of
    one SR-GKP config agree exactly (timed forms used to change the fine-tuned weights between runs)."""
    from gkp.application.checkpoints.io import read_checkpoint
    from gkp.application.config import build_experiment
    from gkp.application.pipeline.run import run_experiment

    from conftest import tiny_config

    config = tiny_config(prune={"method": "srgkp", "rate": 0.5}, train={"epochs": 1}, finetune={"epochs": 1})
    results = [run_experiment(build_experiment(config), out=tmp_path / f"run{i}") for i in (0, 1)]
    states = [read_checkpoint(tmp_path / f"run{i}" / "finetuned.ckpt")["state_dict"] for i in (0, 1)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert [a["correct"] for a in results[0]["attacks"]] == [a["correct"] for a in results[1]["attacks"]]
    assert sum(results[0]["forms"].values()) == 6  # ResNet-8: each block's two convs, grouped


def test_a_form_far_slower_than_dense_in_its_first_round_is_not_timed_again(monkeypatch):
    """On a CPU the grouped forms often run several times slower than the dense conv: timing them over
    every round was most of a first evaluation's cost. A form over 1.5x the dense time in the first timed
    round (after the warm-up round) is dropped; the others go on."""
    model = build_model("resnet20")
    grouped = apply(model, plan_for(model, "gkp_random"))
    calls = []

    def timed(layer, x, form, train):
        calls.append(form)
        return {"grouped": 1.6, "per_group": 0.5, "dense": 1.0}[form]

    monkeypatch.setattr(forms, "_time_form", timed)
    chosen_forms_win_the_whole_model(monkeypatch)
    timings: dict[str, str] = {}
    chosen = choose_forms(grouped, 32, batch_size=2, rounds=5, timings=timings)
    shapes = sum("| model " not in key for key in timings)
    assert set(chosen.values()) == {"per_group"}
    assert calls.count("grouped") == 2 * shapes  # the warm-up round and the first timed one
    assert calls.count("per_group") == calls.count("dense") == 6 * shapes


def test_shapes_whose_timing_would_cost_over_5_percent_of_the_passes_run_dense_and_unrecorded(monkeypatch, caplog):
    """Given the passes it chooses for, the layer shapes are timed only where that costs about 5% of them at
    most (estimated from counts, so the same command decides alike every time): a small evaluation runs
    them dense and leaves them unrecorded, for a larger one to time; the log says which happened."""
    model = build_model("resnet20")
    grouped = apply(model, plan_for(model, "gkp_random"))
    timed = []
    monkeypatch.setattr(forms, "_time_form", lambda layer, x, form, train: timed.append(form) or 1.0)
    layers = sum(isinstance(m, GroupedKernelConv2d) for m in grouped.modules())
    shapes = len({key for key in _recorded(grouped) if "| model " not in key})
    cost = forms._timing_passes(shapes, layers, rounds=5)
    timed.clear()
    timings: dict[str, str] = {}
    with caplog.at_level("INFO", logger=forms.__name__):
        small = choose_forms(grouped, 32, batch_size=2, timings=timings, passes=int(cost / 0.05) - 1)
        assert set(small.values()) == {"dense"} and not timed and not timings
        assert (
            f"{shapes} layer shape(s) left untimed, dense: timing them would cost about {cost:.0f} passes"
            in caplog.text
        )
        large = choose_forms(grouped, 32, batch_size=2, timings=timings, passes=int(cost / 0.05) + 1)
    assert set(large.values()) == {"dense"} and timed and len(timings) == shapes
    assert f"timing {shapes} layer shape(s) took" in caplog.text


def _recorded(grouped) -> dict[str, str]:
    """The timings choose_forms records for ``grouped`` with every shape timed."""
    timings: dict[str, str] = {}
    choose_forms(grouped, 32, batch_size=2, rounds=1, timings=timings)
    return timings


def test_an_evaluation_bounds_the_form_timing_by_its_own_passes(tmp_path, monkeypatch):
    from gkp.application import api
    from gkp.application.config import build_experiment
    from gkp.application.pipeline.run import run_experiment

    from conftest import tiny_config

    asked = []
    monkeypatch.setattr(api, "choose_forms", lambda *args, **kwargs: asked.append(kwargs["passes"]) or {})
    config = tiny_config(prune={"method": "srgkp", "rate": 0.5}, train={"epochs": 1}, finetune={"epochs": 1})
    config["data"]["eval_batch_size"] = 32  # 4 batches of the 128 test images
    run_experiment(build_experiment({**config, "stages": ["train", "prune", "eval"]}), out=tmp_path / "run")
    assert asked == [4 * (1 + 4 + 10)]  # clean, FGSM (one gradient step: 3 passes, then the prediction), PGD-3
