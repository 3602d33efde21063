"""SR-GKP pruning speed: our vectorised selection + surgery against the loop reference
(``gkp.grouped.reference``, the same procedure written with plain Python loops, as the authors' code
computes it) on the same weights, in the same process. Prints seconds, the ratio and whether every
selection is identical.

    python benchmarks/bench_srgkp.py                              # ResNet-20/56/110, reference on one
                                                                  # layer per shape, time extrapolated
    python benchmarks/bench_srgkp.py --reference all              # the reference on every layer (slow)
    python benchmarks/bench_srgkp.py --checkpoint resnet20_authors.ckpt --archs resnet20

Targets on 2 CPU cores: ResNet-56 under 3 s, ResNet-110 under 6 s, identical selections.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from gkp.catalog import build_model
from gkp.checkpoint import load_model
from gkp.contracts import model_spec
from gkp.grouped import reference
from gkp.grouped.srgkp import METHOD, SRGKPParams
from gkp.pruning.plan import Plan
from gkp.pruning.surgery import apply

TARGETS = {"resnet56": 3.0, "resnet110": 6.0}


def ours(model, rate: float) -> tuple[float, dict]:
    start = time.perf_counter()
    layers = METHOD.select(model, rate, SRGKPParams()).layers
    apply(model, Plan("srgkp", rate, layers))
    return time.perf_counter() - start, layers


def reference_layers(model, layers: dict, rate: float, every_layer: bool) -> tuple[float, int, int, bool]:
    """(reference seconds, measured or extrapolated; layers compared; layers in all; all identical)."""
    by_shape = defaultdict(list)
    for name in layers:
        by_shape[tuple(model.get_submodule(name).weight.shape)].append(name)
    seconds, compared, identical = 0.0, 0, True
    for names in by_shape.values():
        measured = names if every_layer else names[:1]
        spent = 0.0
        for name in measured:
            weight = model.get_submodule(name).weight.detach().numpy()
            start = time.perf_counter()
            expected = reference.srgkp_layer(weight, rate)
            spent += time.perf_counter() - start
            got = layers[name].to_dict()
            identical &= got["filter_order"] == expected["filter_order"] and got["kept"] == expected["kept"]
            compared += 1
        seconds += spent / len(measured) * len(names)
    return seconds, compared, len(layers), identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet20,resnet56,resnet110")
    parser.add_argument("--rate", type=float, default=0.4375)
    parser.add_argument(
        "--reference",
        choices=("sample", "all"),
        default="sample",
        help="run the reference on one layer per shape (time extrapolated) or on every layer",
    )
    parser.add_argument("--checkpoint", help="weights to prune instead of a seeded random init (one arch)")
    parser.add_argument("--repeats", type=int, default=3, help="our timing is the best of this many runs")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, numpy {np.__version__}; reference: {args.reference}")
    for arch in args.archs.split(","):
        if args.checkpoint:
            model = load_model(args.checkpoint)[0]
            arch = model_spec(model).arch
        else:
            torch.manual_seed(0)
            model = build_model(arch)
        runs = [ours(model, args.rate) for _ in range(args.repeats)]
        seconds, layers = min(runs, key=lambda run: run[0])
        ref_seconds, compared, total, identical = reference_layers(model, layers, args.rate, args.reference == "all")
        estimate = "" if args.reference == "all" else " (extrapolated)"
        target = (
            f", target < {TARGETS[arch]:.0f} s: {'met' if seconds < TARGETS[arch] else 'MISSED'}"
            if arch in TARGETS
            else ""
        )
        print(
            f"{arch}: ours {seconds:.2f} s (select + surgery){target}; reference {ref_seconds:.1f} s{estimate}; "
            f"ratio {ref_seconds / seconds:.0f}x; identical on {compared}/{total} layers compared: {identical}"
        )


if __name__ == "__main__":
    main()
