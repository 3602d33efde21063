"""ThiNet: "ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression" (Luo, Wu, Lin,
ICCV 2017).

Criterion: the filters of a conv are the input channels of its consumer (the next conv, or VGG's linear
classifier), and ThiNet removes those whose absence the consumer's output notices least. From the
calibration batches it samples ``samples_per_image`` entries of the consumer's output per image (a
random output filter f and, for a conv, a random output location; seeded by ``seed`` and the layer
name) and splits each entry, bias excluded, into per-channel contributions
x_c = sum over the kernel window of W[f, c] * input patch of channel c (a linear consumer: W[f, c] * input
c), so that the entry is y = sum_c x_c. The removal set T is built greedily (the official code's
``value_sum``): repeatedly add the channel that minimises ||sum_{c in T} x_c||^2 over the samples. The
kept channels S are then rescaled by the least-squares w = argmin ||y - X_S w||^2 (float64,
``torch.linalg.lstsq``), folded into the consumer's input weights through ``FilterPlan.scales``.

How the framework's budget meets the greedy: the greedy is run to the end, giving every channel its
removal step (0 for the first channel removed, n - 1 for the one never removed), and the score is
that step. Since each greedy step only adds to the picks before it, the removal sets are nested: the
first n - k picks are exactly the set the greedy would remove when asked for n - k channels, so
keeping the top-k scores (``filter_method``'s selection, the keep count coming from ``prune.rate``,
``prune.rates`` or ``prune.target_macs``) keeps exactly ThiNet's k channels, for every k. The scores
are ranks, not comparable across layers, so the allocation is layerwise (ThiNet's uniform rate).

Where the least-squares minimiser is not unique (fewer samples than kept channels, or channels that
never contribute), the one closest to all-ones is taken: w = 1 + the minimum-norm solution for the
residual left by the removed channels, so uninformed channels keep their weights.

Differences from the paper: layers are scored one-shot on the dense model (the framework's contract),
not layer by layer with fine-tuning in between; the sample count is per image, not per class.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.activations import consumer_inputs
from baselines.filter_method import filter_method
from gkp.foundation.contracts import NO_CONTEXT, FilterGroup, PruningContext, PruningMethod, Selection
from gkp.foundation.errors import PruningError
from gkp.foundation.schema import at_least, option
from gkp.foundation.seeding import derive_seed
from gkp.mechanisms.pruning.dependencies import filter_groups
from gkp.mechanisms.pruning.plan import FilterPlan


@dataclass(frozen=True)
class ThiNetParams:
    samples_per_image: int = option(10, check=at_least(1), doc="consumer output entries sampled per image and layer")
    seed: int = option(0, doc="seed of the sampled output filters and locations")


Entries = tuple[torch.Tensor, ...]


def sample_entries(consumer: nn.Module, inputs: torch.Tensor, count: int, rng: np.random.Generator) -> Entries:
    """``count`` random output entries of ``consumer`` per image of ``inputs``: (images, filters) for a
    linear consumer, (images, filters, rows, cols) for a conv (output coordinates)."""
    n = inputs.shape[0]
    images = np.repeat(np.arange(n), count)
    if isinstance(consumer, nn.Linear):
        return _long(images), _long(rng.integers(consumer.out_features, size=n * count))
    height, width = _output_size(consumer, inputs)
    entries = (
        rng.integers(consumer.out_channels, size=n * count),
        rng.integers(height, size=n * count),
        rng.integers(width, size=n * count),
    )
    return (_long(images), *(_long(e) for e in entries))


def contributions(consumer: nn.Module, inputs: torch.Tensor, entries: Entries) -> torch.Tensor:
    """The (samples, channels) float64 contributions of each input channel to the sampled entries."""
    weight = consumer.weight.detach().double()
    device = weight.device
    images, filters = (e.to(device) for e in entries[:2])
    if isinstance(consumer, nn.Linear):
        return inputs.detach()[images].double() * weight[filters]
    rows, cols = (e.to(device) for e in entries[2:])
    padded = _pad(consumer, inputs.detach())
    (kh, kw), (sh, sw), (dh, dw) = consumer.kernel_size, consumer.stride, consumer.dilation
    window_rows = rows[:, None] * sh + torch.arange(kh, device=device) * dh  # (samples, kh)
    window_cols = cols[:, None] * sw + torch.arange(kw, device=device) * dw  # (samples, kw)
    # Advanced indices split by the channel slice come first: (samples, kh, kw, channels).
    patches = padded[images[:, None, None], :, window_rows[:, :, None], window_cols[:, None, :]].double()
    return torch.einsum("sijc,scij->sc", patches, weight[filters])


def removal_order(x: torch.Tensor) -> list[int]:
    """The greedy ``value_sum`` order over all channels of the (samples, channels) contributions: each
    step removes the channel minimising ||sum of the removed channels' contributions||^2, ties going to
    the lower index. Evaluated through the Gram matrix: ||a + x_j||^2 = ||a||^2 + 2 a.x_j + x_j.x_j."""
    gram = x.double().T @ x.double()
    n = gram.shape[0]
    removed = torch.zeros(n, dtype=torch.bool)
    cross = torch.zeros(n, dtype=torch.float64)  # a . x_j for the running sum a of removed channels
    norm = torch.zeros((), dtype=torch.float64)  # ||a||^2
    order = []
    for _ in range(n):
        cost = (norm + 2 * cross + gram.diagonal()).masked_fill(removed, float("inf"))
        j = int(torch.argmin(cost))
        order.append(j)
        removed[j] = True
        norm, cross = cost[j], cross + gram[j]
    return order


def removal_scores(x: torch.Tensor) -> np.ndarray:
    """Each channel's greedy removal step (0 = removed first): top-k keeps the greedy's k survivors."""
    scores = np.empty(x.shape[1], dtype=np.float64)
    scores[removal_order(x)] = np.arange(x.shape[1], dtype=np.float64)
    return scores


def least_squares_scales(x: torch.Tensor, kept: tuple[int, ...]) -> torch.Tensor:
    """w = argmin ||y - X_S w||^2 with y the sum over all channels; among minimisers, the closest to 1."""
    x = x.double().cpu()
    kept_x = x[:, list(kept)]
    residual = x.sum(dim=1) - kept_x.sum(dim=1)  # what the removed channels contributed
    delta = torch.linalg.lstsq(kept_x, residual[:, None], driver="gelsd").solution[:, 0]
    return 1.0 + delta


def reconstruction_error(x: torch.Tensor, kept: tuple[int, ...], scales: torch.Tensor) -> float:
    """||y - X_S w||^2 over the samples."""
    x = x.double().cpu()
    return float((x.sum(dim=1) - x[:, list(kept)] @ scales.double()).pow(2).sum())


def sample_contributions(
    model: nn.Module, groups: dict[str, FilterGroup], params: ThiNetParams, context: PruningContext
) -> dict[str, torch.Tensor]:
    """Every group's (samples, channels) contributions to its first consumer, over the calibration batches."""
    rngs = {name: np.random.default_rng(derive_seed(params.seed, "thinet", name)) for name in groups}
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in groups}

    def reduce(name: str, inputs: torch.Tensor) -> None:
        consumer = model.get_submodule(groups[name].consumers[0])
        entries = sample_entries(consumer, inputs, params.samples_per_image, rngs[name])
        parts[name].append(contributions(consumer, inputs, entries).cpu())

    consumer_inputs(model, groups, context.calibration_batches(), reduce)
    return {name: torch.cat(values) for name, values in parts.items()}


