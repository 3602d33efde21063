"""Training throughput: our loop (uint8 data on the device, batched tensor augmentation, AMP on CUDA,
channels_last) against a plain torchvision loop (a Dataset of PIL images with RandomCrop +
RandomHorizontalFlip + ToTensor, read by a DataLoader with worker processes), same model, batch size,
augmentation and optimizer, measured in the same process. Prints images/second and the ratio.

Then fine-tuning after pruning: epochs of our loop on the dense model, the L1-pruned one and the SR-GKP
one at rate 0.4375 (the same MACs), in alternation; the grouped model trains in the dense form, as the
finetune stage runs it. Target: SR-GKP's epoch at most 1.05x the dense model's.

    python benchmarks/bench_train.py                         # ResNet-20, CPU defaults
    python benchmarks/bench_train.py --arch resnet56 --device cuda --images 20000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from gkp.application.catalog import LOSSES, build_model
from gkp.foundation.contracts import TrainingHooks
from gkp.mechanisms.data.splits import TensorSplit
from gkp.mechanisms.engine.device import benchmark_device, use_channels_last
from gkp.mechanisms.engine.optimize import Optimization, gradient_scaler
from gkp.mechanisms.engine.train import Epoch, LoopSettings, objective_generator, train_one_epoch


class PILImages(Dataset):
    """What torchvision.datasets.CIFAR10 does per item: uint8 array -> PIL image -> transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def plain_epoch(model, loader, optimizer, device) -> float:
    model.train()
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)


def ours_epoch(
    model, split, optimizer, device, batch_size: int, epoch: int, amp: str = "auto", channels_last: str = "auto"
) -> float:
    settings = LoopSettings(stage="bench", seed=0, batch_size=batch_size, amp=amp, channels_last=channels_last)
    start = time.perf_counter()
    cross_entropy = LOSSES.get("cross_entropy")
    objective = cross_entropy.objective(cross_entropy.params(), 0.0)
    optimization = Optimization({"model": optimizer}, {}, gradient_scaler(amp, device), None)
    state = Epoch(model, optimization, objective, TrainingHooks(), objective_generator(device, epoch))
    train_one_epoch(state, split, settings, seed=epoch, description="ours")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return split.num_samples / (time.perf_counter() - start)


def fresh(arch: str, device: torch.device, channels_last: bool):
    torch.manual_seed(0)
    model = build_model(arch).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=2048, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per loop (after one warm-up)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes of the plain loop")
    parser.add_argument("--amp", default="auto", choices=("auto", "off", "fp16", "bf16"), help="our loop's precision")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"), help="our loop's layout")
    parser.add_argument("--no-pruned", action="store_true", help="skip the fine-tuning rows (dense, L1, SR-GKP)")
    args = parser.parse_args()
    device = benchmark_device(args.device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images)

    loader = DataLoader(
        PILImages(images, labels),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    split = TensorSplit(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device),
        torch.from_numpy(labels).to(device),
        "crop_flip",
    )

    plain_model, plain_opt = fresh(args.arch, device, channels_last=False)
    our_model, our_opt = fresh(args.arch, device, channels_last=use_channels_last(args.channels_last, device))
    plain_rates, our_rates = [], []
    for epoch in range(args.epochs + 1):  # alternate, so both loops see the same machine load
        plain_rate = plain_epoch(plain_model, loader, plain_opt, device)
        our_rate = ours_epoch(our_model, split, our_opt, device, args.batch_size, epoch, args.amp, args.channels_last)
        if epoch:  # the first epoch of each is a warm-up
            plain_rates.append(plain_rate)
            our_rates.append(our_rate)
    plain, ours = float(np.median(plain_rates)), float(np.median(our_rates))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{args.arch}, batch {args.batch_size}, {args.images} images/epoch, {device} [{name}]")
    print(f"plain torchvision DataLoader loop ({args.workers} workers): {plain:9.1f} images/s")
    print(f"gkp training loop (amp {args.amp}, channels_last {args.channels_last}): {ours:9.1f} images/s")
    print(f"ratio gkp / plain (amp {args.amp}, channels_last {args.channels_last}): {ours / plain:.2f}x")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    if not args.no_pruned:
        fine_tuning(args.arch, split, device, args.batch_size, args.epochs)


def pruned_models(arch: str, device: torch.device) -> dict[str, torch.nn.Module]:
    """The dense model and its L1 and SR-GKP versions at rate 0.4375, the grouped one in the dense form."""
    from gkp.application.catalog import PRUNING_METHODS
    from gkp.mechanisms.layers.forms import use_form
    from gkp.mechanisms.pruning.plan import Plan
    from gkp.mechanisms.pruning.surgery import apply

    torch.manual_seed(0)
    dense = build_model(arch).to(device)
    models = {"dense": dense}
    for method in ("l1", "srgkp"):
        entry = PRUNING_METHODS.get(method)
        models[method] = apply(dense, Plan(method, 0.4375, entry.select(dense, 0.4375, entry.params()).layers))
    use_form(models["srgkp"], "dense")
    return models


def fine_tuning(arch: str, split, device: torch.device, batch_size: int, epochs: int) -> None:
    models = pruned_models(arch, device)
    if use_channels_last("auto", device):  # laid out as the finetune stage lays them out
        for model in models.values():
            model.to(memory_format=torch.channels_last)
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    rates: dict[str, list[float]] = {name: [] for name in models}
    for epoch in range(epochs + 1):
        for name, model in models.items():
            rate = ours_epoch(model, split, optimizers[name], device, batch_size, epoch)
            if epoch:
                rates[name].append(rate)
    dense = float(np.median(rates["dense"]))
    for name in models:
        rate = float(np.median(rates[name]))
        print(f"fine-tuning {name:>6}: {rate:9.1f} images/s, step time {dense / rate:.2f}x the dense model's")


if __name__ == "__main__":
    main()
