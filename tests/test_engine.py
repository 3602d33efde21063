"""The training loop's pieces: schedules, precision settings, and the stop on a non-finite loss."""

from __future__ import annotations

import pytest
import torch

from gkp.application.catalog import LOSSES
from gkp.application.checkpoints.io import read_checkpoint
from gkp.application.config import build_experiment
from gkp.application.pipeline.run import run_experiment
from gkp.foundation.contracts import TrainingHooks
from gkp.foundation.errors import ConfigError, NonFiniteLossError, RunFolderError
from gkp.mechanisms.data.splits import TensorSplit
from gkp.mechanisms.engine.device import amp_dtype, resolve_device, use_channels_last
from gkp.mechanisms.engine.optimize import Optimization
from gkp.mechanisms.engine.schedule import build_scheduler
from gkp.mechanisms.engine.train import Epoch, LoopSettings, objective_generator, train_one_epoch

from conftest import tiny_config


def _learning_rates(**train) -> list[float]:
    cfg = build_experiment(tiny_config(train=train)).train
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    scheduler = build_scheduler(cfg, optimizer)
    rates = []
    for _ in range(cfg.epochs):
        rates.append(round(optimizer.param_groups[0]["lr"], 6))
        optimizer.step()
        scheduler.step()
    return rates


def test_schedules():
    assert _learning_rates(epochs=5, lr=1.0, schedule="step", step_size=2, gamma=0.1) == [1, 1, 0.1, 0.1, 0.01]
    assert _learning_rates(epochs=4, lr=1.0, schedule="multistep", milestones=[1, 3], gamma=0.5) == [1, 0.5, 0.5, 0.25]
    assert _learning_rates(epochs=4, lr=1.0, schedule="cosine") == [1, 0.853553, 0.5, 0.146447]
    assert _learning_rates(epochs=3, lr=0.3, schedule="constant") == [0.3, 0.3, 0.3]


def test_precision_settings_on_cpu():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("bf16", cpu) == torch.bfloat16
    assert use_channels_last("auto", cpu) and not use_channels_last("off", cpu)
    assert not use_channels_last("auto", torch.device("mps")) and use_channels_last("on", torch.device("mps"))
    with pytest.raises(ConfigError, match="amp: fp16 needs a CUDA device"):
        amp_dtype("fp16", cpu)
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
class LayoutProbe(torch.nn.Module):
    """A linear classifier that records the memory format of each batch it is given."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3 * 8 * 8, 10)
        self.layouts: set[str] = set()

    def forward(self, x):
        self.layouts.add("channels_last" if not x.is_contiguous() else "contiguous")
        return self.linear(torch.flatten(x, 1))


@pytest.mark.parametrize("setting, layout", [("off", "contiguous"), ("on", "channels_last")])
def test_training_batches_reach_the_model_in_the_layout_the_setting_names(setting, layout):
    """The crop's gather hands over channels_last batches; with channels_last off the model must still
    get contiguous ones (else every conv runs channels_last unasked, and forms timed for NCHW misjudge)."""
    model = LayoutProbe()
    split = TensorSplit(torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8), torch.arange(16) % 10, "crop_flip")
    settings = LoopSettings(stage="test", seed=0, batch_size=8, amp="off", channels_last=setting)
    optimization = Optimization({"model": torch.optim.SGD(model.parameters(), lr=0.1)}, {}, None, None)
    cross_entropy = LOSSES.get("cross_entropy")
    objective = cross_entropy.objective(cross_entropy.params(), 0.0)
    epoch = Epoch(model, optimization, objective, TrainingHooks(), objective_generator(torch.device("cpu"), 0))
    train_one_epoch(epoch, split, settings, seed=0, description="test")
    assert model.layouts == {layout}


def test_asking_for_a_missing_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        resolve_device("cuda")


def test_a_diverging_run_stops_and_keeps_its_last_good_epoch(tmp_path):
    # Epoch 1 trains normally; the learning rate then jumps by 1e9 and the loss overflows in epoch 2.
    exp = build_experiment(
        tiny_config(
            stages=["train"],
            train={"epochs": 3, "lr": 0.05, "schedule": "multistep", "milestones": [1], "gamma": 1e9, "eval_every": 0},
        )
    )
    with pytest.raises(
        NonFiniteLossError,
        match=r"train, epoch 2: the training loss became (nan|inf).*"
        r"The last good checkpoint \(.*train_last.ckpt\) is kept",
    ):
        run_experiment(exp, out=tmp_path)
    last = read_checkpoint(tmp_path / "state" / "train_last.ckpt")
    assert last["metadata"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    assert not (tmp_path / "dense.ckpt").exists()
    # The interrupted stage belongs to that config: a changed one must not resume from it.
    calmer = build_experiment(tiny_config(stages=["train"], train={"epochs": 3, "lr": 0.05, "eval_every": 0}))
    with pytest.raises(RunFolderError, match=r"stage\(s\) train computed from a different config \(train.schedule"):
        run_experiment(calmer, out=tmp_path)
