"""CC: "Towards Compact CNNs via Collaborative Compression" (Li, Lin, Liu, Ye, Wang, Chao, Yang, Ma, Tian,
Ji; CVPR 2021), as its official code (liuguoyou/Towards-Compact-CNNs-via-Collaborative-Compression,
``compress.py`` and ``utils/models.py``) computes it, written anew here.

CC compresses each conv of the network body (the convs grouped kernel pruning targets: every block conv
of a ResNet, every conv but the first of VGG) in two collaborating ways: it drops **input channels**
(column j of the weight W, C_out x C_in x k x k) and zeroes **singular values** of W viewed as a
C_out x (C_in k k) matrix; the result reads the kept inputs through a k x k conv to the kept rank and a 1x1
conv (``FactorisedConv2d``). In the code's units (MACs / 1e7), for ``prune.rate`` = its ``com_ratio``:

1. **Gradient.** g = the mean over the calibration batches of dL/dW (cross-entropy, eval mode). The code
   reads the whole un-augmented training set; the paper configs set ``prune.calibration`` to do the same.
2. **Cost curves.** Per conv, input channel j scores sum((g[:, j] W[:, j])^2) and singular value k
   sum((g dW_k)^2), dW_k = -s_k u_k v_k^T. All units are removed in ascending order of these scores (no
   re-scoring), recording after each the cost sum((g (W' - W))^2) and the fraction x of the conv's MACs saved;
   MACs after removing P channels and z singular values of the rank r = min(C_out, C_in k): C_out (C_in - P)
   k^2 x positions while z = 0, else ((C_in - P) k^2 (r - z) + (r - z) C_out) x positions. The costs (over
   x > 0, divided by their maximum) are fitted as p1 exp(p2 x): least squares of log(cost + 1e-10) on x,
   weighted by sqrt(cost).
3. **Allocation.** With a_i = F_i / p2_i and b_i = 1 / (p1_i p2_i) (F_i the conv's MACs), conv i saves
   a_i log(b_i t) at a shared level t: the level where the marginal costs are equal. t solves
   sum_i c_i(t) = com_ratio x the network's MACs, where c_i is 0 below b_i t = 1 or when negative, and
   0.9 F_i once above 0.95 F_i (as the code's predictor has it); each conv's target is then a_i log(b_i t)
   clipped to [0, 0.95 F_i].
4. **Removal.** Per conv, 1% of its C_in + r units at a time (at least one), each time re-scoring every
   remaining unit by the backward proxy sum((g D)^2) (D = W' - W) plus gamma times the forward proxy
   sum((g D)^2) + 4 / (n - 1) sum(g^2 D (-W')) + (sum((g W')^2) + sum(g^2 (U^2 S^2 V^2^T))) / (n - 1), with W'
   the weight without the unit, U S V^T its SVD (squares elementwise) and n the units left; the lowest
   scores go, until the conv has saved its target (or channel removal alone has).
5. **Output.** The kept input channels of the dense weight, and, where singular values went, its
   truncated SVD at rank r - z (split sqrt(S) each side). The model is then fine-tuned (the paper
   configs: 300 epochs, lr 0.1, weight decay 1e-4, x0.1 at 150 and 225, gradients clipped to norm 1, crops
   padded by 8, as the code).

**Budget.** ``prune.rate`` is the code's ``com_ratio``. ``prune.target_macs`` instead keeps that fraction
of the dense model's MACs in CC's own count (``cc_macs``, the count the paper's CC rows came from): the
com_ratio that reaches it within 0.5% is found by bisection; each conv's removal order does not depend on
its target, so the units are scored once and every com_ratio tried reads them.

**Departures**, none changing what is selected where the code runs as intended: the allocation solves its
equation by bracketing and bisection from the code's start, 0.1, where the code runs gradient descent (lr
1e-6, at most 1e6 steps) to the same root; sorts are stable (the code's numpy argsort is not); a
singular-value-decomposition failure, which the code catches, is not handled; a conv whose targets would need
the log of a negative number (p2 < 0, where the code raises) saves nothing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gkp.foundation.contracts import NO_CONTEXT, PruningContext, PruningMethod, Selection
from gkp.foundation.errors import PruningError
from gkp.foundation.schema import at_least, option
from gkp.mechanisms.counting import forward_once
from gkp.mechanisms.layers.restructured import FactorisedConv2d
from gkp.mechanisms.pruning.dependencies import grouped_kernel_targets, residual_blocks
from gkp.mechanisms.pruning.plan import FactorisedPlan
from gkp.mechanisms.pruning.surgery import get_module, set_module

UNIT = 1e7  # the code counts MACs in units of 1e7; its allocation's start and tolerance are in them
START = 0.1  # the allocation's starting level
LAYER_CAP = 0.95  # no conv saves more than this fraction of its MACs
PREDICTED_CAP = 0.9  # what the code's predictor counts for a conv past its cap
STEP_FRACTION = 0.01  # units removed per re-scoring: 1% of a conv's channels plus rank
TOLERANCE = 0.005  # prune.target_macs is met within 0.5%
PRUNE, TRUNCATE = "channel", "singular value"


@dataclass(frozen=True)
class CCParams:
    gamma: float = option(
        0.9, check=at_least(0), doc="weight of the forward proxy when units are re-scored (the code's com_gamma)"
    )


# ------------------------------------------------------------------------------------------- one conv


class Conv:
    """One compressed conv: its dense weight W and mean gradient g (C_out x C_in k k matrices, in the
    weight's precision: float32, as the code) and its geometry, in the code's MACs formula."""

    def __init__(self, name: str, weight: torch.Tensor, gradient: torch.Tensor, positions: int):
        self.name, self.positions = name, positions
        self.out_channels, self.in_channels, height, width = weight.shape
        self.area = height * width
        self.weight, self.gradient = weight.flatten(1), gradient.to(weight.dtype).flatten(1)
        self.rank = min(self.out_channels, self.in_channels * height)  # the code's min(C_out, C_in x k)
        self.macs = self.cost(0, 0)

    def cost(self, pruned: int, zeroed: int) -> float:
        """MACs / 1e7 after removing ``pruned`` input channels and ``zeroed`` singular values."""
        kept = self.in_channels - pruned
        if zeroed == 0:
            return self.out_channels * kept * self.area * self.positions / UNIT
        rank = self.rank - zeroed
        return (kept * self.area * rank + rank * self.out_channels) * self.positions / UNIT

    def columns(self, channel: int) -> slice:
        return slice(channel * self.area, (channel + 1) * self.area)

    def per_channel(self, values: torch.Tensor) -> torch.Tensor:
        """Sums over each input channel's columns of a C_out x C_in k k matrix."""
        return values.view(self.out_channels, self.in_channels, self.area).sum((0, 2))


def truncated(matrix: torch.Tensor, position: int) -> torch.Tensor:
    """``matrix`` rebuilt from its SVD with singular value ``position`` set to zero."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    s[position] = 0
    return (u * s) @ vh


def first_scores(conv: Conv) -> list[tuple[str, int, float]]:
    """Every unit's score on the dense weight: channels first, then singular values (the code's order)."""
    product = (conv.gradient * conv.weight) ** 2
    channels = product.view(conv.out_channels, conv.in_channels, conv.area).sum((0, 2))
    u, s, vh = torch.linalg.svd(conv.weight, full_matrices=False)
    squared = torch.diagonal((u**2).T @ conv.gradient**2 @ (vh**2).T) * s**2
    return [(PRUNE, j, float(v)) for j, v in enumerate(channels)] + [
        (TRUNCATE, k, float(squared[k])) for k in range(conv.rank)
    ]


def cost_curve(conv: Conv) -> tuple[np.ndarray, np.ndarray]:
    """Every unit removed in ascending order of its first score: the fraction of MACs saved and the
    cost after each."""
    units = sorted(first_scores(conv), key=lambda unit: unit[2])
    weight, pruned, zeroed = conv.weight.clone(), 0, 0
    position = list(range(conv.rank))  # where original singular value k now sits
    saved, costs = [], []
    for kind, index, _ in units:
        if kind == PRUNE:
            weight[:, conv.columns(index)] = 0
            pruned += 1
        else:
            weight = truncated(weight, position[index])
            position[index + 1 :] = [p - 1 for p in position[index + 1 :]]
            zeroed += 1
        costs.append(float(((conv.gradient * (weight - conv.weight)) ** 2).sum()))
        saved.append((conv.macs - conv.cost(pruned, zeroed)) / conv.macs)
    return np.array(saved), np.array(costs)


def exponential_fit(saved: np.ndarray, costs: np.ndarray, name: str) -> tuple[float, float]:
    """(p1, p2) of cost ~ p1 exp(p2 x): weighted least squares of log(cost + 1e-10) on x, weights sqrt(cost),
    over the points that save MACs, their costs divided by the largest."""
    order = np.argsort(saved, kind="stable")
    x, cost = saved[order], costs[order]
    x, cost = x[x > 0], cost[x > 0]
    if cost.size < 2 or cost.max() <= 0:
        raise PruningError(
            f"cc: the mean gradient of '{name}' is zero over the calibration images, so its units cannot be "
            "ranked; read more images (prune.calibration)"
        )
    cost = cost / cost.max()
    y, weight = np.log(cost + 1e-10), np.sqrt(cost)
    x_mean, y_mean = np.average(x, weights=weight), np.average(y, weights=weight)
    slope = np.sum(weight * (x - x_mean) * (y - y_mean)) / np.sum(weight * (x - x_mean) ** 2)
    return math.exp(y_mean - slope * x_mean), float(slope)


# ------------------------------------------------------------------------------------------- allocation


def _saving(scale: float, level: float, t: float) -> float:
    """a log(b t), or 0 where b t <= 0 (the code raises) or the log would be negative."""
    return scale * math.log(level * t) if level * t > 0 else 0.0


def predicted(fits: list[tuple[float, float]], macs: list[float], t: float) -> float:
    """The code's predictor of the MACs saved at level t."""
    total = 0.0
    for (p1, p2), layer in zip(fits, macs, strict=True):
        if (1 / (p1 * p2)) * t < 1:
            continue
        value = _saving(layer / p2, 1 / (p1 * p2), t)
        total += PREDICTED_CAP * layer if value > LAYER_CAP * layer else max(value, 0.0)
    return total


