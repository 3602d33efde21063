"""Runs of several processes (``torchrun``; gloo on the CPU): with synchronised BatchNorm they train and
evaluate to one process's numbers, rank 0 alone writes, and a killed run resumes."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from gkp.application.pipeline.run import run_experiment
from gkp.foundation.threat import PIXELS
from gkp.mechanisms.data.splits import FolderSplit, Shard, TensorSplit
from gkp.mechanisms.engine import distributed

from conftest import tiny_config, write_config

TEST_SIZE = 70
DRIFT_IMAGES = 3  # how many test images a trained model may move by rounding alone, after a few epochs


def torchrun(config, out) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "gkp", "run", str(config), "--out", str(out)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def metrics(folder) -> list[dict[str, str]]:
    return list(csv.DictReader((folder / "metrics.csv").open()))


def test_two_processes_give_one_processs_numbers_write_once_and_resume_after_a_kill(tmp_path):
    from gkp.application.config import build_experiment

    raw = tiny_config(
        stages=["train", "eval"],
        data={"name": "synthetic", "image_size": 16, "train_size": 400, "test_size": TEST_SIZE, "batch_size": 64},
        train={"epochs": 3, "sync_batchnorm": True, "eval_attacks": ["fgsm"]},
        attacks=[{"name": "fgsm", "eps": "2/255"}, {"name": "pgd", "eps": "2/255", "steps": 2, "random_start": True}],
    )
    run_experiment(build_experiment(raw), out=tmp_path / "one")
    config = write_config(tmp_path / "config.yaml", raw)
    killed = torchrun(config, tmp_path / "two")
    events = tmp_path / "two" / "tb" / "train"  # written after an epoch's checkpoint and metrics
    deadline = time.time() + 300
    while not any(events.glob("events.*")) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGTERM)  # torchrun stops its workers (they run in sessions of their own)
    killed.wait()
    assert not (tmp_path / "two" / "state" / "train.done").exists(), "killed too late: the training had finished"
    resumed = torchrun(config, tmp_path / "two")
    output = resumed.communicate(timeout=600)[0].decode()
    assert resumed.returncode == 0, output[-3000:]

    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [row["epoch"] for row in two] == ["1", "2", "3"]
    # Equal up to rounding (sums split across processes), which the steps then amplify: after the first
    # epoch the losses are under 1e-6 apart and the accuracies within an image; after the third, measured
    # 2e-5 to 1.1e-4 and up to 2 test images apart.
    for a, b in zip(one, two, strict=True):
        first = a["epoch"] == "1"
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-5 if first else 1e-3)
        for column in ("train_accuracy", "test_benign", "test_fgsm"):
            assert abs(float(a[column]) - float(b[column])) <= (1 if first else DRIFT_IMAGES) / TEST_SIZE + 1e-9, column
    single = json.loads((tmp_path / "one" / "results.json").read_text())
    double = json.loads((tmp_path / "two" / "results.json").read_text())
    assert abs(single["benign"]["correct"] - double["benign"]["correct"]) <= DRIFT_IMAGES
    for a, b in zip(single["attacks"], double["attacks"], strict=True):  # PGD's random starts included
        assert abs(a["correct"] - b["correct"]) <= DRIFT_IMAGES, a["label"]
    assert json.loads((tmp_path / "two" / "env.json").read_text())["processes"] == 2
    # one TensorBoard file per invocation (rank 0's): the killed one and the resumed one
    assert len(list((tmp_path / "two" / "tb" / "train").glob("events.*"))) == 2
    assert output.count("accuracy (%) on") == 1  # rank 0 alone reports


def test_a_process_takes_its_part_of_each_training_batch_and_every_other_test_batch():
    split = TensorSplit(torch.arange(14 * 3 * 2 * 2, dtype=torch.uint8).view(14, 3, 2, 2), torch.arange(14))
    whole = [y for _, y in split.batches(5, train=True, seed=3)]
    parts = [[y for _, y in split.batches(5, train=True, seed=3, shard=Shard(r, 2))] for r in range(2)]
    assert [torch.cat(pair).tolist() for pair in zip(*parts, strict=True)] == [y.tolist() for y in whole]
    assert [len(y) for y in parts[0]] == [3, 3, 2] and split.num_batches(5, train=True, shard=Shard(0, 2)) == 3
    # a last batch (4 images) smaller than two per process is dropped, as one process drops a single image
    assert [len(y) for _, y in split.batches(5, train=True, shard=Shard(0, 3))] == [2, 2]
    owned = [[i for i, _ in split.test_batches(4, Shard(r, 2))] for r in range(2)]
    assert owned == [[0, 2], [1, 3]]
    assert distributed.gather([(1, "b"), (0, "a")]) == ["a", "b"]  # alone: ordered by batch index


def test_an_image_folder_split_shards_the_batches_a_shuffled_dataloader_draws():
    from torch.utils.data import DataLoader, TensorDataset

    dataset = TensorDataset(torch.rand(14, 3, 2, 2), torch.arange(14))
    split = FolderSplit(dataset, torch.device("cpu"), num_workers=0)
    loader = DataLoader(dataset, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(3))
    whole = [y.tolist() for _, y in loader]
    assert [y.tolist() for _, y in split.batches(5, train=True, seed=3)] == whole
    parts = [[y for _, y in split.batches(5, train=True, seed=3, shard=Shard(r, 2))] for r in range(2)]
    assert [torch.cat(pair).tolist() for pair in zip(*parts, strict=True)] == whole
    assert [[i for i, _ in split.test_batches(5, Shard(r, 2))] for r in range(2)] == [[0, 2], [1]]
    assert [y.tolist() for _, (_, y) in split.test_batches(5, Shard(1, 2))] == [[5, 6, 7, 8, 9]]


def test_the_global_batchnorm_is_torchs_batchnorm_even_far_from_zero():
    """In a one-process group the global batch is the local one: outputs, input gradients and running
    statistics equal torch's BatchNorm2d, in float32 on activations whose mean (1e4) dwarfs their spread,
    where E[x^2] - E[x]^2 would cancel to noise."""
    import socket

    import torch.distributed as dist

    from gkp.mechanisms.engine.distributed import global_batchnorm

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        x = 1e4 + torch.randn(8, 3, 5, 5)
        reference, ours = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
        inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        expected = reference(inputs[0])
        with global_batchnorm(ours, enabled=True):
            got = ours(inputs[1])
        weights = torch.randn_like(expected)
        (expected * weights).sum().backward()
        (got * weights).sum().backward()
        exact = x.double() - x.double().mean((0, 2, 3)).view(1, 3, 1, 1)
        exact = exact / (exact.square().mean((0, 2, 3)) + 1e-5).sqrt().view(1, 3, 1, 1)
        # float32 holds 1e4 + x to about 1e-3: torch's layer and ours are both that close to float64
        assert (got.double() - exact).abs().max() < 2e-3 and (expected.double() - exact).abs().max() < 2e-3
        assert torch.allclose(inputs[1].grad, inputs[0].grad, atol=5e-3, rtol=5e-3)
        assert torch.allclose(ours.running_mean, reference.running_mean) and torch.allclose(
            ours.running_var, reference.running_var, rtol=1e-3
        )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def adversarial_step_in_a_group(rank: int, port: int, folder) -> None:
    """One process of two: PGD on its part of a 7-image batch (4 + 3) through the DDP-wrapped model, then
    the training loss's backward pass, weighted as the loop weights it; saves its gradients and how many
    all-reduces DDP made."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, x, y, attack, params = adversarial_setup()
        part = slice(0, 4) if rank == 0 else slice(4, 7)
        forward = distributed.data_parallel(model)
        reduces = []
        forward.register_comm_hook(None, lambda state, bucket: reduces.append(1) or allreduce_hook(None, bucket))
        with distributed.global_batchnorm(model, enabled=True):
            x_adv = attack.run(forward.eval(), x[part], y[part], params, None, PIXELS)
            loss = F.cross_entropy(forward.train()(x_adv), y[part])
            (loss * distributed.batch_weight(4 if rank == 0 else 3, loss)).backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        torch.save({"grads": grads, "reduces": len(reduces), "ddp": type(forward).__name__}, folder / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def adversarial_setup():
    from gkp.application.catalog import ATTACKS, build_model
    from gkp.foundation.schema import build

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10)
    x, y = torch.rand(7, 3, 16, 16), torch.randint(0, 10, (7,))
    attack = ATTACKS.get("pgd")
    return model, x, y, attack, build(attack.params, {"eps": 8 / 255, "steps": 3, "random_start": False}, "pgd")


