"""The cost of what training-time pruning and adversarial training add to a training epoch, against
plain epochs of the same model measured in alternation in the same process.

- Adversarial training: a PGD-k epoch against (k + 1) plain epochs (k attack steps of one forward and
  backward pass each, plus the training step). Target: within 10%.
- Training-time pruning: an epoch with SFP's or FPGM's hooks against one without (SFP re-selects its masks
  after the epoch; FPGM masks the gradients at every step). Target: under 5% on ResNet-56. And an epoch
  of OTOv2's DHSPG while it prunes (its group penalty and half-space projection at every step) against
  one of plain SGD (the official code's own estimate is about 1.05x; no target set here).

    python benchmarks/bench_training_time.py                      # ResNet-56, CPU defaults
    python benchmarks/bench_training_time.py --device cuda --images 10000 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from baselines.fpgm_soft import FPGMHooks
from baselines.otov2 import DHSPG, OTOv2Params
from baselines.sfp import SFPHooks
from baselines.training_time import pruned_counts
from gkp.application.catalog import ATTACKS, LOSSES, build_model
from gkp.foundation.contracts import PruningContext, Recipe, TrainingHooks
from gkp.mechanisms.data.splits import TensorSplit
from gkp.mechanisms.engine.device import benchmark_device
from gkp.mechanisms.engine.optimize import Optimization
from gkp.mechanisms.engine.train import Epoch, LoopSettings, objective_generator, train_one_epoch


def sgd(model) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def dhspg(model) -> torch.optim.Optimizer:
    """OTOv2's optimizer while it prunes: partitioned at its first step, then penalising and projecting
    at every one (the target is far off)."""
    optimizer = DHSPG(model, Recipe(epochs=1, lr=0.01), 0.4375, OTOv2Params())
    optimizer.pruning = True
    return optimizer


def epoch_seconds(model, split, objective, hooks, optimizer, settings, device) -> float:
    epoch = Epoch(
        model, Optimization({"model": optimizer}, {}, None, None), objective, hooks, objective_generator(device, 0)
    )
    start = time.perf_counter()
    train_one_epoch(epoch, split, settings, seed=0, description="bench")
    hooks.end_epoch(model, 0, 0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def median_seconds(model, split, runs: dict, settings, device, rounds: int) -> dict[str, float]:
    """Alternate the configurations round by round (after one warm-up round) and take medians."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(rounds + 1):
        for name, (objective, hooks, optimizer) in runs.items():
            seconds = epoch_seconds(model, split, objective, hooks, optimizer(model), settings, device)
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet56")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=1024, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="PGD steps k of the adversarial training")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up)")
    args = parser.parse_args()
    device = benchmark_device(args.device)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, device=device)
    split = TensorSplit(images, torch.randint(0, 10, (args.images,), device=device), "crop_flip")
    model = build_model(args.arch).to(device)
    settings = LoopSettings(stage="bench", seed=0, batch_size=args.batch_size, amp="off", channels_last="off")

    counts = pruned_counts(model, "all", 0.4375, PruningContext())
    sfp, fpgm = SFPHooks(counts, csb=1.0), FPGMHooks(counts, {name: 0 for name in counts})
    sfp.start_phase(model, 0)
    fpgm.start_phase(model, 0)
    cross_entropy, pgd = LOSSES.get("cross_entropy"), LOSSES.get("pgd")
    plain = cross_entropy.objective(cross_entropy.params(), 0.0)
    runs = {
        "plain": (plain, TrainingHooks(), sgd),
        "sfp": (plain, sfp, sgd),
        "fpgm": (plain, fpgm, sgd),
        "otov2": (plain, TrainingHooks(), dhspg),
        f"pgd-{args.steps}": (
            pgd.objective(pgd.params(steps=args.steps), 0.0, ATTACKS.get(pgd.attack)),
            TrainingHooks(),
            sgd,
        ),
    }
    seconds = median_seconds(model, split, runs, settings, device, args.rounds)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"{args.arch}, batch {args.batch_size}, {args.images} images/epoch, {device} [{name}], medians of {args.rounds}"
    )
    for run, value in seconds.items():
        print(f"{run:>8}: {value:8.2f} s/epoch")
    plain = seconds["plain"]
    print(f"SFP hooks: {100 * (seconds['sfp'] / plain - 1):+.1f}% of a plain epoch (target < 5%)")
    print(f"FPGM hooks: {100 * (seconds['fpgm'] / plain - 1):+.1f}% of a plain epoch (target < 5%)")
    print(f"OTOv2's DHSPG: {100 * (seconds['otov2'] / plain - 1):+.1f}% of a plain SGD epoch")
    adversarial = seconds[f"pgd-{args.steps}"] / ((args.steps + 1) * plain)
    print(f"PGD-{args.steps} training / ({args.steps} + 1) plain epochs: {adversarial:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
