"""Evaluation of 224x224 inputs in bounded memory: every forward pass honours the batch size, and no
autograd graph outlives its batch (peak memory does not grow with the number of images)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from gkp.application.catalog import ATTACKS, build_model
from gkp.foundation.schema import build
from gkp.foundation.settings import AttackSpec
from gkp.mechanisms.data.splits import TensorSplit
from gkp.mechanisms.engine.evaluate import evaluate

IMAGE_SIZE = 224
# PGD also restarts, keeping the best of two runs per sample: that must not hold memory either.
RESTARTS = {"pgd": {"restarts": 2, "random_start": True}}


def shortest(settings: dict) -> dict:
    """An attack's quick settings with every count (steps, queries, targets) at most 2."""
    return {k: min(v, 2) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in settings.items()}


def quick_suite() -> list[AttackSpec]:
    """Every attack of the registry once, in settings short enough for 224x224 images."""
    return [
        AttackSpec(attack, name, build(attack.params, {**shortest(attack.quick), **RESTARTS.get(name, {})}, "attack"))
        for name, attack in ATTACKS.items()
    ]


def images(count: int) -> TensorSplit:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (count, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    return TensorSplit(x, torch.randint(0, 10, (count,), generator=generator))


def test_every_attack_honours_the_batch_size_on_224x224_inputs():
    model = build_model("resnet8", num_classes=10).eval()
    seen: list[int] = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    report = evaluate(model, images(6), quick_suite(), batch_size=4, seed=0)
    assert report.benign.total == 6 and [r.score.total for r in report.attacks] == [6] * len(ATTACKS.names())
    assert seen and max(seen) <= 4


PEAK_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_eval_memory import images, quick_suite
    from gkp.mechanisms.engine.evaluate import evaluate
    from gkp.application.catalog import build_model

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10).eval()
    peaks = []
    for count in (8, 16):
        evaluate(model, images(count), quick_suite(), batch_size=8, seed=0)
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(*peaks)
    """
)


def test_peak_memory_does_not_grow_with_the_number_of_images():
    """A ResNet-8 graph at 224x224 and batch 8 holds about 0.5 GB of activations: keeping the graphs of
    the extra batch would raise the peak by about as much. In a fresh process, so that the peak is
    this evaluation's own."""
    script = PEAK_MEMORY_SCRIPT.format(tests=str(__import__("pathlib").Path(__file__).parent))
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    first, second = map(float, output.split())
    assert second - first < 200, f"peak memory grew from {first:.0f} MiB (1 batch) to {second:.0f} MiB (2 batches)"
