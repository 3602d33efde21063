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
given the number of passes it chooses for, the layer shapes not yet recorded are timed only if that costs
at most TIMING_SHARE of those passes (estimated from the counts of shapes, layers and rounds, so that the
decision, unlike a clock, is the same every time): otherwise they run dense, unrecorded, for an evaluation
large enough to pay for their timing. The log reports what the timing cost, or why it was left out.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from gkp.mechanisms.layers.grouped_conv import FORMS, GroupedKernelConv2d

log = logging.getLogger(__name__)

DENSE_MARGIN = 0.9  # another form replaces the dense one where it takes at most 90% of its time
MODEL_MARGIN = 0.98  # and the chosen forms stay where the whole model takes at most 98% of its dense time
KEEP_FORMS, ALL_DENSE = "chosen forms", "dense everywhere"  # the whole model's verdicts, as recorded
PLAUSIBLE = 1.5  # a form over 1.5x the dense time in its first timed round is not timed further
TIMING_SHARE = 0.05  # given the passes it chooses for, the timing may cost about 5% of them


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


@dataclass
class _Layer:
    name: str
    module: GroupedKernelConv2d
    shape: torch.Size
    layer_key: str  # the layer's part of its timing key: its shape of kernels and groups
    key: str  # its whole timing key


def _model_key(layers: list[_Layer]) -> str:
    """The whole model's part of its timing key: its layers with their forms."""
    described = [f"{layer.name} {tuple(layer.shape)} {layer.layer_key} {layer.module.form}" for layer in layers]
    digest = hashlib.sha256("\n".join(described).encode()).hexdigest()[:16]
    return f"model {digest}, under {MODEL_MARGIN:g}x"


def _timing_passes(shapes: int, layers: int, rounds: int) -> float:
    """About what timing costs, in passes of the whole model: each layer shape at most ``rounds`` + 1
    passes of the layer in each form (a layer taken as 1 / ``layers`` of the model), and the whole model's
    check 2 (``rounds`` + 1) passes."""
    return shapes * (rounds + 1) * len(FORMS) / layers + 2 * (rounds + 1)


def has_forms(model: nn.Module) -> bool:
    """Whether any layer of ``model`` has several equivalent forms to choose from."""
    return any(isinstance(m, GroupedKernelConv2d) for m in model.modules())


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
    timed and recorded where their timing costs at most TIMING_SHARE of the ``passes`` model passes the
    choice is for (all of them, if given no ``passes``), and otherwise run dense, unrecorded."""
    if not has_forms(model):
        return {}
    reference = next(model.parameters())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    example = torch.rand(batch_size, 3, input_size, input_size, device=reference.device, dtype=reference.dtype)
    example = example.contiguous(memory_format=memory_format)
    timings = {} if timings is None else timings
    key = functools.partial(_timing_key, reference.device, reference.dtype, train=train, channels_last=channels_last)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    try:
        layers = _layers(model, example, key)
        untimed = {layer.key for layer in layers if timings.get(layer.key) not in FORMS}
        affordable = passes is None or _timing_passes(len(untimed), len(layers), rounds) <= TIMING_SHARE * passes
        for layer in tqdm(layers, desc="timing grouped conv forms", unit="layer", leave=False, disable=None):
            if affordable and timings.get(layer.key) not in FORMS:  # a layer shape is timed once per machine
                x = torch.randn(layer.shape, device=reference.device, dtype=reference.dtype)
                x = x.contiguous(memory_format=memory_format).requires_grad_(train)
                timings[layer.key] = _fastest(_time_forms(layer.module, x, train, rounds))
                layer.module.zero_grad(set_to_none=True)
            layer.module.form = timings.get(layer.key, "dense")
        chosen = {layer.name: layer.module.form for layer in layers}
        verdict = key(example.shape, _model_key(layers))
        some_grouped = set(chosen.values()) != {"dense"}
        if some_grouped and timings.get(verdict) not in (KEEP_FORMS, ALL_DENSE) and affordable:
            keeps = _model_keeps_forms(model, chosen, example, train, rounds)
            timings[verdict] = KEEP_FORMS if keeps else ALL_DENSE  # timed once, like a layer shape
        if some_grouped and timings.get(verdict) != KEEP_FORMS:
            chosen = dict.fromkeys(chosen, "dense")
            use_form(model, "dense")
    finally:
        model.train(was_training)
    forms = ", ".join(f"{form} x{count}" for form, count in Counter(chosen.values()).most_common())
    cost = _timing_cost(len(untimed), affordable, time.perf_counter() - started, passes, len(layers), rounds)
    log.info("grouped-kernel conv forms on %s, batch %d: %s%s", reference.device, batch_size, forms, cost)
    return chosen


def _layers(model: nn.Module, example: torch.Tensor, key: Callable[..., str]) -> list[_Layer]:
    """The model's grouped-kernel convs, each with its input shape on ``example`` and its timing key."""
    layers = []
    for name, shape in _input_shapes(model, example).items():
        module = model.get_submodule(name)
        layer_key = f"{module.extra_repr().rsplit(', form=', 1)[0]}, restore={module.restore is not None}"
        layers.append(_Layer(name, module, shape, layer_key, key(shape, layer_key)))
    return layers


def _timing_cost(shapes: int, affordable: bool, seconds: float, passes: int | None, layers: int, rounds: int) -> str:
    """What the timing cost, or why it was left out, for the log ('' where earlier runs had recorded every
    choice)."""
    if not shapes:
        return ""
    if affordable:
        return f" (timing {shapes} layer shape(s) took {seconds:.1f} s)"
    estimate = _timing_passes(shapes, layers, rounds)
    return (
        f" ({shapes} layer shape(s) left untimed, dense: timing them would cost about {estimate:.0f} passes, over "
        f"{TIMING_SHARE:.0%} of the {passes:,} it chooses for)"
    )
