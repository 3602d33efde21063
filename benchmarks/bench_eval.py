"""Evaluation throughput: the SR-GKP paper's CIFAR-10 evaluation (``{suite: paper-cifar}``: clean, FGSM
0.01 and 0.1 on the predicted labels, PGD-3, in normalized units) of a ResNet-56 on synthetic 32x32 images,
as ``gkp eval`` runs it (BatchNorm folded, channels_last). Prints images/second per pass and the peak GPU
memory, which must not grow with the number of images (the evaluator keeps no activations).

    python benchmarks/bench_eval.py                          # 1,000 images, CPU defaults
    python benchmarks/bench_eval.py --device cuda --images 10000
"""

from __future__ import annotations

import argparse
import time

import torch

from gkp.application.catalog import build_model
from gkp.application.config import build_experiment
from gkp.mechanisms.data.splits import TensorSplit
from gkp.mechanisms.engine.device import benchmark_device
from gkp.mechanisms.engine.evaluate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet56")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    device = benchmark_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.arch).to(device).eval()
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (args.images,), device=device)
    split = TensorSplit(images, labels, "none")
    specs = build_experiment({"model": {"arch": args.arch}, "stages": ["eval"], "attacks": [{"suite": "paper-cifar"}]})
    warm_up = TensorSplit(images[: args.batch_size], labels[: args.batch_size], "none")  # kernels picked, caches filled
    evaluate(model, warm_up, specs.attacks, batch_size=args.batch_size, seed=0, description="warm-up")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    report = evaluate(model, split, specs.attacks, batch_size=args.batch_size, seed=0, description="paper-cifar")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{args.arch}, {args.images} synthetic images, batch {args.batch_size}, {device} [{name}]")
    print(f"paper-cifar evaluation: {seconds:.1f} s in all, {args.images / seconds:.1f} images/s")
    for label, score in [("benign", report.benign), *((a.label, a.score) for a in report.attacks)]:
        print(f"  {label:>10}: {score.seconds:7.2f} s ({args.images / max(score.seconds, 1e-9):9.1f} images/s)")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
