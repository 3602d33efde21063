"""Attack speed on the authors' ResNet-20, over the same images, in the same process, measured in alternation.

Paper rows: FGSM, PGD-3 and PGD-20 in the SR-GKP paper's mode (normalized inputs), ours against the
adversarial-robustness-toolbox (ART, the authors' library) and against the model's raw forward+backward
time. Ours runs as the evaluator runs it, on ``evaluated_model``: a copy with its BatchNorm layers folded
into the convs and its weights in channels_last memory format; ART runs on the model as loaded, as the
authors ran it. Printed: images/second; our overhead over raw forward+backward passes of the model we
attack; our speed-up over ART; and the raw passes of the model as loaded, to show what the evaluated copy
gains.

AutoAttack rows: the ``strong`` suite's attacks (APGD-CE, APGD-T, FAB-T, Square at AutoAttack's standard
settings, pixel space, L-inf ``--autoattack-eps``) against torchattacks' ports of the official AutoAttack
code, on ``--autoattack-images`` images: seconds (CPU time on the CPU) and robust accuracy of ours on the
evaluated copy, ours on the model as loaded, and torchattacks on the model as loaded; the speed-ups over
torchattacks of both.

    python benchmarks/bench_attacks.py --checkpoint resnet20_authors.ckpt [--images 1000] [--device cuda]
        [--rows paper autoattack] [--autoattack-images 100] [--autoattack-eps 0.5/255]

(On a CPU shared with other work, ``OMP_NUM_THREADS=1`` keeps the threads from waiting on each other.)

(``gkp import-checkpoint ../shared/checkpoints/adv_robust_gkp_resnet20_cifar10.pt resnet20_authors.ckpt``
makes the checkpoint; ``pip install adversarial-robustness-toolbox`` for the ART column and
``pip install --no-deps torchattacks`` for the AutoAttack rows, which are skipped without it.)
Targets on CPU: overhead under 20%, at least 2x ART for PGD; no AutoAttack attack slower than torchattacks'.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gkp.application.catalog import ATTACKS
from gkp.application.checkpoints.io import load_model
from gkp.entries.suites.suites import STRONG
from gkp.foundation.schema import build
from gkp.foundation.settings import AttackSpec, EvalConfig
from gkp.foundation.threat import PIXELS
from gkp.mechanisms.engine.device import benchmark_device
from gkp.mechanisms.engine.evaluate import attack_space, evaluated_model

SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_train_prefix.npz"
ATTACK_SETTINGS = {
    "FGSM": ("fgsm", {"eps": 0.1}, 1),
    "PGD-3": ("pgd", {"eps": 8 / 255, "step_size": 2 / 255, "steps": 3, "random_start": False}, 3),
    "PGD-20": ("pgd", {"eps": 8 / 255, "step_size": 2 / 255, "steps": 20, "random_start": False}, 20),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def raw_gradients(model, z: torch.Tensor, y: torch.Tensor, batch: int) -> None:
    for i in range(0, len(z), batch):
        inputs = z[i : i + batch].clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(inputs), y[i : i + batch], reduction="sum"), inputs)


def ours(model, z: torch.Tensor, y: torch.Tensor, name: str, params, box, batch: int) -> None:
    for i in range(0, len(z), batch):
        ATTACKS.get(name).run(model, z[i : i + batch], y[i : i + batch], params, None, box)


def art_attack(model, box, name: str, settings: dict, batch: int, device: torch.device):
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(3, 32, 32),
        nb_classes=10,
        clip_values=(box.lower, box.upper),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
    if name == "fgsm":
        return FastGradientMethod(classifier, eps=settings["eps"], batch_size=batch)
    return ProjectedGradientDescent(
        classifier,
        eps=settings["eps"],
        eps_step=settings["step_size"],
        max_iter=settings["steps"],
        num_random_init=0,
        batch_size=batch,
        verbose=False,
    )


def median_seconds(model, x, y, attack: str, settings: dict, passes: int, args, device, have_art: bool) -> dict:
    """Median seconds of raw gradients (x ``passes``) of the model as loaded and of the evaluated copy, ours
    (on the evaluated copy) and ART (on the model as loaded) over the same images, alternating."""
    entry = ATTACKS.get(attack)
    spec = AttackSpec(entry, attack, build(entry.params, settings, "attack"), space="normalized")
    loaded, z, box = attack_space(model, x, spec)
    evaluated, _, _ = attack_space(evaluated_model(model, EvalConfig()), x, spec)
    art = art_attack(loaded, box, attack, settings, args.batch_size, device) if have_art else None
    z_numpy, y_numpy = z.cpu().numpy(), y.cpu().numpy()
    times: dict[str, list[float]] = {"raw loaded": [], "raw": [], "ours": [], "art": []}
    for _ in range(args.rounds + 1):  # the first round warms up
        times["raw loaded"].append(timed(lambda: raw_gradients(loaded, z, y, args.batch_size), device) * passes)
        times["raw"].append(timed(lambda: raw_gradients(evaluated, z, y, args.batch_size), device) * passes)
        times["ours"].append(timed(lambda: ours(evaluated, z, y, attack, spec.params, box, args.batch_size), device))
        if art is not None:
            times["art"].append(timed(lambda: art.generate(x=z_numpy, y=y_numpy), device))
    return {key: statistics.median(values[1:]) for key, values in times.items() if values}


def torchattacks_port(model, name: str, params):
    """torchattacks' port of the official AutoAttack attack ``name``, at our ``params``."""
    import torchattacks

    threat = {"norm": {"linf": "Linf", "l2": "L2"}[params.norm], "eps": params.eps}
    if name == "apgd_ce":
        return torchattacks.APGD(model, **threat, steps=params.steps, n_restarts=params.restarts, loss="ce")
    if name == "apgd_t":  # it tries n_classes - 1 targets
        return torchattacks.APGDT(
            model, **threat, steps=params.steps, n_restarts=params.restarts, n_classes=params.targets + 1
        )
    if name == "fab_t":
        return torchattacks.FAB(
            model,
            **threat,
            steps=params.steps,
            n_restarts=params.restarts,
            alpha_max=params.alpha_max,
            eta=params.eta,
            beta=params.beta,
            multi_targeted=True,
            n_classes=params.targets + 1,
        )
    return torchattacks.Square(
        model, **threat, n_queries=params.queries, p_init=params.p_init, resc_schedule=params.rescale_schedule
    )