def solve_level(fits: list[tuple[float, float]], macs: list[float], target: float) -> float:
    """The level t where the predicted saving meets ``target``: bracketed from the code's start by
    doubling or halving, then bisected."""
    gap = predicted(fits, macs, START) - target
    factor = 2.0 if gap < 0 else 0.5
    near, far = START, START
    for _ in range(2000):
        near, far = far, far * factor
        if (predicted(fits, macs, far) - target < 0) != (gap < 0):
            break
    else:
        reachable = PREDICTED_CAP * sum(macs) * UNIT / 1e6
        raise PruningError(f"cc: no allocation saves {target * UNIT / 1e6:.3f}M MACs; at most {reachable:.3f}M")
    low, high = sorted((near, far))
    for _ in range(200):
        middle = 0.5 * (low + high)
        if predicted(fits, macs, middle) < target:
            low = middle
        else:
            high = middle
    return high


def layer_targets(fits: list[tuple[float, float]], macs: list[float], target: float) -> list[float]:
    """Each conv's MACs to save (/ 1e7): a log(b t) at the solved level, clipped to [0, 0.95 F]."""
    t = solve_level(fits, macs, target)
    return [
        min(max(_saving(layer / p2, 1 / (p1 * p2), t), 0.0), LAYER_CAP * layer)
        for (p1, p2), layer in zip(fits, macs, strict=True)
    ]


