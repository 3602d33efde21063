"""SR-GKP pruning speed: our vectorised selection + surgery against the loop reference
(``gkp.entries.grouped_kernels.loop_reference``, the same procedure written with plain Python loops, as the
authors' code computes it) on the same weights, in the same process. Prints seconds, the ratio and whether every
selection is identical.

    python benchmarks/bench_srgkp.py                              # ResNet-20/56/110 and VGG-16, reference
                                                                  # on one layer per shape, time extrapolated
    python benchmarks/bench_srgkp.py --reference all              # the reference on every layer (slow)
    python benchmarks/bench_srgkp.py --checkpoint resnet20_authors.ckpt --archs resnet20
    python benchmarks/bench_srgkp.py --archs resnet56 --device cuda --compare-cpu  # the search on a GPU

The reference runs only on layers of at most ``--reference-channels`` input channels (64 by default):
on VGG-16's 128- to 512-channel layers the plain-Python reference takes hours, so those are not compared
(nor counted in its time) and the ratio is printed only when every layer shape was compared.

The search runs on the model's device (``--device``); ``--compare-cpu`` also runs it on the CPU and says
whether the selections are the same.

Targets on 2 CPU cores: ResNet-56 under 3 s, ResNet-110 under 6 s, VGG-16 under 300 s, identical selections.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numba
import numpy as np
import torch

from gkp.application.catalog import build_model
from gkp.application.checkpoints.io import load_model
from gkp.entries.grouped_kernels import loop_reference as reference
from gkp.entries.grouped_kernels.srgkp import ENTRY as SRGKP
from gkp.entries.grouped_kernels.srgkp import SRGKPParams
from gkp.foundation.contracts import model_spec
from gkp.mechanisms.engine.device import benchmark_device
from gkp.mechanisms.pruning.plan import Plan
from gkp.mechanisms.pruning.surgery import apply

TARGETS = {"resnet56": 3.0, "resnet110": 6.0, "vgg16": 300.0}
REPEAT_UNDER = 60.0  # seconds: longer runs are timed once


def compile_branch_sums() -> float:
    """Seconds to compile the numba loops of the branch costs (or load them from numba's disk cache), which
    happens once per process: not counted in our times."""
    start = time.perf_counter()
    SRGKP.select(build_model("resnet8"), 0.4375, SRGKPParams())
    return time.perf_counter() - start


def ours(model, rate: float) -> tuple[float, dict]:
    """Seconds of the selection and the surgery on the model's device, and the selection."""
    start = time.perf_counter()
    layers = SRGKP.select(model, rate, SRGKPParams()).layers
    apply(model, Plan("srgkp", rate, layers))
    if model_device(model).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, layers


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def reference_layers(
    model, layers: dict, rate: float, every_layer: bool, max_channels: int
) -> tuple[float, int, int, bool]:
    """(reference seconds, measured or extrapolated, over the layers of at most ``max_channels`` input
    channels; layers compared; layers not compared; all compared identical)."""
    by_shape = defaultdict(list)
    skipped = 0
    for name in layers:
        shape = tuple(model.get_submodule(name).weight.shape)
        if shape[1] > max_channels:
            skipped += 1
        else:
            by_shape[shape].append(name)
    seconds, compared, identical = 0.0, 0, True
    for names in by_shape.values():
        measured = names if every_layer else names[:1]
        spent = 0.0
        for name in measured:
            weight = model.get_submodule(name).weight.detach().cpu().numpy()
            start = time.perf_counter()
            expected = reference.srgkp_layer(weight, rate)
            spent += time.perf_counter() - start
            got = layers[name].to_dict()
            identical &= got["filter_order"] == expected["filter_order"] and got["kept"] == expected["kept"]
            compared += 1
        seconds += spent / len(measured) * len(names)
    return seconds, compared, skipped, identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet20,resnet56,resnet110,vgg16")
    parser.add_argument("--rate", type=float, default=0.4375)
    parser.add_argument(
        "--reference",
        choices=("sample", "all"),
        default="sample",
        help="run the reference on one layer per shape (time extrapolated) or on every layer",
    )
    parser.add_argument("--checkpoint", help="weights to prune instead of a seeded random init (one arch)")
    parser.add_argument(
        "--reference-channels", type=int, default=64, help="run the reference on layers of at most this many inputs"
    )
    parser.add_argument("--device", default="cpu", help="where the model is, so where the search runs")
    parser.add_argument("--compare-cpu", action="store_true", help="also search on the CPU: same selections?")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help=f"our timing is the best of this many runs (one if over {REPEAT_UNDER:.0f} s)",
    )
    args = parser.parse_args()
    device = benchmark_device(args.device)
    print(
        f"search on {device}; torch threads {torch.get_num_threads()}, numpy {np.__version__}; "
        f"reference: {args.reference}"
    )
    compile_seconds = compile_branch_sums()
    print(f"numba {numba.__version__}: compiled (or loaded from its cache) in {compile_seconds:.2f} s, not counted")
    for arch in args.archs.split(","):
        if args.checkpoint:
            model = load_model(args.checkpoint)[0]
            arch = model_spec(model).arch
        else:
            torch.manual_seed(0)
            model = build_model(arch)
        model = model.to(device)
        runs = [ours(model, args.rate)]
        while len(runs) < args.repeats and runs[0][0] < REPEAT_UNDER:
            runs.append(ours(model, args.rate))
        seconds, layers = min(runs, key=lambda run: run[0])
        ref_seconds, compared, skipped, identical = reference_layers(
            model, layers, args.rate, args.reference == "all", args.reference_channels
        )
        estimate = "" if args.reference == "all" else " (extrapolated)"
        if skipped:
            versus = (
                f"reference {ref_seconds:.1f} s{estimate} on the layers of <= {args.reference_channels} inputs only, "
                f"{skipped} larger layers not run"
            )
        else:
            versus = f"reference {ref_seconds:.1f} s{estimate}; ratio {ref_seconds / seconds:.0f}x"
        target = (
            f", target < {TARGETS[arch]:.0f} s: {'met' if seconds < TARGETS[arch] else 'MISSED'}"
            if arch in TARGETS
            else ""
        )
        print(
            f"{arch}: ours {seconds:.2f} s (select + surgery on {device.type}){target}; {versus}; "
            f"identical on {compared}/{len(layers)} layers compared: {identical}"
        )
        if args.compare_cpu:
            cpu_seconds, cpu_layers = ours(model.cpu(), args.rate)
            same = {k: v.to_dict() for k, v in cpu_layers.items()} == {k: v.to_dict() for k, v in layers.items()}
            print(f"{arch}: on the CPU {cpu_seconds:.2f} s; the same selection as on {device.type}: {same}")


if __name__ == "__main__":
    main()
