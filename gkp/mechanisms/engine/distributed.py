"""Runs that span several processes, one per GPU (``torchrun --nproc_per_node N -m gkp run ...``, or a
multi-GPU SLURM job): data-parallel training and sharded evaluation that give one process's results.

- **Training.** Each step draws the global batch a single process would draw (``train.batch_size``, the
  same shuffling and augmentation); each process takes its contiguous part, and the model runs wrapped in
  torch's ``DistributedDataParallel``, which averages the gradients across processes during the backward
  pass. Each process's loss is weighted by its part's share of the batch (``batch_weight``), so that the
  average is the whole batch's gradient even where the parts differ by an image: the step is one process's
  step on the whole batch up to the order of floating-point sums. Attacks inside a step (adversarial
  training) take input gradients with ``torch.autograd.grad``, which leaves DDP's parameter hooks alone.
- **BatchNorm.** With ``sync_batchnorm`` the statistics of a training batch are those of the whole global
  batch: torch's ``SyncBatchNorm`` on GPUs; on the CPU, where it cannot run (gloo), our own layer
  (``_GlobalBatchNorm``, checked against torch's ``BatchNorm2d`` on the whole batch). The results equal one
  process's. Without it each process normalises with its own part, as most CIFAR code does, and the running
  statistics of rank 0 are the model's (sent to the others after every epoch, as DDP's
  ``broadcast_buffers`` would at every step).
- **Evaluation.** The batches of the test split are dealt round-robin to the processes and the per-sample
  results gathered; each batch keeps the attack seeds it has in one process, so the numbers are the same.
- **Files.** Rank 0 alone writes (``gkp.foundation.files.writes_files``); every process computes the same things.

On a CPU the processes talk through gloo, on GPUs through NCCL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gkp.foundation.errors import ConfigError
from gkp.mechanisms.data.splits import Shard


def launched_as_group() -> bool:
    """Whether ``torchrun`` (or a multi-task SLURM job) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_group(device: torch.device) -> torch.device:
    """Join the run's process group when the launcher started several processes; returns the device this
    process uses (its own GPU: ``cuda:LOCAL_RANK``)."""
    if not launched_as_group() or dist.is_initialized():
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process {local_rank} of the run has no GPU of its own: this node has {torch.cuda.device_count()}; "
                "start as many processes per node as there are GPUs (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard() -> Shard:
    """This process's share of the work (the whole of it outside a process group)."""
    if not dist.is_initialized():
        return Shard()
    return Shard(dist.get_rank(), dist.get_world_size())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """The block runs in rank 0 first, then in the other processes, which find what it downloaded or wrote."""
    first = shard().rank == 0
    if not first:
        barrier()
    yield
    if first:
        barrier()


def broadcast_model(model: nn.Module) -> None:
    """Rank 0's parameters and buffers in every process (the start of training; BatchNorm's running
    statistics after each epoch)."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def sum_across(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the processes (themselves outside a group)."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def data_parallel(model: nn.Module) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` in a process group (over the parameters that need
    gradients now: one wrapper per phase), else ``model``. Buffers are not sent at every step: rank 0's
    BatchNorm statistics reach the others after each epoch (``broadcast_model``)."""
    if not dist.is_initialized() or not any(p.requires_grad for p in model.parameters()):
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False
    )


def batch_weight(part: int, reference: torch.Tensor) -> torch.Tensor:
    """What this process's mean loss is multiplied by, so that DDP's average of the processes' gradients
    is the gradient of the whole batch's mean loss: its ``part`` of the batch's images x the number of
    processes / the batch's images (one all-reduce of a number, left on the device)."""
    return float(part * dist.get_world_size()) / sum_across(reference.new_tensor([float(part)]))[0]


def gather(local: list[tuple[int, Any]]) -> list[Any]:
    """Every process's (batch index, result) pairs, as one list ordered by batch index."""
    if not dist.is_initialized():
        return [value for _, value in sorted(local, key=lambda pair: pair[0])]
    parts: list[list[tuple[int, Any]]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, local)
    return [value for _, value in sorted((pair for part in parts for pair in part), key=lambda pair: pair[0])]


# ------------------------------------------------------------------------------------------- BatchNorm


class _GlobalBatchNorm(nn.BatchNorm2d):
    """A BatchNorm2d whose training statistics are those of the global batch (every process's part); in
    eval mode, and outside a process group, it is the plain layer. Works on CPU (gloo) and GPU alike,
    where torch's SyncBatchNorm needs a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two all-reduces, as a numerically sound variance needs: the global mean, then the global sum of
        squared deviations from it (not E[x^2] - E[x]^2, which cancels when the mean is large); the counts
        stay tensors, so nothing waits on the device."""
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # sums that pass gradients back

        channels, shape = x.shape[1], (1, x.shape[1], 1, 1)
        count = x.new_tensor([float(x.numel() // channels)])
        sums = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:channels] / n
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum((0, 2, 3))) / n
        self._update_running_statistics(mean.detach(), var.detach(), n.detach())
        normalised = centred * torch.rsqrt(var + self.eps).view(shape)
        return normalised * self.weight.view(shape) + self.bias.view(shape) if self.affine else normalised

    def _update_running_statistics(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        if not self.track_running_stats:
            return
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        with torch.no_grad():
            self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
            self.running_var.mul_(1 - factor).add_(var * n / (n - 1).clamp(min=1), alpha=factor)


@contextmanager
def global_batchnorm(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Within the block (when ``enabled``), the model's BatchNorm2d layers normalise training batches with
    the global batch's statistics: torch's ``SyncBatchNorm`` on a GPU, ``_GlobalBatchNorm`` on the CPU. The
    layers stay the same objects, with the same weights and buffers (hooks and optimizers keep them), and
    are plain ``BatchNorm2d`` again after the block."""
    layers = [m for m in model.modules() if type(m) is nn.BatchNorm2d] if enabled else []
    on_gpu = any(p.is_cuda for p in model.parameters())
    for layer in layers:
        layer.__class__ = nn.SyncBatchNorm if on_gpu else _GlobalBatchNorm
        layer.process_group = None  # SyncBatchNorm's: the default group
    try:
        yield
    finally:
        for layer in layers:
            layer.__class__ = nn.BatchNorm2d
            del layer.process_group