# ------------------------------------------------------------------------------------------- removal


@dataclass(frozen=True)
class Removed:
    """The state after one removed unit: channels pruned so far (their count), singular values zeroed."""

    pruned: int
    zeroed: int
    cost: float
    channels_only_cost: float


class Removal:
    """CC's step-wise removal in one conv, each step re-scoring the remaining units and removing the
    lowest 1%. The order does not depend on the target, so it is computed once, as far as targets need."""

    def __init__(self, conv: Conv, gamma: float):
        self.conv, self.gamma = conv, gamma
        self.weight = conv.weight.clone()
        self.pruned: list[int] = []
        self.zeroed = 0
        self.states: list[Removed] = []
        self.per_step = max(1, int((conv.in_channels + conv.rank) * STEP_FRACTION))

    def plan(self, target: float) -> FactorisedPlan | None:
        """The code's result for a target saving (/ 1e7): the first state that saves it, by both kinds of
        unit or by channels alone (then unfactorised)."""
        if target <= 0:
            return None
        conv, index = self.conv, 0
        while True:
            while index >= len(self.states):
                self._step()
            state = self.states[index]
            if conv.macs - state.cost >= target:
                return self._result(state, channels_only=False)
            if state.pruned and state.zeroed and conv.macs - state.channels_only_cost >= target:
                return self._result(state, channels_only=True)
            index += 1

    def _result(self, state: Removed, channels_only: bool) -> FactorisedPlan:
        conv = self.conv
        dropped = set(self.pruned[: state.pruned])
        keep_in = tuple(j for j in range(conv.in_channels) if j not in dropped)
        if state.zeroed == 0 or channels_only:
            return FactorisedPlan(keep_in, None)
        return FactorisedPlan(keep_in, min(conv.rank - state.zeroed, conv.out_channels, len(keep_in) * conv.area))

    def _step(self) -> None:
        units = self._scores()
        if not units:
            raise PruningError(f"cc: '{self.conv.name}' has no unit left to remove")
        units.sort(key=lambda unit: unit[2])
        position = list(range(self.conv.rank))  # the code's bookkeeping, reset each step
        for kind, index, _ in units[: self.per_step]:
            if kind == PRUNE:
                self.pruned.append(index)
                self.weight[:, self.conv.columns(index)] = 0
            else:
                self.weight = truncated(self.weight, position[index])
                self.zeroed += 1
                for k in range(index + 1, self.conv.rank):  # as the code shifts them
                    position[k] = position[k - 1]
            pruned = len(self.pruned)
            channels_only = self.conv.cost(pruned, 0)
            self.states.append(Removed(pruned, self.zeroed, self.conv.cost(pruned, self.zeroed), channels_only))

    def _scores(self) -> list[tuple[str, int, float]]:
        """Every remaining unit's score on the current weight: channels first, then singular values."""
        remaining = self.conv.in_channels - len(self.pruned) + self.conv.rank - self.zeroed
        channels = [j for j in range(self.conv.in_channels) if j not in self.pruned]
        scores = [(PRUNE, j, v) for j, v in zip(channels, self._channel_scores(channels, remaining), strict=True)]
        return scores + [(TRUNCATE, k, v) for k, v in enumerate(self._singular_scores(remaining))]

    def _channel_scores(self, channels: list[int], remaining: int) -> list[float]:
        """The proxy of removing each channel j, from sums over the current weight W' and its columns of j
        (W' without them differs there alone), and U^2 S^2 V^2^T of W' without them (``channel_spreads``)."""
        conv, current = self.conv, self.weight
        g, change = conv.gradient, self.weight - conv.weight
        index = torch.tensor(channels, dtype=torch.long)

        def total_less_channel(values: torch.Tensor) -> torch.Tensor:
            return values.sum() - conv.per_channel(values)[index]

        backward = total_less_channel((g * change) ** 2) + conv.per_channel((g * conv.weight) ** 2)[index]
        cross = -total_less_channel(g**2 * change * current)
        plain = total_less_channel((g * current) ** 2)
        spreads = channel_spreads(current, g, conv, channels)
        return proxy(backward, cross, plain, spreads, remaining, self.gamma).tolist()

    def _singular_scores(self, remaining: int) -> list[float]:
        """The proxy of zeroing each of the singular values left, in closed form: with the current weight
        R = U S V^T (rebuilt from its SVD, as the code) and E_k = s_k u_k v_k^T, W' = R - E_k, so each sum is
        the current one corrected by s_k u_k^T (g^2 X) v_k terms; and U^2 S^2 V^2^T of W' is the current
        one less s_k^2 u_k^2 v_k^2^T."""
        count = self.conv.rank - self.zeroed
        if count == 0:
            return []
        squared = self.conv.gradient**2
        u, s, vh = torch.linalg.svd(self.weight, full_matrices=False)
        rebuilt = (u * s) @ vh
        change = rebuilt - self.conv.weight
        spreads = (squared * ((u**2 * s**2) @ vh**2)).sum()
        u, s, vh = u[:, :count], s[:count], vh[:count]

        def along(matrix: torch.Tensor) -> torch.Tensor:  # s_k u_k^T (g^2 matrix) v_k, for every k
            return s * (u * ((squared * matrix) @ vh.T)).sum(0)

        with_change, with_rebuilt = along(change), along(rebuilt)
        own = s**2 * torch.diagonal((u**2).T @ squared @ (vh**2).T)
        backward = (squared * change**2).sum() - 2 * with_change + own
        cross = -((squared * change * rebuilt).sum() - with_change - with_rebuilt + own)
        plain = (squared * rebuilt**2).sum() - 2 * with_rebuilt + own
        return proxy(backward, cross, plain, spreads - own, remaining, self.gamma).tolist()


