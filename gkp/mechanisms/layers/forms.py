"""Choose, per grouped-kernel conv and device, the fastest of its equivalent forms (see
``gkp.mechanisms.layers.grouped_conv``), by timing each form on the layer's own input shape.

Which form wins depends on the layer (channels, spatial size), the batch and the hardware: a grouped
conv with few channels per group can run slower than the dense conv it replaces on some backends, and a
pruned model slower than its dense original is a defect, not a footnote. So a form replaces the dense one
only where it is clearly faster, and the whole model in the chosen forms must then beat the whole model in
the dense form, or every layer runs dense (layers that each win alone can lose together).

The forms compute the same function but sum in different orders, so the choice shows in the last digits
of every result. ``choose_forms`` therefore takes a ``timings`` mapping (the stages keep it in a file):
a layer shape timed once on a machine keeps its form there, and the same command gives the same numbers.
``use_form`` puts every layer in one form (fine-tuning runs in the ``dense`` form: see
``gkp.application.pipeline.training.finetune``).

The choice must cost far less than what it can save. A form is timed further only while it can plausibly
win (one that takes over PLAUSIBLE times the dense time in its first timed round is dropped: on a CPU the
grouped forms often run several times slower, and timing them over every round was most of the cost), and
given the number of passes it chooses for, the timing stops at TIMING_SHARE of their dense cost: the
shapes left untimed run dense, unrecorded, so that an evaluation large enough to pay for their timing times
them. The log reports what the timing cost.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import statistics
import time
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from gkp.mechanisms.layers.grouped_conv import FORMS, GroupedKernelConv2d

log = logging.getLogger(__name__)

DENSE_MARGIN = 0.9  # another form replaces the dense one where it takes at most 90% of its time
MODEL_MARGIN = 0.98  # and the chosen forms stay where the whole model takes at most 98% of its dense time
KEEP_FORMS, ALL_DENSE = "chosen forms", "dense everywhere"  # the whole model's verdicts, as recorded
PLAUSIBLE = 1.5  # a form over 1.5x the dense time in its first timed round is not timed further
TIMING_SHARE = 0.05  # given the passes it chooses for, the timing costs at most 5% of their dense time


def _input_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, torch.Size]:
    shapes: dict[str, torch.Size] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            shapes[name] = inputs[0].shape

        return hook

    handles = [
        m.register_forward_hook(record(name)) for name, m in model.named_modules() if isinstance(m, GroupedKernelConv2d)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_pass(module: nn.Module, x: torch.Tensor, train: bool) -> float:
    """Seconds of one pass of ``module`` (a layer or the whole model): forward, or forward + backward with
    ``train``."""
    _synchronize(x.device)
    start = time.perf_counter()
    if train:
        module(x).sum().backward()
    else:
        with torch.no_grad():
            module(x)
    _synchronize(x.device)
    return time.perf_counter() - start


def _time_form(layer: GroupedKernelConv2d, x: torch.Tensor, form: str, train: bool) -> float:
    """Seconds of one pass of ``layer`` in ``form``."""
    layer.form = form
    return _time_pass(layer, x, train)


def _time_forms(layer: GroupedKernelConv2d, x: torch.Tensor, train: bool, rounds: int) -> dict[str, float]:
    """The median seconds of each form over ``rounds`` rounds, every form once per round after a warm-up
    round, so that a machine whose speed drifts (a loaded one) slows them all alike; a form over PLAUSIBLE
    times the dense time in the first timed round keeps that round's time and is not timed again."""
    times: dict[str, list[float]] = {form: [] for form in FORMS}
    timed = list(FORMS)
    for round_index in range(rounds + 1):
        for form in timed:
            seconds = _time_form(layer, x, form, train)
            if round_index:
                times[form].append(seconds)
        if round_index == 1:
            timed = [form for form in timed if times[form][0] <= PLAUSIBLE * times["dense"][0]]
            if timed == ["dense"]:
                break
    return {form: statistics.median(values) for form, values in times.items()}


def _fastest(seconds: dict[str, float]) -> str:
    """The fastest form, where it beats the dense one clearly (DENSE_MARGIN); else the dense form, whose
    speed is the dense model's: a pruned model must never run slower than its original for a timing
    accident."""
    best = min(seconds, key=seconds.get)
    return best if seconds[best] <= DENSE_MARGIN * seconds["dense"] else "dense"


