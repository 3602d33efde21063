"""A grouped model from the Python API is attacked as fast as a run's: PGD through ``gkp.evaluate`` on an
SR-GKP ResNet-20 against the L1 ResNet-20 at the same rate (equal MACs) and the dense one, in the same
process; beside them, the SR-GKP model through the engine's evaluation alone, its grouped convs left in
their default form, as users had to before the API (the issue measured 147 s there against 35 s for the
L1 model). Random weights and images: only the speed is measured.

    python benchmarks/bench_api.py                          # 256 images, PGD-10, CPU
    python benchmarks/bench_api.py --device cuda --images 10000 --batch-size 500

Target: SR-GKP through gkp.evaluate at most 1.1x the dense model's time (the runner's eval stage runs the
same ``evaluate_split``, so the API is the runner by construction). The L1 model's time, at equal MACs, is
reached only where a grouped form beats the dense one (wide layers, GPUs: bench_grouped.py); on a CPU the
grouped convs run in their dense form.
"""

from __future__ import annotations

import argparse
import time

import torch

import gkp
from gkp.application.catalog import build_model
from gkp.application.config import build_attacks
from gkp.foundation.settings import EvalConfig
from gkp.mechanisms.data.splits import GivenSplit
from gkp.mechanisms.engine.device import benchmark_device
from gkp.mechanisms.engine.evaluate import evaluate


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0.4375)
    args = parser.parse_args()
    device = benchmark_device(args.device)
    torch.manual_seed(0)
    dense = build_model(args.arch, num_classes=10).to(device).eval()
    models = {
        "dense": dense,
        "l1": gkp.prune(dense, "l1", rate=args.rate)[0],
        "srgkp": gkp.prune(dense, "srgkp", rate=args.rate)[0],
    }
    data = (torch.rand(args.images, 3, 32, 32, device=device), torch.randint(0, 10, (args.images,), device=device))
    attacks = [{"name": "pgd", "eps": 8 / 255, "steps": args.steps}]
    seconds = {}
    for name, model in models.items():
        gkp.evaluate(model, (data[0][: args.batch_size], data[1][: args.batch_size]), attacks=attacks)  # warm-up
        seconds[name] = timed(lambda m=model: gkp.evaluate(m, data, attacks=attacks, batch_size=args.batch_size))
    specs, split = build_attacks(attacks), GivenSplit(data, device)
    internals = models["srgkp"]
    for module in internals.modules():
        if hasattr(module, "form"):
            module.form = "grouped"  # the layer's default form, as surgery leaves it
    seconds["srgkp, engine alone"] = timed(
        lambda: evaluate(internals, split, specs, batch_size=args.batch_size, seed=0, options=EvalConfig())
    )
    print(f"PGD-{args.steps} on {args.images} images of {args.arch}, batch {args.batch_size}, {device}:")
    for name, value in seconds.items():
        print(f"  {name:20s} {value:7.2f} s")
    print(f"ratio srgkp / dense through gkp.evaluate: {seconds['srgkp'] / seconds['dense']:.2f} (target <= 1.1)")
    print(f"ratio srgkp / l1 through gkp.evaluate: {seconds['srgkp'] / seconds['l1']:.2f}")
    print(f"ratio srgkp engine alone / l1 through gkp.evaluate: {seconds['srgkp, engine alone'] / seconds['l1']:.2f}")


if __name__ == "__main__":
    main()