def channel_spreads(weight: torch.Tensor, gradient: torch.Tensor, conv: Conv, channels: list[int]) -> torch.Tensor:
    """sum(g^2 U^2 S^2 V^2^T) of ``weight`` without each channel's columns, with no SVD: U are the
    eigenvectors of the Gram matrix W W^T (updated per channel: less its columns' product) and
    s_k v_k = W^T u_k, so the sum over k of u_k^2 (s_k v_k)^2^T needs no V (chunks of channels)."""
    gram = weight @ weight.T
    blocks = weight.view(conv.out_channels, conv.in_channels, conv.area)
    totals = []
    chunk = max(1, int(2**23 // (weight.numel() + 1)))
    for start in range(0, len(channels), chunk):
        index = torch.tensor(channels[start : start + chunk], dtype=torch.long)
        columns = blocks[:, index].transpose(0, 1)  # (K, C_out, k k)
        _, u = torch.linalg.eigh(gram - columns @ columns.transpose(1, 2))
        scaled = (weight.T @ u).view(len(index), conv.in_channels, conv.area, conv.out_channels)
        scaled[torch.arange(len(index)), index] = 0  # s_k v_k without the channel's columns
        products = gradient**2 @ scaled.flatten(1, 2) ** 2  # (K, C_out, C_out)
        totals.append((u**2 * products).sum((1, 2)))
    return torch.cat(totals)


def proxy(
    backward: torch.Tensor, cross: torch.Tensor, plain: torch.Tensor, spreads: torch.Tensor, n: int, gamma: float
) -> torch.Tensor:
    """The code's score of removing a unit, from the candidate weight W' (D = W' - W, W dense): backward =
    sum((g D)^2), cross = sum(g^2 D (-W')), plain = sum((g W')^2), spreads = sum(g^2 U^2 S^2 V^2^T) of W', and
    n the units left before the removal."""
    forward = backward + 4 / (n - 1) * cross + (plain + spreads) / (n - 1)
    return backward + gamma * forward


# ------------------------------------------------------------------------------------------- counting


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _compressed_params(module: nn.Module) -> int:
    """A compressed conv as CC's code counts it: its weights plus its index of kept inputs and one."""
    kept = len(module.keep_in) if isinstance(module, FactorisedConv2d) else module.in_channels
    return _params(module) + kept + 1


def _positions(module: nn.Module, size: tuple[int, int]) -> int:
    """Output positions of a conv (or a compressed conv's first) on an input of ``size``."""
    conv = module.reduce if isinstance(module, FactorisedConv2d) else module
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    return ((size[0] + 2 * ph - kh) // sh + 1) * ((size[1] + 2 * pw - kw) // sw + 1)


def _out_channels(module: nn.Module) -> int:
    return module.reduce.out_channels if isinstance(module.expand, nn.Identity) else module.expand.out_channels


def _basic_block_macs(block: nn.Module, size: tuple[int, int]) -> int:
    """CC's count of a basic block of compressed convs, as its ``measure_flop_layer`` computes it: the
    first conv's MACs times the fraction of its outputs the second reads, plus the second's, both at the
    block input's resolution (so a stage's first block counts its second conv at twice the side)."""
    first, second = block.conv1, block.conv2
    channels = _out_channels(first) if isinstance(first, FactorisedConv2d) else first.out_channels
    read = len(second.keep_in) if isinstance(second, FactorisedConv2d) else second.in_channels
    macs = _compressed_params(first) * _positions(first, size) * read / channels
    return round(macs + _compressed_params(second) * _positions(second, size))


def cc_macs(model: nn.Module, input_size: int) -> int:
    """MACs as CC's code counts them (``measure_flop_model``): every conv's and linear layer's parameters
    (bias included) times its output positions. A model CC compressed (one with a ``FactorisedConv2d``)
    is its compressed network: each conv CC compresses counts its index of kept inputs and one more
    parameter, and each basic residual block is counted as ``_basic_block_macs`` says. Dense ResNet-56:
    125.486M."""
    targets = set(grouped_kernel_targets(model, "all"))
    compressed = any(isinstance(m, FactorisedConv2d) for m in model.modules())
    blocks = set(residual_blocks(model, required=False))
    units = {name for name in blocks if {f"{name}.conv1", f"{name}.conv2"} <= targets} if compressed else set()
    units |= {name for name in targets if compressed and not any(name.startswith(f"{b}.") for b in units)}
    total = 0

    def count(measure: Callable[[nn.Module, tuple[int, int]], int], before: bool):
        def hook(module: nn.Module, inputs, output=None) -> None:
            nonlocal total
            total += measure(module, tuple((inputs[0] if before else output).shape[-2:]))

        return hook

    handles = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{unit}.") for unit in units):
            continue
        if name in blocks and name in units:
            handles.append(module.register_forward_pre_hook(count(_basic_block_macs, before=True)))
        elif name in units:
            measure = lambda m, size: _compressed_params(m) * _positions(m, size)  # noqa: E731
            handles.append(module.register_forward_pre_hook(count(measure, before=True)))
        elif isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(count(lambda m, size: _params(m) * size[0] * size[1], False)))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(count(lambda m, size: _params(m), before=False)))
    forward_once(model, input_size, handles)
    return total


# ------------------------------------------------------------------------------------------- the method


def mean_gradients(model: nn.Module, names: list[str], batches) -> dict[str, torch.Tensor]:
    """The mean over ``batches`` of each named conv's dL/dW (batch-mean cross-entropy, eval mode)."""
    weights = [get_module(model, name).weight for name in names]
    totals = [torch.zeros_like(w) for w in weights]
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            gradients = torch.autograd.grad(F.cross_entropy(model(x), y), weights)
            for total, gradient in zip(totals, gradients, strict=True):
                total += gradient
    finally:
        model.train(was_training)
    return {name: total / len(batches) for name, total in zip(names, totals, strict=True)}


def _output_positions(model: nn.Module, names: list[str], input_size: int) -> dict[str, int]:
    """Each named conv's output positions (H x W), from one forward pass."""
    sizes: dict[str, int] = {}
    handles = [
        get_module(model, name).register_forward_hook(
            lambda m, i, out, name=name: sizes.__setitem__(name, out.shape[-2] * out.shape[-1])
        )
        for name in names
    ]
    forward_once(model, input_size, handles)
    return sizes


def _convs(model: nn.Module, gradients: dict[str, torch.Tensor], input_size: int) -> list[Conv]:
    positions = _output_positions(model, list(gradients), input_size)
    return [
        Conv(name, get_module(model, name).weight.detach().cpu(), gradient.cpu(), positions[name])
        for name, gradient in gradients.items()
    ]


def _targets(model: nn.Module) -> list[str]:
    return grouped_kernel_targets(model, "all")


def _layer_macs(model: nn.Module, input_size: int) -> dict[str, float]:
    """Each compressed conv's dense MACs / 1e7 (weights x output positions, as ``Conv.cost``)."""
    positions = _output_positions(model, _targets(model), input_size)
    return {name: get_module(model, name).weight.numel() * count / UNIT for name, count in positions.items()}


def check(model: nn.Module, rate: float, params: CCParams, context: PruningContext = NO_CONTEXT) -> None:
    """The convs' caps bound what can be saved: refuse a com_ratio or a MACs target beyond them before any
    work."""
    macs = sum(_layer_macs(model, context.input_size).values())
    network = cc_macs(model, context.input_size) / UNIT
    if context.target_macs is not None:
        floor = (network - LAYER_CAP * macs) / network
        if context.target_macs < floor:
            raise PruningError(
                f"prune.target_macs {context.target_macs}: cc keeps at least {floor:.3f} of the MACs in its count "
                f"(each compressed conv keeps {1 - LAYER_CAP:.0%} of its own or more)"
            )
        return
    if rate * network >= PREDICTED_CAP * macs:
        raise PruningError(
            f"prune.rate {rate} asks cc to save that fraction of all MACs, but each compressed conv saves at "
            f"most {LAYER_CAP:.0%} of its own: rates below {PREDICTED_CAP * macs / network:.3f} work"
        )


class Compression:
    """CC on one model: its convs' fits and removal orders, computed once; ``at(com_ratio)`` the plan."""

    def __init__(self, model: nn.Module, params: CCParams, context: PruningContext):
        self.model, self.input_size = model, context.input_size
        names = _targets(model)
        self.convs = _convs(model, mean_gradients(model, names, context.calibration_batches()), self.input_size)
        self.fits = [exponential_fit(*cost_curve(conv), conv.name) for conv in self.convs]
        self.removals = [Removal(conv, params.gamma) for conv in self.convs]
        self.network = cc_macs(model, self.input_size) / UNIT

    def at(self, com_ratio: float) -> dict[str, FactorisedPlan]:
        macs = [conv.macs for conv in self.convs]
        targets = layer_targets(self.fits, macs, com_ratio * self.network)
        plans = {
            conv.name: removal.plan(t) for conv, removal, t in zip(self.convs, self.removals, targets, strict=True)
        }
        return {name: plan for name, plan in plans.items() if plan is not None}

    def macs(self, layers: dict[str, FactorisedPlan]) -> int:
        compressed = copy.deepcopy(self.model)
        for name, layer in layers.items():
            set_module(
                compressed, name, FactorisedConv2d.from_dense(get_module(self.model, name), layer.keep_in, layer.rank)
            )
        return cc_macs(compressed, self.input_size)


def _ratio_for(compression: Compression, target: float) -> float:
    """The com_ratio whose result keeps ``target`` of the dense MACs in CC's count, within 0.5%: bracketed
    in steps of 0.05 from 1 - target (so that no conv's removal runs much further than needed), then
    bisected."""
    dense = compression.network * UNIT
    largest = PREDICTED_CAP * sum(conv.macs for conv in compression.convs) / compression.network

    def kept(ratio: float) -> float:
        return compression.macs(compression.at(ratio)) / dense

    low, high = 0.0, largest
    ratio = min(max(1 - target, 0.05), 0.5 * largest)
    while high - low >= 1e-6:
        fraction = kept(ratio)
        if abs(fraction - target) <= TOLERANCE * target:
            return ratio
        if fraction > target:  # too many MACs kept: a larger com_ratio
            low = ratio
            ratio = ratio + 0.05 if high == largest and ratio + 0.05 < high else 0.5 * (ratio + high)
        else:
            high = ratio
            ratio = ratio - 0.05 if low == 0.0 and ratio - 0.05 > 0.0 else 0.5 * (low + ratio)
    raise PruningError(
        f"cc: no com_ratio keeps {target} of the dense MACs within 0.5% in CC's count (between com_ratio "
        f"{low:.4f} and {high:.4f}); choose another prune.target_macs"
    )


def select(model: nn.Module, rate: float, params: CCParams, context: PruningContext = NO_CONTEXT) -> Selection:
    check(model, rate, params, context)
    compression = Compression(model, params, context)
    ratio = rate if context.target_macs is None else _ratio_for(compression, context.target_macs)
    layers = compression.at(ratio)
    notes = {
        "com_ratio": ratio,
        "cc_macs": compression.macs(layers),
        "dense_cc_macs": round(compression.network * UNIT),
    }
    return Selection(layers, notes)


ENTRY = PruningMethod(
    "cc",
    CCParams,
    select,
    check,
    "CC, collaborative compression: input channels and singular values removed by gradient-based costs, "
    "budgets allocated by fitted cost curves (Li et al., CVPR 2021)",
    "factorised",
    budgets=frozenset({"rate", "target_macs"}),
    calibrated=True,
    count=cc_macs,
)
