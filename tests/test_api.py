"""The Python API (``gkp.load``, ``gkp.prune``, ``gkp.evaluate``, ``gkp.trace``): its documented examples
run, any model prunes as asked (shapes, masked = physical, MACs), its checks are the config's, and it is
what the runner runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gkp
from gkp.application.api import _with_tables
from gkp.application.catalog import PRUNING_METHODS, build_model
from gkp.application.checkpoints.io import save_checkpoint
from gkp.application.config import build_experiment
from gkp.application.pipeline.run import run_experiment
from gkp.foundation.errors import ConfigError, DataError, PruningError
from gkp.foundation.schema import build
from gkp.mechanisms.counting import measure
from gkp.mechanisms.pruning.plan import Plan
from gkp.mechanisms.pruning.surgery import apply, apply_mask

from conftest import tiny_config
from test_pruning import randomise_batchnorm

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_examples_of_docs_api_run(tmp_path):
    checkpoint = tmp_path / "resnet20.ckpt"
    save_checkpoint(checkpoint, randomise_batchnorm(build_model("resnet20", num_classes=10)))
    namespace = {"checkpoint": checkpoint, "folder": tmp_path}
    for block in python_blocks((ROOT / "docs" / "api.md").read_text()):
        exec(compile(block, "docs/api.md", "exec"), namespace)
    assert set(namespace["report"].accuracies()) == {"benign", "fgsm", "pgd"}
    assert namespace["half_plan"].rate is None  # a MACs target replaces the rate, as in a run's plan.json


@pytest.mark.slow
def test_the_readme_example_runs_on_the_zoo_model_and_real_images(shared, tmp_path, monkeypatch):
    """The README's lines on akamaster's ResNet-56 (fetched from ../shared) and 8 real CIFAR-10 images."""
    import numpy as np

    monkeypatch.setenv("GKP_ZOO_CACHE", str(tmp_path / "zoo"))
    gkp.application.checkpoints.zoo.fetch("resnet56-akamaster", shared / "checkpoints" / "resnet56-4bfd9763.th")
    arrays = np.load(shared / "data" / "cifar10_train_prefix.npz")
    images = torch.from_numpy(arrays["images"][:8]).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(arrays["labels"][:8])
    section = (ROOT / "README.md").read_text().split("## Python", 1)[1]
    namespace = {"images": images, "labels": labels}
    exec(compile(python_blocks(section)[0], "README.md", "exec"), namespace)
    report = namespace["report"]
    assert gkp.evaluate(namespace["model"], (images, labels)).benign.accuracy == 1.0  # the zoo model, dense
    assert [a.label for a in report.attacks] == ["apgd_ce", "apgd_t", "fab_t", "square"]
    assert report.worst_case.accuracy == 0.0  # a plainly trained network, at 8/255, before fine-tuning


class CustomCNN(nn.Module):
    """Convs without a registry entry, a residual sum, a depthwise conv and a pooled classifier."""

    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.a, self.a_bn = nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.dw, self.dw_bn = nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.BatchNorm2d(24)
        self.b, self.b_bn = nn.Conv2d(24, 16, 1), nn.BatchNorm2d(16)
        self.c, self.c_bn = nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        y = torch.relu(self.dw_bn(self.dw(torch.relu(self.a_bn(self.a(x))))))
        x = torch.relu(x + self.b_bn(self.b(y)))
        x = nn.functional.relu(self.c_bn(self.c(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "vgg16_bn": lambda: torchvision.models.vgg16_bn(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "custom": CustomCNN,
}


def masked_equals_physical(model: nn.Module, plan: Plan, pruned: nn.Module, x: torch.Tensor) -> float:
    masked = apply_mask(_with_tables(model, x[:1], ()), plan).eval()
    with torch.no_grad():
        return (masked(x) - pruned.eval()(x)).abs().max().item()


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name == "vgg16_bn" else name for name in MODELS]
)
def test_any_model_prunes_to_the_macs_asked_and_equals_its_masked_form(name):
    torch.manual_seed(0)
    model, x = randomise_batchnorm(MODELS[name]()).eval(), torch.rand(2, 3, 32, 32)
    pruned, plan = gkp.prune(model, "l1", target_macs=0.6, example_input=x[:1])
    kept = measure(pruned, 32).macs / measure(model, 32).macs
    assert kept == pytest.approx(0.6, abs=0.03 if name == "custom" else 0.005)  # a channel of its 'a': 3%
    assert pruned(x).shape == model(x).shape == (2, 10)
    assert masked_equals_physical(model, plan, pruned, x) < 1e-5
    assert not hasattr(model, "gkp_tables")  # the model given is left as it was


@pytest.mark.parametrize("name", ["custom", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_srgkp_prunes_the_kernels_of_any_model(name):
    torch.manual_seed(0)
    model, x = randomise_batchnorm(MODELS[name]()).eval(), torch.rand(2, 3, 32, 32)
    pruned, plan = gkp.prune(model, "srgkp", rate=0.5, groups=4, example_input=x[:1])
    assert set(plan.layers) == set(gkp.trace(model, x[:1]).targets["3x3"])
    assert measure(pruned, 32).macs < measure(model, 32).macs
    assert masked_equals_physical(model, plan, pruned, x) < 1e-5


def test_the_plan_is_the_one_a_run_writes(tmp_path, pinned_forms):
    """``gkp.prune`` on a run's dense model gives the run's plan.json, layer for layer."""
    config = tiny_config(stages=["train", "prune"], train={"epochs": 1}, prune={"method": "srgkp", "rate": 0.5})
    run_experiment(build_experiment(config), out=tmp_path)
    written = json.loads((tmp_path / "plan.json").read_text())
    pruned, plan = gkp.prune(gkp.load(tmp_path / "dense.ckpt"), "srgkp", rate=0.5)
    written.pop("metadata")
    assert written == {k: v for k, v in json.loads(json.dumps(plan.to_dict())).items() if k != "metadata"}
    rebuilt = apply(gkp.load(tmp_path / "dense.ckpt"), Plan.from_dict(written))
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(rebuilt(x), pruned.eval()(x))


def test_settings_are_checked_as_a_config_checks_them():
    model = build_model("resnet8")
    with pytest.raises(ConfigError) as api_error:
        gkp.prune(model, "srgkp", rate=0.5, groups=0)
    with pytest.raises(ConfigError) as config_error:
        build_experiment(tiny_config(prune={"method": "srgkp", "rate": 0.5, "params": {"groups": 0}}))
    assert str(api_error.value) == str(config_error.value)
    with pytest.raises(ConfigError, match="did you mean 'srgkp'"):
        gkp.prune(model, "srgpk")
    with pytest.raises(ConfigError, match="prune.rate"):
        gkp.prune(model, "l1", rate=1.5)
    with pytest.raises(ConfigError, match="prunes while the model trains: pass data="):
        gkp.prune(model, "sfp", rate=0.3)
    with pytest.raises(ConfigError, match=r"finetune.lr: must be > 0"):
        gkp.prune(model, "sfp", rate=0.3, data=(torch.rand(4, 3, 16, 16), torch.zeros(4)), training={"lr": 0})
    with pytest.raises(ConfigError, match="prunes one-shot, without training"):
        gkp.prune(model, "l1", rate=0.3, training={"epochs": 1})
    with pytest.raises(ConfigError, match=r"snapshots=\{epoch: state_dict\}"):
        gkp.prune(model, "tmigkp", rate=0.3)
    with pytest.raises(ConfigError, match="calibration="):
        gkp.prune(model, "taylor", rate=0.3)


@pytest.mark.parametrize("name", ["resnet8", "custom"])
def test_a_training_time_method_trains_a_copy_on_the_data_given_and_cuts_its_zeroed_filters(name):
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10) if name == "resnet8" else CustomCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = torch.rand(40, 3, 16, 16), torch.randint(0, 10, (40,))
    x = images[:2]
    pruned, plan = gkp.prune(
        model, "sfp", rate=0.5, data=(images, labels), training={"epochs": 2, "lr": 0.01}, example_input=x
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # trained a copy
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert plan.layers and all(len(layer.kept) == widths[n] - widths[n] // 2 for n, layer in plan.layers.items())
    assert pruned(x).shape == (2, 10) and measure(pruned, 16).macs < measure(model, 16).macs


@pytest.mark.parametrize("name", PRUNING_METHODS.names())
def test_every_registered_method_is_reachable_from_python(name):
    """Each method prunes a ResNet-8 through ``gkp.prune`` (given what it reads: calibration images,
    snapshots, training data and epochs), or refuses the architecture in its check, as in a run."""
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10)
    images, labels = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    method = PRUNING_METHODS.get(name)
    reads = {"example_input": images[:1], "calibration": (images, labels) if method.calibrated else None}
    if method.training is not None:
        reads |= {"data": (images, labels), "training": {"epochs": 40, "lr": 0.01}}
    epochs = method.snapshot_epochs(build(method.params, {}, "prune.params"))
    reads["snapshots"] = {epoch: model.state_dict() for epoch in epochs} or None
    try:
        pruned, plan = gkp.prune(model, name, rate=0.5, **reads)
    except PruningError as error:
        assert name in ("l1_a", "l1_b"), error  # Li et al.'s presets are for ResNet-56 and ResNet-110 only
        return
    assert plan.method == name and (plan.layers or name == "otov2")  # OTOv2: too few steps to zero a group
    assert pruned(images[:2]).shape == (2, 10)


def test_tmigkp_reads_the_snapshots_given():
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10)
    snapshots = {epoch: {k: v + 0.01 * epoch for k, v in model.state_dict().items()} for epoch in (1, 2)}
    _, plan = gkp.prune(model, "tmigkp", rate=0.5, groups=2, first_snapshot=1, last_snapshot=2, snapshots=snapshots)
    assert set(plan.layers) == set(model.grouped_kernel_targets())


def test_a_model_without_tables_needs_an_example_input():
    with pytest.raises(PruningError, match="example_input="):
        gkp.prune(CustomCNN(), "l1", rate=0.5)
    with pytest.raises(PruningError, match="leave_unpruned applies to traced models"):
        gkp.prune(build_model("resnet8"), "l1", rate=0.5, leave_unpruned=["fc"])


def test_evaluate_takes_tensors_or_a_loader_and_the_normalisation_outside_the_model(tmp_path):
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model("resnet8", num_classes=10, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25)))
    images, labels = torch.rand(24, 3, 16, 16), torch.randint(0, 10, (24,))
    attacks = [{"name": "pgd", "eps": 8 / 255, "steps": 2}]
    report = gkp.evaluate(model, (images, labels), attacks=attacks, batch_size=8)
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    from_loader = gkp.evaluate(model, loader, attacks=attacks)
    assert all((from_loader.per_sample[k] == flags).all() for k, flags in report.per_sample.items())
    outside = build_model("resnet8", num_classes=10)
    outside.load_state_dict(model.state_dict())
    outside.normalize = nn.Identity()  # the same network, its normalisation taken out
    normalised = gkp.evaluate(outside, (images, labels), attacks=attacks, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    assert normalised.accuracies() == pytest.approx(report.accuracies(), abs=1 / 24)
    with pytest.raises(DataError, match=r"pixels in \[0, 1\].*mean=/std="):
        gkp.evaluate(model, ((images - 0.5) / 0.2, labels))
    with pytest.raises(ConfigError, match="eps= goes with suite="):
        gkp.evaluate(model, (images, labels), eps=0.1)
    with pytest.raises(ConfigError, match=r"attacks\[0\].stpes: unknown key"):
        gkp.evaluate(model, (images, labels), attacks=[{"name": "pgd", "eps": 0.1, "stpes": 3}])


def test_a_grouped_model_from_the_api_runs_in_its_fastest_forms_as_in_a_run(monkeypatch):
    """The forms are chosen as the eval stage chooses them (timing bounded by the evaluation's passes);
    tests/test_grouped.py checks the choice itself."""
    from gkp.application import api

    asked = []
    monkeypatch.setattr(api, "choose_forms", lambda *args, **kwargs: asked.append((args, kwargs)) or {})
    pruned, _ = gkp.prune(build_model("resnet8", num_classes=10), "srgkp", rate=0.5, groups=2)
    data = (torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    gkp.evaluate(pruned, data, attacks=[{"name": "fgsm", "eps": 0.03}], batch_size=32)
    (args, kwargs), *others = asked
    assert not others and args[1:] == (32, 32) and kwargs["passes"] == 2 * (1 + 4) and kwargs["train"]


def test_gkp_loads_nothing_above_foundation_until_the_api_is_used():
    import subprocess
    import sys

    code = (
        "import gkp, sys\n"
        "print(any(m.startswith('gkp.application') for m in sys.modules))\n"
        "gkp.load\n"
        "print('gkp.application.api' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_api_prunes_and_attacks_on_the_gpu_with_the_normalisation_outside_the_model():
    torch.manual_seed(0)
    model = randomise_batchnorm(torchvision.models.resnet18(num_classes=10)).eval().cuda()
    x = torch.rand(1, 3, 32, 32, device="cuda")
    pruned, _ = gkp.prune(model, "l1", target_macs=0.5, example_input=x)
    data = (torch.rand(64, 3, 32, 32, device="cuda"), torch.randint(0, 10, (64,), device="cuda"))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    report = gkp.evaluate(pruned, data, attacks=[{"name": "pgd", "eps": 8 / 255, "steps": 3}], mean=mean, std=std)
    on_cpu = gkp.evaluate(
        pruned.cpu(),
        tuple(t.cpu() for t in data),
        attacks=[{"name": "pgd", "eps": 8 / 255, "steps": 3}],
        mean=mean,
        std=std,
    )
    assert report.accuracies() == pytest.approx(on_cpu.accuracies(), abs=2 / 64)