def use_form(model: nn.Module, form: str) -> None:
    """Put every ``GroupedKernelConv2d`` of ``model`` in ``form``."""
    for module in model.modules():
        if isinstance(module, GroupedKernelConv2d):
            module.form = form


def _timing_key(device: torch.device, dtype, shape, layer_key: str, train: bool, channels_last: bool) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.node()} {platform.processor() or platform.machine()} x{torch.get_num_threads()}"
    passes = "forward+backward" if train else "forward"
    layout = "channels_last" if channels_last else "contiguous"
    method = f"alternating, dense unless under {DENSE_MARGIN:g}x"  # choices timed otherwise are timed again
    return (
        f"{name} | torch {torch.__version__} | {dtype} | {passes} | {layout} | {tuple(shape)} | {layer_key} | {method}"
    )


def _model_keeps_forms(
    model: nn.Module, chosen: dict[str, str], example: torch.Tensor, train: bool, rounds: int
) -> bool:
    """Whether the whole model runs faster in the ``chosen`` forms than in the dense form everywhere (by
    MODEL_MARGIN), timed in alternating rounds after a warm-up round: layers that each win alone can lose
    together (their gathers and the caches they share)."""
    layers = {name: model.get_submodule(name) for name in chosen}
    x = example.detach().requires_grad_(train)
    times: dict[bool, list[float]] = {True: [], False: []}
    for round_index in tqdm(range(rounds + 1), desc="timing the whole model", leave=False, disable=None):
        for keep in (True, False):
            for name, layer in layers.items():
                layer.form = chosen[name] if keep else "dense"
            seconds = _time_pass(model, x, train)
            model.zero_grad(set_to_none=True)
            if round_index:
                times[keep].append(seconds)
    for name, layer in layers.items():
        layer.form = chosen[name]
    return statistics.median(times[True]) <= MODEL_MARGIN * statistics.median(times[False])


def _model_key(layer_keys: list[str]) -> str:
    """The whole model's part of its timing key: its layers with their forms."""
    digest = hashlib.sha256("\n".join(layer_keys).encode()).hexdigest()[:16]
    return f"model {digest}, under {MODEL_MARGIN:g}x"


@dataclass
class _Timing:
    """One choice of forms for a model: the timings recorded so far (added to), what this choice timed and
    left untimed, and its budget: TIMING_SHARE of the dense cost of the ``passes`` model passes it chooses
    forms for (unbounded without ``passes``), priced by a dense pass of the model timed on first need."""

    model: nn.Module
    example: torch.Tensor
    train: bool
    channels_last: bool
    rounds: int
    timings: MutableMapping[str, str]
    passes: int | None
    timed: set[str] = field(default_factory=set)
    untimed: set[str] = field(default_factory=set)
    _pass_seconds: float | None = None

    def __post_init__(self):
        self.started = time.perf_counter()

    def key(self, shape, layer_key: str) -> str:
        return _timing_key(self.example.device, self.example.dtype, shape, layer_key, self.train, self.channels_last)

    def layer_form(self, layer: GroupedKernelConv2d, shape, key: str) -> str:
        """The layer's form: as recorded, else timed now where the budget allows (and recorded), else dense."""
        if self.timings.get(key) in FORMS:
            return self.timings[key]
        if key in self.untimed or not self.allows():
            self.untimed.add(key)
            return "dense"
        x = torch.randn(shape, device=self.example.device, dtype=self.example.dtype)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=memory_format).requires_grad_(self.train)
        self.timings[key] = _fastest(_time_forms(layer, x, self.train, self.rounds))
        layer.zero_grad(set_to_none=True)
        self.timed.add(key)
        return self.timings[key]

    def keeps_forms(self, chosen: dict[str, str], key: str) -> bool:
        """The whole model's verdict on the ``chosen`` forms: as recorded, else timed now where the budget
        allows (and recorded), else not kept."""
        if self.timings.get(key) not in (KEEP_FORMS, ALL_DENSE):
            if not self.allows(2 * (self.rounds + 1)):
                self.untimed.add(key)
                return False
            keeps = _model_keeps_forms(self.model, chosen, self.example, self.train, self.rounds)
            self.timings[key] = KEEP_FORMS if keeps else ALL_DENSE
            self.timed.add(key)
        return self.timings[key] == KEEP_FORMS

    def spent(self) -> float:
        return time.perf_counter() - self.started

    def pass_seconds(self) -> float:
        """Seconds of one dense pass of the model (after a warm-up pass), its layers' forms left as they were."""
        if self._pass_seconds is None:
            layers = [m for m in self.model.modules() if isinstance(m, GroupedKernelConv2d)]
            forms = [layer.form for layer in layers]
            use_form(self.model, "dense")
            x = self.example.detach().requires_grad_(self.train)
            self._pass_seconds = [_time_pass(self.model, x, self.train) for _ in range(2)][-1]
            self.model.zero_grad(set_to_none=True)
            for layer, form in zip(layers, forms, strict=True):
                layer.form = form
        return self._pass_seconds

    def budget(self) -> float:
        return TIMING_SHARE * self.passes * self.pass_seconds()

    def allows(self, model_passes: int = 0) -> bool:
        """Whether ``model_passes`` dense passes more (with none: any more timing) fit the budget."""
        return self.passes is None or self.spent() + model_passes * self.pass_seconds() <= self.budget()

    def cost(self) -> str:
        """What the timing cost, for the log ('' where earlier runs had recorded every choice)."""
        if not self.timed and not self.untimed:
            return ""
        passes = self.passes
        bound = "" if passes is None else f" of {self.budget():.1f} s ({TIMING_SHARE:.0%} of {passes:,} passes)"
        left = f"; {len(self.untimed)} choice(s) left untimed for the budget: dense" if self.untimed else ""
        return f" (form timing took {self.spent():.1f} s{bound}{left})"


