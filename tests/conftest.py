"""Shared fixtures: the ../shared assets (skipped with a reason when absent) and small trained models."""

from __future__ import annotations

import os
from pathlib import Path

# One compute thread per test process (and per command a test runs), unless OMP_NUM_THREADS says
# otherwise: the tests use small models, where a second thread gains little, and on a machine whose
# other core is busy two threads wait on each other at every operation (measured: the default suite
# took 6 minutes with two threads and one core busy, under 3 with one thread).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]


class TouchOnUnpickle:
    """Unpickling this object runs ``touch path``: what a malicious checkpoint would do."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def shared_path() -> Path:
    return Path(os.environ.get("GKP_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_path()
    if not (path / "checkpoints").is_dir():
        pytest.skip(f"{path} (or $GKP_SHARED) is absent: the authors' checkpoint and CIFAR images are not here")
    return path


@pytest.fixture(scope="session")
def authors_checkpoint(shared: Path, tmp_path_factory) -> Path:
    from gkp.application.checkpoints.authors import import_authors_resnet

    destination = tmp_path_factory.mktemp("authors") / "resnet20_authors.ckpt"
    import_authors_resnet(shared / "checkpoints" / "adv_robust_gkp_resnet20_cifar10.pt", destination)
    return destination


@pytest.fixture(autouse=True)
def session_caches(tmp_path_factory, monkeypatch):
    """Form timings and file digests go to files of the test session's own, never to the user's cache: a
    layer shape is timed once per session, as once per machine in real use (tests of the timing pass
    their own dict)."""
    monkeypatch.setenv("GKP_FORMS_CACHE", str(tmp_path_factory.getbasetemp() / "forms.json"))
    monkeypatch.setenv("GKP_DIGEST_CACHE", str(tmp_path_factory.getbasetemp() / "digests.json"))


@pytest.fixture
def pinned_forms(monkeypatch):
    """Grouped-kernel convs keep their default form instead of being timed: for runs whose test is not
    about forms (timing every form of every layer costs seconds and proves nothing there)."""
    from gkp.application import api

    monkeypatch.setattr(api, "choose_forms", lambda *args, **kwargs: {})


class MemoryStore:
    """What ``fit`` persists, kept in memory: the last epoch's state (to resume from) and the rows."""

    def __init__(self):
        self.last = None

    def load_resume(self):
        return self.last

    def save_epoch(self, model, state):
        self.last = (state, {k: v.clone() for k, v in model.state_dict().items()})

    def save_best(self, *args):
        pass

    def save_snapshot(self, *args):
        pass

    def describe_last(self):
        return "memory"


def tiny_config(**sections) -> dict:
    """A config that trains in seconds: ResNet-8 on 16x16 synthetic images."""
    config = {
        "name": "tiny",
        "device": "cpu",
        "model": {"arch": "resnet8"},
        "data": {"name": "synthetic", "image_size": 16, "train_size": 256, "test_size": 128, "batch_size": 32},
        "train": {"epochs": 3, "lr": 0.05, "schedule": "cosine"},
        "prune": {"method": "l1", "rate": 0.5},
        "finetune": {"epochs": 2, "lr": 0.01, "schedule": "cosine"},
        "attacks": [{"name": "fgsm", "eps": "8/255"}, {"name": "pgd", "eps": "8/255", "steps": 3}],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """(model in eval mode, data bundle): a ResNet-8 trained to well above chance on synthetic data."""
    from gkp.application.catalog import load_data
    from gkp.application.checkpoints.io import load_model
    from gkp.application.config import build_experiment
    from gkp.application.pipeline.run import run_experiment

    out = tmp_path_factory.mktemp("tiny")
    exp = build_experiment(tiny_config(stages=["train"], train={"epochs": 6, "eval_every": 0}))
    run_experiment(exp, out=out)
    model, _ = load_model(out / "dense.ckpt")
    return model, load_data(exp.data, torch.device("cpu"))


class Interrupted(Exception):
    """Raised by ``interrupt_at_step``: the run stops there, as a kill would."""


def interrupt_at_step(monkeypatch, step: int) -> None:
    """Stop the run at the ``step``-th training step that computes the configured loss (counted over the
    whole run, from now), as a kill would: the last epoch checkpoint is all that remains of the epoch."""
    from gkp.application.pipeline import training

    original = training.objective_of
    count = {"steps": 0}

    def counting(cfg):
        objective = original(cfg)

        def wrapped(context):
            count["steps"] += 1
            if count["steps"] == step:
                raise Interrupted
            return objective(context)

        return wrapped

    monkeypatch.setattr(training, "objective_of", counting)


def run_interrupted_then_resumed(config, out: Path, monkeypatch, steps: list[int]) -> None:
    """Run ``config`` into ``out``, interrupted at each of ``steps`` in turn (counted from each restart),
    then to its end."""
    from gkp.application.pipeline.run import run_experiment

    for step in steps:
        interrupt_at_step(monkeypatch, step)
        with pytest.raises(Interrupted):
            run_experiment(config, out=out)
        monkeypatch.undo()
    run_experiment(config, out=out)


def shared_cifar_npz(shared: Path, folder: Path, train: int = 4000) -> dict:
    """A ``data`` section over the shared real CIFAR-10 images written as npz files into ``folder``: the
    first ``train`` to train on, the last 660 held out as the test split."""
    import numpy as np

    with np.load(shared / "data" / "cifar10_train_prefix.npz") as arrays:
        images, labels = arrays["images"], arrays["labels"]
    np.savez(folder / "train.npz", images=images[:train], labels=labels[:train])
    np.savez(folder / "test.npz", images=images[4000:], labels=labels[4000:])
    return {"name": "npz", "train_path": str(folder / "train.npz"), "test_path": str(folder / "test.npz")}