def test_ddp_takes_one_all_reduce_per_step_with_an_attack_inside_and_gives_the_whole_batch_gradient(tmp_path):
    """Two gloo processes: PGD's input gradients through the DDP-wrapped model fire none of DDP's hooks
    (one all-reduce, the training loss's), both processes end with the same gradients, and they are one
    process's gradients of the whole batch (parts of 4 and 3 images weighted as the loop weights them)."""
    import torch.multiprocessing as mp
    import torch.nn.functional as F

    mp.spawn(adversarial_step_in_a_group, args=(free_port(), tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    assert [r["ddp"] for r in ranks] == ["DistributedDataParallel"] * 2 and [r["reduces"] for r in ranks] == [1, 1]
    model, x, y, attack, params = adversarial_setup()
    x_adv = attack.run(model.eval(), x, y, params, None, PIXELS)
    F.cross_entropy(model.train()(x_adv), y).backward()
    for name, parameter in model.named_parameters():
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
        assert torch.allclose(ranks[0]["grads"][name], parameter.grad, atol=1e-6, rtol=1e-4), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_global_batchnorm_is_torchs_syncbatchnorm_and_the_layer_comes_back_plain():
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        layer, reference = torch.nn.BatchNorm2d(3).cuda(), torch.nn.BatchNorm2d(3).cuda()
        x = torch.randn(8, 3, 5, 5, device="cuda")
        with distributed.global_batchnorm(layer, enabled=True):
            assert type(layer) is torch.nn.SyncBatchNorm
            got = layer(x)
        assert type(layer) is torch.nn.BatchNorm2d and not hasattr(layer, "process_group")
        assert torch.allclose(got, reference(x), atol=1e-5)
        assert torch.allclose(layer.running_mean, reference.running_mean, atol=1e-6)
    finally:
        dist.destroy_process_group()
