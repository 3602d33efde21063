"""Inference latency of grouped-kernel-pruned models against their dense originals, in the same process,
printed as a ratio next to the MACs ratio. The grouped model runs each layer in the fastest of its
equivalent forms (``gkp.mechanisms.layers.forms.choose_forms``); the latency of each single form used everywhere
is printed beside it. Latency depends only on the layers' shapes (groups and kernels kept per group), which
every GKP method shares at a rate, so the kernels are chosen by ``gkp_random`` (instant) unless
``--method`` says otherwise.

    python benchmarks/bench_grouped.py                       # ResNet-56 and VGG-16 (32x32), ResNet-50 (224x224)
    python benchmarks/bench_grouped.py --archs vgg16 --batches 64
    python benchmarks/bench_grouped.py --device cuda --batches 256       # on a GPU

Target: latency ratio within 1.3x of the MACs ratio (e.g. at most 0.74 for SR-GKP's 0.57 on ResNet-56)
where the layers are wide enough for grouped kernels to pay (VGG-16 at batch 64 on a CPU: at most 0.73).

``--timing-cost`` also prints what a first choice of forms costs (nothing recorded yet; forward and
backward, as an attacked evaluation chooses), in dense passes of the model and against the same choice
with every form timed in every round (no form dropped for being far slower than dense).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import Counter

import torch

from gkp.application.catalog import MODELS, PRUNING_METHODS, build_model
from gkp.foundation.schema import build
from gkp.mechanisms.counting import count_macs
from gkp.mechanisms.engine.device import benchmark_device
from gkp.mechanisms.layers import forms as forms_module
from gkp.mechanisms.layers.forms import choose_forms
from gkp.mechanisms.layers.grouped_conv import FORMS, GroupedKernelConv2d
from gkp.mechanisms.pruning.plan import Plan
from gkp.mechanisms.pruning.surgery import apply


def one_pass(model: torch.nn.Module, x: torch.Tensor) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    model(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start


def latencies(
    variants: dict[str, tuple[torch.nn.Module, dict[str, str] | None]], x: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Median seconds of one forward pass of each variant, measured in alternation (round after round,
    every variant once), so that a machine whose speed drifts affects them all alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for round_index in range(repeats + 2):  # two warm-up rounds
            for name, (model, forms) in variants.items():
                if forms is not None:
                    set_forms(model, forms)
                seconds = one_pass(model, x)
                if round_index >= 2:
                    times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def first_choice_seconds(grouped: torch.nn.Module, size: int, batch: int, every_round: bool) -> float:
    """Seconds of choosing forms for forward + backward passes with nothing recorded; with ``every_round``,
    timing every form in every round (the choice before forms far slower than dense were dropped)."""
    plausible = forms_module.PLAUSIBLE
    forms_module.PLAUSIBLE = math.inf if every_round else plausible
    try:
        start = time.perf_counter()
        choose_forms(grouped, size, batch, train=True, timings={})
        return time.perf_counter() - start
    finally:
        forms_module.PLAUSIBLE = plausible


def print_timing_cost(grouped: torch.nn.Module, size: int, batch: int, dense_pass: float) -> None:
    now, every_round = (first_choice_seconds(grouped, size, batch, every) for every in (False, True))
    print(
        f"    first choice of forms (forward+backward): {now:.1f} s, {now / dense_pass:.0f} dense forward passes; "
        f"every form in every round: {every_round:.1f} s (ratio {now / every_round:.2f})"
    )


def set_forms(model: torch.nn.Module, forms: dict[str, str]) -> None:
    for name, layer in model.named_modules():
        if isinstance(layer, GroupedKernelConv2d):
            layer.form = forms[name]


def measure_arch(arch: str, args: argparse.Namespace, device: torch.device, batches: list[int]) -> None:
    size = MODELS.get(arch).input_size
    torch.manual_seed(0)
    dense = build_model(arch).to(device).eval()
    method = PRUNING_METHODS.get(args.method)
    layers = method.select(dense, args.rate, build(method.params, {}, "params")).layers
    grouped = apply(dense, Plan(args.method, args.rate, layers)).eval()
    macs_ratio = count_macs(grouped, size) / count_macs(dense, size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{arch}, {args.method} at rate {args.rate}, {size}x{size}, {device} [{name}]")
    print(f"MACs ratio grouped / dense: {macs_ratio:.3f}; target latency ratio <= {1.3 * macs_ratio:.3f}")
    grouped_layers = [n for n, m in grouped.named_modules() if isinstance(m, GroupedKernelConv2d)]
    repeats = args.repeats if size <= 64 or device.type == "cuda" else max(args.repeats // 4, 1)
    for batch in batches:
        x = torch.rand(batch, 3, size, size, device=device)
        chosen = choose_forms(grouped, size, batch)
        variants = {"dense": (dense, None), "chosen": (grouped, chosen)}
        variants |= {form: (grouped, dict.fromkeys(grouped_layers, form)) for form in FORMS}
        seconds = latencies(variants, x, repeats)
        ratio = seconds["chosen"] / seconds["dense"]
        verdict = "met" if ratio <= 1.3 * macs_ratio else "MISSED"
        forms = ", ".join(f"{form} x{count}" for form, count in Counter(chosen.values()).most_common())
        print(
            f"batch {batch}: dense {1e3 * seconds['dense']:.2f} ms, grouped {1e3 * seconds['chosen']:.2f} ms, "
            f"latency ratio {ratio:.3f} ({verdict}); chosen forms: {forms}"
        )
        print("    every layer as " + ", ".join(f"{form}: {seconds[form] / seconds['dense']:.3f}" for form in FORMS))
        if args.timing_cost:
            print_timing_cost(grouped, size, batch, seconds["dense"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet56,vgg16,resnet50", help="comma-separated architectures")
    parser.add_argument("--method", default="gkp_random", help="a GKP method (the layer shapes are the same)")
    parser.add_argument("--rate", type=float, default=0.4375)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--batches", default=None, help="comma-separated batch sizes (default: 1,64 on CPU, 256 on GPU)"
    )
    parser.add_argument(
        "--repeats", type=int, default=20, help="rounds of alternating measurements (a quarter at 224x224 on CPU)"
    )
    parser.add_argument("--timing-cost", action="store_true", help="also print what a first choice of forms costs")
    args = parser.parse_args()
    device = benchmark_device(args.device)
    batches = [int(b) for b in (args.batches or ("256" if device.type == "cuda" else "1,64")).split(",")]
    for arch in args.archs.split(","):
        measure_arch(arch, args, device, batches)


if __name__ == "__main__":
    main()