def check_params(model: nn.Module, params: ThiNetParams) -> None:
    """ThiNet reconstructs one consumer per group: an ungrouped conv or a linear layer fed one value per
    channel."""
    for name, group in filter_groups(model).items():
        if len(group.consumers) != 1:
            raise PruningError(f"thinet reconstructs a single consumer, and '{name}' feeds {len(group.consumers)}")
        consumer = model.get_submodule(group.consumers[0])
        channels = model.get_submodule(name).out_channels
        if isinstance(consumer, nn.Linear) and consumer.in_features == channels:
            continue
        if isinstance(consumer, nn.Conv2d) and consumer.groups == 1 and not isinstance(consumer.padding, str):
            continue
        raise PruningError(
            f"thinet cannot split the output of '{group.consumers[0]}' ({type(consumer).__name__}) into "
            f"per-channel contributions of '{name}'"
        )


def _select(model: nn.Module, rate: float, params: Any, context: PruningContext = NO_CONTEXT) -> Selection:
    samples: dict[str, torch.Tensor] = {}

    def score(model: nn.Module, groups, params: ThiNetParams, context: PruningContext) -> dict[str, np.ndarray]:
        samples.update(sample_contributions(model, groups, params, context))
        return {name: removal_scores(x) for name, x in samples.items()}

    method = filter_method("thinet", ThiNetParams, score, SUMMARY, calibrated=True, check_params=check_params)
    selection = method.select(model, rate, params, context)
    layers = {
        layer: FilterPlan(plan.kept, tuple(float(s) for s in least_squares_scales(samples[layer], plan.kept)))
        for layer, plan in selection.layers.items()
    }
    return Selection(layers, selection.notes)


def _long(values: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.long)


def _output_size(conv: nn.Conv2d, inputs: torch.Tensor) -> tuple[int, int]:
    size = []
    for axis in range(2):
        span = inputs.shape[2 + axis] + 2 * conv.padding[axis] - conv.dilation[axis] * (conv.kernel_size[axis] - 1)
        size.append((span - 1) // conv.stride[axis] + 1)
    return size[0], size[1]


def _pad(conv: nn.Conv2d, inputs: torch.Tensor) -> torch.Tensor:
    ph, pw = conv.padding
    if conv.padding_mode == "zeros":
        return F.pad(inputs, (pw, pw, ph, ph))
    return F.pad(inputs, (pw, pw, ph, ph), mode=conv.padding_mode)


SUMMARY = "ThiNet: greedy reconstruction of the next layer's output + least-squares rescaling (Luo et al., ICCV 2017)"


def _score_only(model: nn.Module, groups, params: ThiNetParams, context: PruningContext) -> dict[str, np.ndarray]:
    return {name: removal_scores(x) for name, x in sample_contributions(model, groups, params, context).items()}


ENTRY: PruningMethod = replace(
    filter_method("thinet", ThiNetParams, _score_only, SUMMARY, calibrated=True, check_params=check_params),
    select=_select,
)
