"""The cost of what training-time pruning and adversarial training add to a training epoch, against
plain epochs of the same model measured in alternation in the same process.

- Adversarial training: a PGD-k epoch against (k + 1) plain epochs (k attack steps of one forward and
  backward pass each, plus the training step). Target: within 10%.
- Training-time pruning: an epoch with SFP's or FPGM's hooks against one without (SFP re-selects its masks
  after the epoch; FPGM masks the gradients at every step). Target: under 5% on ResNet-56. And an epoch
  of OTOv2's DHSPG while it prunes (its group penalty and half-space projection at every step) against
  one of plain SGD (the official code's own estimate is about 1.05x; no target set here).
- Methods that change the network: a fine-tuning epoch of a CC-shaped model (every block conv reading 70%
  of its inputs through a rank of 60% of its outputs, gradients clipped to norm 1, as CC's fine-tune) and
  a distillation epoch of an LRF model (1x1 adapters around every block conv at r 0.35, the dense model
  teaching, as LRF's search and final phases), each against a plain epoch of the dense model. No target.

    python benchmarks/bench_training_time.py                      # ResNet-56, CPU defaults
    python benchmarks/bench_training_time.py --device cuda --images 10000 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from baselines.fpgm_soft import FPGMHooks
from baselines.lrf import removed_count
from baselines.otov2 import DHSPG, OTOv2Params
from baselines.sfp import SFPHooks
from baselines.training_time import pruned_counts
from gkp.application.catalog import ATTACKS, LOSSES, build_model
from gkp.foundation.contracts import PruningContext, Recipe, TrainingHooks
from gkp.mechanisms.data.splits import TensorSplit
from gkp.mechanisms.engine.device import benchmark_device
from gkp.mechanisms.engine.optimize import Optimization
from gkp.mechanisms.engine.train import Epoch, LoopSettings, objective_generator, train_one_epoch
from gkp.mechanisms.pruning.plan import AdaptersPlan, FactorisedPlan, Plan
from gkp.mechanisms.pruning.surgery import apply


def sgd(model) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def dhspg(model) -> torch.optim.Optimizer:
    """OTOv2's optimizer while it prunes: partitioned at its first step, then penalising and projecting
    at every one (the target is far off)."""
    optimizer = DHSPG(model, Recipe(epochs=1, lr=0.01), 0.4375, OTOv2Params())
    optimizer.pruning = True
    return optimizer


@dataclass
class Run:
    """One timed configuration: its model, objective, hooks, optimizer (made per epoch), teacher and clip."""

    model: nn.Module
    objective: Callable
    hooks: TrainingHooks
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    teacher: nn.Module | None = None
    clip: float | None = None


def epoch_seconds(run: Run, split, settings, device) -> float:
    optimization = Optimization({"model": run.optimizer(run.model)}, {}, None, run.clip)
    epoch = Epoch(
        run.model, optimization, run.objective, run.hooks, objective_generator(device, 0), teacher=run.teacher
    )
    start = time.perf_counter()
    train_one_epoch(epoch, split, settings, seed=0, description="bench")
    run.hooks.end_epoch(run.model, 0, 0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def median_seconds(split, runs: dict[str, Run], settings, device, rounds: int) -> dict[str, float]:
    """Alternate the configurations round by round (after one warm-up round) and take medians."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(rounds + 1):
        for name, run in runs.items():
            seconds = epoch_seconds(run, split, settings, device)
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def cc_shaped(model: nn.Module) -> nn.Module:
    """Every block conv factorised as a CC result might be: 70% of its inputs, rank 60% of its outputs."""
    layers = {}
    for name in model.grouped_kernel_targets("3x3"):
        conv = model.get_submodule(name)
        layers[name] = FactorisedPlan(tuple(range(round(0.7 * conv.in_channels))), round(0.6 * conv.out_channels))
    return apply(model, Plan("cc", None, layers))


def lrf_shaped(model: nn.Module, rate: float = 0.35) -> nn.Module:
    """Every block conv between 1x1 adapters, its inputs and outputs cut at LRF's ratio r."""
    layers = {}
    for name in model.grouped_kernel_targets("3x3"):
        conv = model.get_submodule(name)
        keep_in = range(conv.in_channels - removed_count(conv.in_channels, rate))
        keep_out = range(conv.out_channels - removed_count(conv.out_channels, rate))
        layers[name] = AdaptersPlan(tuple(keep_in), tuple(keep_out))
    return apply(model, Plan("lrf", rate, layers))


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
    cross_entropy, pgd, distill = LOSSES.get("cross_entropy"), LOSSES.get("pgd"), LOSSES.get("distill")
    plain = cross_entropy.objective(cross_entropy.params(), 0.0)
    teacher = build_model(args.arch).to(device).eval()
    runs = {
        "plain": Run(model, plain, TrainingHooks(), sgd),
        "sfp": Run(model, plain, sfp, sgd),
        "fpgm": Run(model, plain, fpgm, sgd),
        "otov2": Run(model, plain, TrainingHooks(), dhspg),
        "cc": Run(cc_shaped(model), plain, TrainingHooks(), sgd, clip=1.0),
        "lrf": Run(lrf_shaped(model), distill.objective(distill.params(), 0.0), TrainingHooks(), sgd, teacher),
        f"pgd-{args.steps}": Run(
            model, pgd.objective(pgd.params(steps=args.steps), 0.0, ATTACKS.get(pgd.attack)), TrainingHooks(), sgd
        ),
    }
    seconds = median_seconds(split, runs, settings, device, args.rounds)
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
    print(f"CC's fine-tune (CC-shaped model, clipping): {100 * (seconds['cc'] / plain - 1):+.1f}% of a plain epoch")
    print(f"LRF's distillation (adapters at r 0.35): {100 * (seconds['lrf'] / plain - 1):+.1f}% of a plain epoch")
    adversarial = seconds[f"pgd-{args.steps}"] / ((args.steps + 1) * plain)
    print(f"PGD-{args.steps} training / ({args.steps} + 1) plain epochs: {adversarial:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
