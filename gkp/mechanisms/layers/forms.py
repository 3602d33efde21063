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
"""

from __future__ import annotations

import hashlib
import logging
import platform
import statistics
import time
from collections import Counter
from collections.abc import MutableMapping

import torch
from torch import nn
from tqdm import tqdm

from gkp.mechanisms.layers.grouped_conv import FORMS, GroupedKernelConv2d

log = logging.getLogger(__name__)

DENSE_MARGIN = 0.9  # another form replaces the dense one where it takes at most 90% of its time
MODEL_MARGIN = 0.98  # and the chosen forms stay where the whole model takes at most 98% of its dense time
KEEP_FORMS, ALL_DENSE = "chosen forms", "dense everywhere"  # the whole model's verdicts, as recorded


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
    round, so that a machine whose speed drifts (a loaded one) slows them all alike."""
    times: dict[str, list[float]] = {form: [] for form in FORMS}
    for round_index in range(rounds + 1):
        for form in FORMS:
            seconds = _time_form(layer, x, form, train)
            if round_index:
                times[form].append(seconds)
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


def _model_key(device: torch.device, dtype, shape, layer_keys: list[str], train: bool, channels_last: bool) -> str:
    model_key = hashlib.sha256("\n".join(layer_keys).encode()).hexdigest()[:16]
    return _timing_key(device, dtype, shape, f"model {model_key}, under {MODEL_MARGIN:g}x", train, channels_last)


def choose_forms(
    model: nn.Module,
    input_size: int,
    batch_size: int,
    *,
    train: bool = False,
    channels_last: bool = False,
    rounds: int = 5,
    timings: MutableMapping[str, str] | None = None,
) -> dict[str, str]:
    """Set every ``GroupedKernelConv2d`` of ``model`` to its fastest form for batches of ``batch_size``
    images of side ``input_size`` on the model's device (forward only, or forward + backward with
    ``train``), timed on inputs in the memory format they will run in (``channels_last`` or not) over
    ``rounds`` alternating rounds, the dense form kept unless another is clearly faster; then the whole
    model in those forms is timed against the dense form everywhere, which it must beat, or every layer
    runs dense. Returns {layer name: form}. A layer (or model) whose key (device, torch version, pass,
    memory format, input shape, layer) is in ``timings`` takes the form recorded there; the others are
    timed and recorded."""
    if not any(isinstance(m, GroupedKernelConv2d) for m in model.modules()):
        return {}
    reference = next(model.parameters())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    example = torch.rand(batch_size, 3, input_size, input_size, device=reference.device, dtype=reference.dtype)
    example = example.contiguous(memory_format=memory_format)
    was_training = model.training
    model.eval()
    chosen: dict[str, str] = {}
    layer_keys: list[str] = []
    timings = {} if timings is None else timings
    try:
        shapes = _input_shapes(model, example)
        for name, shape in tqdm(
            shapes.items(), desc="timing grouped conv forms", unit="layer", leave=False, disable=None
        ):
            layer = model.get_submodule(name)
            layer_key = f"{layer.extra_repr().rsplit(', form=', 1)[0]}, restore={layer.restore is not None}"
            key = _timing_key(reference.device, reference.dtype, shape, layer_key, train, channels_last)
            if timings.get(key) not in FORMS:  # layers of one shape are timed once, here or in an earlier run
                x = torch.randn(shape, device=reference.device, dtype=reference.dtype)
                x = x.contiguous(memory_format=memory_format).requires_grad_(train)
                timings[key] = _fastest(_time_forms(layer, x, train, rounds))
                layer.zero_grad(set_to_none=True)
            layer.form = chosen[name] = timings[key]
            layer_keys.append(f"{name} {tuple(shape)} {layer_key} {chosen[name]}")
        if set(chosen.values()) != {"dense"}:
            key = _model_key(reference.device, reference.dtype, example.shape, layer_keys, train, channels_last)
            if timings.get(key) not in (KEEP_FORMS, ALL_DENSE):  # timed once, like a layer shape
                timings[key] = KEEP_FORMS if _model_keeps_forms(model, chosen, example, train, rounds) else ALL_DENSE
            if timings[key] == ALL_DENSE:
                chosen = dict.fromkeys(chosen, "dense")
                use_form(model, "dense")
    finally:
        model.train(was_training)
    if chosen:
        log.info(
            "grouped-kernel conv forms on %s, batch %d: %s",
            reference.device,
            batch_size,
            ", ".join(f"{form} x{count}" for form, count in Counter(chosen.values()).most_common()),
        )
    return chosen