def choose_forms(
    model: nn.Module,
    input_size: int,
    batch_size: int,
    *,
    train: bool = False,
    channels_last: bool = False,
    rounds: int = 5,
    timings: MutableMapping[str, str] | None = None,
    passes: int | None = None,
) -> dict[str, str]:
    """Set every ``GroupedKernelConv2d`` of ``model`` to its fastest form for batches of ``batch_size``
    images of side ``input_size`` on the model's device (forward only, or forward + backward with
    ``train``), timed on inputs in the memory format they will run in (``channels_last`` or not) over
    ``rounds`` alternating rounds, the dense form kept unless another is clearly faster; then the whole
    model in those forms is timed against the dense form everywhere, which it must beat, or every layer
    runs dense. Returns {layer name: form}. A layer (or model) whose key (device, torch version, pass,
    memory format, input shape, layer) is in ``timings`` takes the form recorded there; the others are
    timed and recorded, within TIMING_SHARE of the ``passes`` model passes the choice is for (where given):
    what the budget leaves untimed runs dense and is not recorded."""
    if not any(isinstance(m, GroupedKernelConv2d) for m in model.modules()):
        return {}
    reference = next(model.parameters())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    example = torch.rand(batch_size, 3, input_size, input_size, device=reference.device, dtype=reference.dtype)
    example = example.contiguous(memory_format=memory_format)
    timings = {} if timings is None else timings
    timing = _Timing(model, example, train, channels_last, rounds, timings, passes)
    was_training = model.training
    model.eval()
    chosen: dict[str, str] = {}
    layer_keys: list[str] = []
    try:
        shapes = _input_shapes(model, example)
        for name, shape in tqdm(
            shapes.items(), desc="timing grouped conv forms", unit="layer", leave=False, disable=None
        ):
            layer = model.get_submodule(name)
            layer_key = f"{layer.extra_repr().rsplit(', form=', 1)[0]}, restore={layer.restore is not None}"
            layer.form = chosen[name] = timing.layer_form(layer, shape, timing.key(shape, layer_key))
            layer_keys.append(f"{name} {tuple(shape)} {layer_key} {chosen[name]}")
        model_key = timing.key(example.shape, _model_key(layer_keys))
        if set(chosen.values()) != {"dense"} and not timing.keeps_forms(chosen, model_key):
            chosen = dict.fromkeys(chosen, "dense")
            use_form(model, "dense")
    finally:
        model.train(was_training)
    forms = ", ".join(f"{form} x{count}" for form, count in Counter(chosen.values()).most_common())
    log.info("grouped-kernel conv forms on %s, batch %d: %s%s", reference.device, batch_size, forms, timing.cost())
    return chosen
