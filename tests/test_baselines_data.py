"""The data-dependent filter-pruning baselines (HRank, CHIP, Taylor) against loop versions of the papers'
criteria, on hand-made inputs with known answers and on a seeded ResNet-8 with random images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines import chip, hrank, taylor
from gkp.application.catalog import build_model
from gkp.foundation.contracts import PruningContext
from gkp.mechanisms.pruning.dependencies import filter_groups
from gkp.mechanisms.pruning.plan import keep_top_k


def seeded_resnet8() -> torch.nn.Module:
    """ResNet-8 with random BatchNorm parameters and running statistics (so beta and the stats matter)."""
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.weight.data = torch.rand(size) + 0.5
            module.bias.data = torch.randn(size) * 0.5
            module.running_mean = torch.randn(size) * 0.1
            module.running_var = torch.rand(size) + 0.5
    return model


def random_batches(count: int = 2, size: int = 8, dtype: torch.dtype = torch.float32) -> list:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.rand(size, 3, 32, 32, generator=generator, dtype=dtype),
            torch.randint(0, 10, (size,), generator=generator),
        )
        for _ in range(count)
    ]


def context(batches: list) -> PruningContext:
    return PruningContext(calibration=lambda: batches)


def captured_maps(model: torch.nn.Module, batches: list) -> dict[str, list[torch.Tensor]]:
    """Each group's relu(bn output) per batch, captured with plain forward hooks in eval mode."""
    maps: dict[str, list[torch.Tensor]] = {}
    hooks = [
        model.get_submodule(group.bn).register_forward_hook(
            lambda module, inputs, output, name=name: maps.setdefault(name, []).append(F.relu(output))
        )
        for name, group in filter_groups(model).items()
    ]
    model.eval()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for hook in hooks:
        hook.remove()
    return maps


