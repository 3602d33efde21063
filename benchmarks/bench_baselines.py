"""Pruning time of every filter-pruning baseline: scoring + allocation (``select``) and surgery, on
ResNet-56 at 32x32 (the config's default calibration, 5 batches of 128 images) and, for the
data-dependent methods, ResNet-50 at 224x224. Calibration images are random (speed does not depend on
their content); the weights are a fresh initialisation.

    python benchmarks/bench_baselines.py [--device cuda] [--imagenet-batches 2 --imagenet-batch-size 32]
        [--methods l1 hrank ...] [--models resnet56 resnet50]
"""

from __future__ import annotations

import argparse
import time

import torch

from gkp.application.catalog import PRUNING_METHODS, build_model
from gkp.foundation.contracts import PruningContext
from gkp.mechanisms.engine.device import benchmark_device
from gkp.mechanisms.pruning.plan import Plan
from gkp.mechanisms.pruning.surgery import apply

BASELINES = {name: method for name, method in PRUNING_METHODS.items() if method.kind == "filters"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batches(count: int, size: int, side: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(size, 3, side, side, generator=generator).to(device),
            torch.randint(0, 10, (size,), generator=generator).to(device),
        )
        for _ in range(count)
    ]


def time_method(name: str, model, batches, side: int, device: torch.device) -> tuple[float, float]:
    method = BASELINES[name]
    context = PruningContext(calibration=lambda: batches, input_size=side)
    synchronize(device)
    start = time.perf_counter()
    layers = method.select(model, 0.4375, method.params(), context).layers
    synchronize(device)
    selected = time.perf_counter()
    apply(model, Plan(name, 0.4375, layers))
    synchronize(device)
    return selected - start, time.perf_counter() - selected


def report(title: str, model, methods: list[str], batches, side: int, device: torch.device) -> None:
    images = sum(len(y) for _, y in batches)
    print(f"\n{title}: {images} calibration images, rate 0.4375, {device}")
    print(f"{'method':<12} {'select s':>9} {'surgery s':>10}")
    for name in methods:
        select_seconds, surgery_seconds = time_method(name, model, batches, side, device)
        print(f"{name:<12} {select_seconds:9.3f} {surgery_seconds:10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", nargs="*", default=sorted(BASELINES))
    parser.add_argument("--cifar-batches", type=int, default=5)
    parser.add_argument("--cifar-batch-size", type=int, default=128)
    parser.add_argument("--imagenet-batches", type=int, default=2)
    parser.add_argument("--imagenet-batch-size", type=int, default=32)
    parser.add_argument("--models", nargs="*", default=["resnet56", "resnet50"], choices=["resnet56", "resnet50"])
    args = parser.parse_args()
    device = benchmark_device(args.device)
    threads = "" if device.type == "cuda" else f" ({torch.get_num_threads()} threads)"
    print(f"device: {device}{threads}")
    methods = [m for m in args.methods if m in BASELINES and not (m.startswith("l1_") and m != "l1_b")]
    if "resnet56" in args.models:
        torch.manual_seed(0)
        resnet56 = build_model("resnet56").to(device).eval()
        batches = random_batches(args.cifar_batches, args.cifar_batch_size, 32, device)
        time_method("l1", resnet56, batches[:1], 32, device)  # warm-up
        report("ResNet-56, 32x32", resnet56, methods, batches, 32, device)
    if "resnet50" in args.models:
        resnet50 = build_model("resnet50", num_classes=1000).to(device).eval()
        batches = random_batches(args.imagenet_batches, args.imagenet_batch_size, 224, device)
        calibrated = [m for m in methods if BASELINES[m].calibrated]
        report("ResNet-50, 224x224 (data-dependent methods)", resnet50, calibrated, batches, 224, device)


if __name__ == "__main__":
    main()