def robust_accuracy(model, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def autoattack_rows(model, x: torch.Tensor, y: torch.Tensor, args, device: torch.device) -> None:
    """Each attack of the strong suite, in its order: ours on the evaluated copy and on the model as loaded,
    and torchattacks on the model as loaded, over the same images, alternating; medians of the rounds."""
    numerator, _, denominator = args.autoattack_eps.partition("/")
    eps = float(numerator) / float(denominator or 1)
    x, y = x[: args.autoattack_images].contiguous(), y[: args.autoattack_images]
    evaluated = evaluated_model(model, EvalConfig())
    for warm_up in (evaluated, model):  # the first passes of a model set its kernels up
        raw_gradients(warm_up, x, y, args.batch_size)
    clock = "CPU seconds of this process" if device.type == "cpu" else "seconds"
    print(
        f"AutoAttack's standard evaluation, L-inf eps {args.autoattack_eps}, {len(x)} images, "
        f"batch {args.batch_size}, {clock}"
    )
    for entry in STRONG.make(eps=eps):
        name = entry.pop("name")
        params = build(ATTACKS.get(name).params, entry, "attack")
        runs = {
            "ours": partial(ours_adversarials, evaluated, x, y, name, params, args.batch_size),
            "ours as loaded": partial(ours_adversarials, model, x, y, name, params, args.batch_size),
            "torchattacks": partial(torchattacks_port(model, name, params), x, y),
        }
        seconds, accuracy = alternating(runs, model, y, args.autoattack_rounds, device)
        print(
            f"{name}: ours {seconds['ours']:.1f} s (robust {100 * accuracy['ours']:.1f}%), "
            f"ours as loaded {seconds['ours as loaded']:.1f} s ({100 * accuracy['ours as loaded']:.1f}%), "
            f"torchattacks {seconds['torchattacks']:.1f} s ({100 * accuracy['torchattacks']:.1f}%): "
            f"ours {seconds['torchattacks'] / seconds['ours']:.2f}x torchattacks "
            f"({seconds['torchattacks'] / seconds['ours as loaded']:.2f}x on the same model)",
            flush=True,
        )


def alternating(runs: dict, model, y: torch.Tensor, rounds: int, device: torch.device) -> tuple[dict, dict]:
    """({run: median seconds}, {run: robust accuracy of its adversarials}) over ``rounds`` rounds. On the
    CPU the seconds are the process's CPU time: the other work of a shared machine leaves it nearly alone,
    where it can double a run's wall time."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    seconds: dict[str, list[float]] = {key: [] for key in runs}
    accuracy: dict[str, float] = {}
    for _ in range(rounds):
        for key, attack in runs.items():
            synchronize(device)
            start = clock()
            x_adv = attack()
            synchronize(device)
            seconds[key].append(clock() - start)
            accuracy[key] = robust_accuracy(model, x_adv, y)
    return {key: statistics.median(values) for key, values in seconds.items()}, accuracy


def ours_adversarials(model, x: torch.Tensor, y: torch.Tensor, name: str, params, batch: int) -> torch.Tensor:
    return torch.cat(
        [
            ATTACKS.get(name).run(model, x[i : i + batch], y[i : i + batch], params, None, PIXELS)
            for i in range(0, len(x), batch)
        ]
    )


def paper_rows(model, x: torch.Tensor, y: torch.Tensor, args, device: torch.device) -> None:
    try:
        import art  # noqa: F401

        have_art = True
    except ImportError:
        have_art = False
    print(f"authors' ResNet-20, {len(x)} images, batch {args.batch_size}, paper mode (normalized inputs)")
    for title, (attack, settings, passes) in ATTACK_SETTINGS.items():
        median = median_seconds(model, x, y, attack, settings, passes, args, device, have_art)
        line = (
            f"{title}: ours {len(x) / median['ours']:.0f} img/s, raw forward+backward x{passes} "
            f"{len(x) / median['raw']:.0f} img/s (overhead {100 * (median['ours'] / median['raw'] - 1):+.1f}%; "
            f"as loaded {len(x) / median['raw loaded']:.0f} img/s)"
        )
        if "art" in median:
            line += f", ART {len(x) / median['art']:.0f} img/s (ours {median['art'] / median['ours']:.2f}x ART)"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", required=True, help="the authors' ResNet-20, converted by gkp import-checkpoint"
    )
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--data", default=str(SHARED_IMAGES), help="npz of CIFAR-10 images")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds (median reported)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", nargs="+", choices=("paper", "autoattack"), default=["paper", "autoattack"])
    parser.add_argument("--autoattack-images", type=int, default=100)
    parser.add_argument(
        "--autoattack-eps",
        default="0.5/255",
        help="L-inf eps in pixels, e.g. 0.5/255: the default leaves the authors' model half robust",
    )
    parser.add_argument("--autoattack-rounds", type=int, default=1, help="alternating rounds (median reported)")
    args = parser.parse_args()
    device = benchmark_device(args.device)
    model, _ = load_model(args.checkpoint, device)
    with np.load(args.data) as arrays:
        x = torch.from_numpy(arrays["images"][: args.images]).permute(0, 3, 1, 2).float().div(255).to(device)
        y = torch.from_numpy(arrays["labels"][: args.images]).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {device} [{name}]")
    if "paper" in args.rows:
        paper_rows(model, x, y, args, device)
    if "autoattack" in args.rows:
        try:
            import torchattacks  # noqa: F401
        except ImportError:
            print("AutoAttack rows skipped: torchattacks is absent (pip install --no-deps torchattacks)")
            return
        autoattack_rows(model, x, y, args, device)


if __name__ == "__main__":
    main()