def check_selection(method, reference: dict[str, np.ndarray], model: torch.nn.Module, batches: list) -> None:
    """``select`` at rate 0.5 keeps half of each layer: the top reference scores, lower index on ties."""
    selection = method.select(model, 0.5, method.params(), context(batches))
    plan = selection.layers
    assert method.calibrated
    assert set(plan) == set(reference) == set(filter_groups(model))
    for name, layer in plan.items():
        assert len(layer.kept) == len(reference[name]) // 2
        assert layer.kept == keep_top_k(reference[name], len(reference[name]) // 2)
    assert selection.notes["calibration"] == {"batches": len(batches), "images": sum(len(y) for _, y in batches)}


# ------------------------------------------------------------------ HRank


def maps_of_rank(ranks: torch.Tensor, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, C, h, w) maps, map (n, c) a sum of ranks[n, c] outer products of random vectors."""
    generator = torch.Generator().manual_seed(2)
    maps = torch.zeros(*ranks.shape, h, w, dtype=dtype)
    for index in np.ndindex(*ranks.shape):
        for _ in range(int(ranks[index])):
            u = torch.randn(h, 1, generator=generator, dtype=dtype)
            v = torch.randn(1, w, generator=generator, dtype=dtype)
            maps[index] += u @ v
    return maps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hrank_ranks_of_maps_of_known_rank(dtype):
    ranks = torch.tensor([[0, 1, 2, 3, 6], [6, 5, 4, 1, 0], [2, 2, 3, 3, 1]])
    maps = maps_of_rank(ranks, 8, 6, dtype)
    # float32 maps: float64 SVD with float64's eps would count the rounding noise as rank
    assert torch.equal(hrank.feature_map_ranks(maps), ranks)


def test_hrank_scores_and_selection_match_loop():
    model, batches = seeded_resnet8(), random_batches()
    reference = {}
    for name, per_batch in captured_maps(model, batches).items():
        maps = torch.cat(per_batch).numpy()
        ranks = [[np.linalg.matrix_rank(maps[i, j]) for j in range(maps.shape[1])] for i in range(len(maps))]
        reference[name] = np.mean(ranks, axis=0)
    scores = hrank.score(model, filter_groups(model), hrank.HRankParams(), context(batches))
    for name in reference:
        np.testing.assert_array_equal(scores[name], reference[name])
    assert any(len(np.unique(s)) < len(s) for s in scores.values())  # ties occur and are resolved by index
    check_selection(hrank.ENTRY, reference, model, batches)


# ------------------------------------------------------------------ CHIP


def loop_channel_independence(maps: torch.Tensor) -> torch.Tensor:
    """CI(n, j) = ||A_n||_* - ||A_n with row j zeroed||_*, one image and one channel at a time (float64)."""
    matrices = maps.flatten(2).double()
    ci = torch.zeros(matrices.shape[:2], dtype=torch.float64)
    for n, a in enumerate(matrices):
        for j in range(len(a)):
            deleted = a.clone()
            deleted[j] = 0
            ci[n, j] = torch.linalg.matrix_norm(a, "nuc") - torch.linalg.matrix_norm(deleted, "nuc")
    return ci


@pytest.fixture
def one_thread():
    """Many tiny SVDs run faster on one thread than on threads fighting for a loaded machine's cores."""
    with chip.one_cpu_thread(torch.device("cpu")):
        yield


def test_chip_known_answers():
    r = torch.tensor([1.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    s = torch.tensor([0, 1.0, 0, 0, 0, 0], dtype=torch.float64)
    z = torch.zeros(6, dtype=torch.float64)
    # rows r, r, s, 0: singular values sqrt(2), 1; deleting a copy of r leaves 1 + 1, deleting s leaves sqrt(2)
    ci = chip.channel_independence(torch.stack([r, r, s, z]).reshape(1, 4, 2, 3))
    np.testing.assert_allclose(ci[0].numpy(), [np.sqrt(2) - 1, np.sqrt(2) - 1, 1.0, 0.0], atol=1e-12)


def test_chip_zero_and_duplicated_channels_on_random_maps():
    maps = torch.rand(3, 5, 4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    maps[:, 1] = 0
    maps[:, 3] = maps[:, 2]
    ci = chip.channel_independence(maps)
    assert torch.all(ci[:, 1] == 0)
    assert torch.all(ci[:, [0, 4]] > 0)
    assert torch.all(ci[:, 2] < ci[:, 0]) and torch.all(ci[:, 3] < ci[:, 0])


@pytest.mark.parametrize("stack_elements", [chip.STACK_ELEMENTS, 1, 700])
def test_chip_matches_loop(monkeypatch, stack_elements):
    monkeypatch.setattr(chip, "STACK_ELEMENTS", stack_elements)  # one chunk, one image per chunk, two per chunk
    maps = torch.relu(torch.randn(5, 6, 4, 5, generator=torch.Generator().manual_seed(4)))
    np.testing.assert_allclose(
        chip.channel_independence(maps).numpy(), loop_channel_independence(maps).numpy(), rtol=1e-10, atol=1e-12
    )


def test_chip_scores_and_selection_match_loop(one_thread):
    model, batches = seeded_resnet8(), random_batches()
    reference = {
        name: loop_channel_independence(torch.cat(per_batch)).mean(dim=0).numpy()
        for name, per_batch in captured_maps(model, batches).items()
    }
    scores = chip.score(model, filter_groups(model), chip.ChipParams(), context(batches))
    for name in reference:
        np.testing.assert_allclose(scores[name], reference[name], rtol=1e-9, atol=1e-10)
    check_selection(chip.ENTRY, reference, model, batches)


# ------------------------------------------------------------------ Taylor


def gate_losses(model, batch, gates: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's mean cross-entropy with each group's BatchNorm output multiplied by a per-channel gate."""
    hooks = [
        model.get_submodule(filter_groups(model)[name].bn).register_forward_hook(
            lambda module, inputs, output, gate=gate: output * gate[:, None, None]
        )
        for name, gate in gates.items()
    ]
    try:
        return F.cross_entropy(model(batch[0]), batch[1])
    finally:
        for hook in hooks:
            hook.remove()


def gate_reference(model, batches) -> dict[str, np.ndarray]:
    """Mean over batches of (dL/dg * g)^2 at unit gates g after each BatchNorm (the paper's gate form)."""
    model.eval()
    totals = {}
    for batch in batches:
        gates = {
            name: torch.ones(model.get_submodule(name).out_channels, dtype=batch[0].dtype, requires_grad=True)
            for name in filter_groups(model)
        }
        loss = gate_losses(model, batch, gates)
        for name, gate in gates.items():
            (gradient,) = torch.autograd.grad(loss, gate, retain_graph=True)
            totals[name] = totals.get(name, 0) + (gradient * gate).detach().numpy() ** 2
    return {name: total / len(batches) for name, total in totals.items()}


def test_taylor_matches_gate_gradients_and_finite_differences():
    model, batches = seeded_resnet8().double(), random_batches(dtype=torch.float64)
    model.zero_grad(set_to_none=True)
    scores = taylor.score(model, filter_groups(model), taylor.TaylorParams(), context(batches))
    reference = gate_reference(model, batches)
    for name in reference:
        np.testing.assert_allclose(scores[name], reference[name], rtol=1e-9, atol=1e-20)
    # central finite differences on two gates of each layer, by hand
    step = 1e-5
    for name in reference:
        for channel in (0, 3):
            derivatives = []
            for batch in batches:
                gate = torch.ones(model.get_submodule(name).out_channels, dtype=torch.float64)
                with torch.no_grad():
                    up = gate_losses(model, batch, {name: gate.index_fill(0, torch.tensor([channel]), 1 + step)})
                    down = gate_losses(model, batch, {name: gate.index_fill(0, torch.tensor([channel]), 1 - step)})
                derivatives.append(float(up - down) / (2 * step))
            expected = np.mean(np.square(derivatives))
            assert scores[name][channel] == pytest.approx(expected, rel=1e-5, abs=1e-14)


def test_taylor_leaves_the_model_unchanged():
    model, batches = seeded_resnet8(), random_batches()
    model.train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    scores = taylor.score(model, filter_groups(model), taylor.TaylorParams(), context(batches))
    assert model.training
    assert all(parameter.grad is None for parameter in model.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)
    assert all(np.all(s >= 0) and np.any(s > 0) for s in scores.values())


def test_taylor_selection():
    model, batches = seeded_resnet8(), random_batches()
    reference = gate_reference(seeded_resnet8(), batches)
    check_selection(taylor.ENTRY, reference, model, batches)
