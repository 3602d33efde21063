"""The model zoo: the manifest, each importer against a forward pass written from its source's own
definition, downloads from a local server (progress, verification, cache, refusal, offline message), and
zoo names in configs, evaluated and pruned."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from gkp.application.catalog import IMPORTERS, MODELS
from gkp.application.checkpoints.importers.akamaster import stream_orders
from gkp.application.checkpoints.io import load_model
from gkp.application.checkpoints.zoo import ZooError, fetch, load_manifest
from gkp.application.cli import main
from gkp.application.config import build_experiment
from gkp.application.pipeline.run import run_experiment
from gkp.foundation.errors import CheckpointError, ConfigError
from gkp.foundation.files import sha256_of

from conftest import write_config

MANIFEST = load_manifest()
AKAMASTER_FILES = {"resnet20-akamaster": "resnet20-12fca82f.th", "resnet56-akamaster": "resnet56-4bfd9763.th"}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GKP_ZOO_CACHE", str(tmp_path / "zoo"))
    return tmp_path / "zoo"


# ------------------------------------------------------------------------------------------- the manifest


@pytest.mark.parametrize("name", list(MANIFEST))
def test_every_entry_names_a_registered_importer_and_arch_and_one_way_to_verify(name):
    entry = MANIFEST[name]
    assert entry.format in IMPORTERS.names() and entry.arch in MODELS.names()
    assert entry.url.startswith("https://") and entry.licence and entry.source
    assert len(entry.mean) == len(entry.std) == 3 and entry.num_classes >= 2
    digest = entry.sha256 or entry.sha256_prefix
    assert all(c in "0123456789abcdef" for c in digest) and len(digest) in (8, 64)
    if entry.sha256_prefix:  # the source publishes the prefix in the file name, as torch.hub expects
        assert f"-{entry.sha256_prefix}." in entry.file_name


def test_the_shared_files_are_the_released_ones(shared):
    by_digest = {sha256_of(path): path.name for path in (shared / "checkpoints").glob("*.*t*")}
    verified = {name for name, entry in MANIFEST.items() if any(entry.check_digest(d) for d in by_digest)}
    assert verified == {"resnet20-srgkp-authors", "resnet20-akamaster", "resnet56-akamaster"}


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
def test_the_torchvision_entries_are_torchvisions_own_weights(arch):
    weights = getattr(torchvision.models, f"ResNet{arch[6:]}_Weights").IMAGENET1K_V1
    entry = MANIFEST[f"{arch}-torchvision"]
    assert entry.url == weights.url and entry.num_classes == len(weights.meta["categories"])
    assert entry.reported["imagenet_val_top1"] == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
def test_the_torchvision_importer_loads_torchvisions_state_dict_and_matches_its_logits(tmp_path, arch):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)().eval()
    torch.save(reference.state_dict(), tmp_path / f"{arch}.pth")
    entry = MANIFEST[f"{arch}-torchvision"]
    model = IMPORTERS.get("torchvision").convert(tmp_path / f"{arch}.pth", entry)
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(entry.mean), torch.tensor(entry.std)
    with torch.no_grad():
        expected = reference((x - mean[:, None, None]) / std[:, None, None])
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", IMPORTERS.names())
def test_every_importer_refuses_a_file_that_is_not_its_format(name, tmp_path):
    importer = IMPORTERS.get(name)
    assert importer.summary
    torch.save({"something": torch.zeros(3)}, tmp_path / "foreign.pt")
    entry = next((entry for entry in MANIFEST.values() if entry.format == name), MANIFEST["resnet20-akamaster"])
    with pytest.raises(CheckpointError):
        importer.convert(tmp_path / "foreign.pt", entry)


# ------------------------------------------------------------------------------------------- akamaster


def akamaster_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Their ResNet's forward pass, written from their resnet.py: ImageNet-normalised input, blocks with
    conv-bn-relu-conv-bn, an option-A shortcut that subsamples and pads planes/4 zero channels on *both*
    sides, the global average pool and their ``linear`` classifier; BatchNorm in eval mode."""
    state = {k.removeprefix("module."): v.float() for k, v in state.items()}
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])

    def bn(out, name):
        return F.batch_norm(
            out,
            state[f"{name}.running_mean"],
            state[f"{name}.running_var"],
            state[f"{name}.weight"],
            state[f"{name}.bias"],
        )

    out = (x - mean[:, None, None]) / std[:, None, None]
    out = F.relu(bn(F.conv2d(out, state["conv1.weight"], padding=1), "bn1"))
    for stage in (1, 2, 3):
        blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith(f"layer{stage}.")})
        for block in blocks:
            prefix = f"layer{stage}.{block}"
            weight = state[f"{prefix}.conv1.weight"]
            stride = 2 if weight.shape[1] != weight.shape[0] else 1
            inner = F.relu(bn(F.conv2d(out, weight, stride=stride, padding=1), f"{prefix}.bn1"))
            inner = bn(F.conv2d(inner, state[f"{prefix}.conv2.weight"], padding=1), f"{prefix}.bn2")
            planes = weight.shape[0]
            shortcut = out if stride == 1 else F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
            out = F.relu(inner + shortcut)
    out = F.avg_pool2d(out, out.shape[3]).flatten(1)
    return F.linear(out, state["linear.weight"], state["linear.bias"])


def test_their_residual_stream_is_ours_permuted():
    orders = stream_orders([16, 32, 64])
    assert orders[1][:16].tolist() == list(range(8, 24)) and sorted(orders[1].tolist()) == list(range(32))
    assert orders[2][:16].tolist() == [16 + 8 + i for i in range(16)]  # stage-1 channels, shifted twice
    with pytest.raises(CheckpointError, match="not akamaster's option-A shortcut"):
        stream_orders([16, 48])


@pytest.mark.parametrize("name", list(AKAMASTER_FILES))
def test_the_akamaster_importer_computes_their_forward_pass(shared, name):
    path = shared / "checkpoints" / AKAMASTER_FILES[name]
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    model = IMPORTERS.get("akamaster").convert(path, MANIFEST[name])
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), akamaster_forward(state, x), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def prefix(shared):
    with np.load(shared / "data" / "cifar10_train_prefix.npz") as arrays:
        images = torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).float() / 255
        return images, torch.from_numpy(arrays["labels"])


@pytest.mark.parametrize(
    ("name", "file", "correct"),
    [
        ("resnet20-akamaster", "resnet20-12fca82f.th", 4648),
        pytest.param("resnet56-akamaster", "resnet56-4bfd9763.th", 4659, marks=pytest.mark.slow),
        ("resnet20-srgkp-authors", "adv_robust_gkp_resnet20_cifar10.pt", 4647),
    ],
)
def test_fetched_from_a_file_each_classifies_the_shared_images_as_measured_independently(
    shared, cache, prefix, name, file, correct
):
    model, metadata = load_model(fetch(name, shared / "checkpoints" / file))
    assert metadata["zoo"] == name and metadata["sha256"] == sha256_of(shared / "checkpoints" / file)
    images, labels = prefix
    with torch.no_grad():
        right = sum(
            int((model(images[i : i + 500]).argmax(1) == labels[i : i + 500]).sum()) for i in range(0, 4660, 500)
        )
    assert right == correct


# ------------------------------------------------------------------------------------------- downloads


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (the http.server API)
        CountingHandler.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(shared):
    """An HTTP server on 127.0.0.1 serving ../shared/checkpoints."""
    CountingHandler.requests = []
    handler = functools.partial(CountingHandler, directory=str(shared / "checkpoints"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def served(name: str, url: str, **changes) -> dict:
    return {**MANIFEST, name: replace(MANIFEST[name], url=url, **changes)}


def test_a_fetch_downloads_with_progress_verifies_converts_and_then_reuses_the_cache(server, cache, capsys):
    manifest = served("resnet20-akamaster", f"{server}/resnet20-12fca82f.th")
    path = fetch("resnet20-akamaster", manifest=manifest)
    assert CountingHandler.requests == ["/resnet20-12fca82f.th"] and path.parent == cache
    assert "100%" in capsys.readouterr().err  # torch.hub's progress bar
    model, metadata = load_model(path)
    assert metadata["url"].startswith(server) and model.gkp_spec.arch == "resnet20"
    assert fetch("resnet20-akamaster", manifest=manifest) == path and len(CountingHandler.requests) == 1


def test_a_download_with_the_wrong_hash_is_refused_and_deleted(server, cache):
    manifest = served("resnet20-akamaster", f"{server}/resnet56-4bfd9763.th")
    with pytest.raises(ZooError, match="resnet56-4bfd9763.th has sha256 4bfd9763.*it is not the released file"):
        fetch("resnet20-akamaster", manifest=manifest)
    assert list(cache.iterdir()) == []  # the download was deleted, nothing was converted


def test_a_brought_in_file_with_the_wrong_hash_is_refused_and_left_alone(shared, cache, tmp_path):
    mine = tmp_path / "mine.th"
    mine.write_bytes((shared / "checkpoints" / "resnet56-4bfd9763.th").read_bytes())
    with pytest.raises(ZooError, match="mine.th has sha256"):
        fetch("resnet20-akamaster", mine)
    assert mine.is_file() and list(cache.iterdir()) == []
    with pytest.raises(ZooError, match="--from .*nowhere.th: no such file"):
        fetch("resnet20-akamaster", tmp_path / "nowhere.th")
    cache.rmdir()
    cache.write_text("a file where the cache folder belongs")
    with pytest.raises(ZooError, match="zoo's cache .* is a file, not a folder; set GKP_ZOO_CACHE to a folder"):
        fetch("resnet20-akamaster", mine)


def test_the_cache_is_named_by_the_published_hash_so_a_changed_entry_is_fetched_anew(shared, cache):
    path = fetch("resnet20-akamaster", shared / "checkpoints" / "resnet20-12fca82f.th")
    assert path.name == "resnet20-akamaster-12fca82f.ckpt"
    assert fetch("resnet20-akamaster") == path  # cached: no network needed
    changed = served("resnet20-akamaster", "http://127.0.0.1:9/resnet20-new.th", sha256="ab" * 32)
    with pytest.raises(ZooError, match="could not reach"):  # not the stale cached file
        fetch("resnet20-akamaster", manifest=changed)


def test_a_hash_prefix_is_checked_like_torch_hub_does(server, cache):
    ok = served("resnet56-akamaster", f"{server}/resnet56-4bfd9763.th", sha256=None, sha256_prefix="4bfd9763")
    assert fetch("resnet56-akamaster", manifest=ok).is_file()
    wrong = served("resnet20-akamaster", f"{server}/resnet20-12fca82f.th", sha256=None, sha256_prefix="4bfd9763")
    with pytest.raises(ZooError, match="4bfd9763... .the first hex digits.: it is not the released file"):
        fetch("resnet20-akamaster", manifest=wrong)


def test_an_unreachable_url_says_how_to_bring_the_file_in_by_hand(cache):
    manifest = served("resnet56-akamaster", "http://127.0.0.1:9/resnet56-4bfd9763.th")
    with pytest.raises(ZooError) as raised:
        fetch("resnet56-akamaster", manifest=manifest)
    message = str(raised.value)
    assert (
        "http://127.0.0.1:9/resnet56-4bfd9763.th" in message and "gkp fetch resnet56-akamaster --from FILE" in message
    )
    assert MANIFEST["resnet56-akamaster"].sha256 in message


def test_fetch_and_zoo_on_the_command_line(shared, cache, capsys):
    assert main(["fetch", "resnet20-akamaster", "--from", str(shared / "checkpoints" / "resnet20-12fca82f.th")]) == 0
    assert "zoo:resnet20-akamaster" in capsys.readouterr().out
    assert main(["zoo"]) == 0
    listing = capsys.readouterr().out.splitlines()
    table = listing[: listing.index("")]
    assert len(table) == len(MANIFEST) + 1 and max(map(len, listing)) <= 100  # a terminal's width
    assert [line.split()[0] for line in table if line.endswith(" yes")] == ["resnet20-akamaster"]
    assert listing[len(table) + 1] == "sources:" and "henryzhongsc/adv_robust_gkp" in " ".join(listing)
    assert main(["info", "zoo:resnet20-akamaster"]) == 0 and "269,722" in capsys.readouterr().out
    assert main(["fetch", "resnet20-akamaster", "--from", str(shared / "checkpoints" / "resnet56-4bfd9763.th")]) == 2


# ------------------------------------------------------------------------------------------- configs


def test_an_unknown_zoo_name_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="model.checkpoint: zoo: no checkpoint named 'resnet57'; known: resnet20"):
        build_experiment({"stages": ["eval"], "model": {"checkpoint": "zoo:resnet57"}})


@pytest.fixture
def prefix_npz(shared, tmp_path) -> dict[str, str]:
    with np.load(shared / "data" / "cifar10_train_prefix.npz") as arrays:
        np.savez(tmp_path / "train.npz", images=arrays["images"][:512], labels=arrays["labels"][:512])
        np.savez(tmp_path / "test.npz", images=arrays["images"][4460:], labels=arrays["labels"][4460:])
    return {"name": "npz", "train_path": str(tmp_path / "train.npz"), "test_path": str(tmp_path / "test.npz")}


def test_gkp_eval_of_a_zoo_name_in_a_config(shared, cache, prefix_npz, tmp_path):
    fetch("resnet56-akamaster", shared / "checkpoints" / "resnet56-4bfd9763.th")
    config = {
        "stages": ["eval"],
        "device": "cpu",
        "model": {"checkpoint": "zoo:resnet56-akamaster"},
        "data": prefix_npz,
    }
    assert main(["eval", str(write_config(tmp_path / "zoo.yaml", config)), "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["benign"]["total"] == 200 and results["benign"]["correct"] >= 199
    assert results["checkpoint"] == str(cache / "resnet56-akamaster-4bfd9763.ckpt")


def test_srgkp_prunes_the_imported_akamaster_resnet56_end_to_end(shared, cache, prefix_npz, tmp_path, pinned_forms):
    fetch("resnet56-akamaster", shared / "checkpoints" / "resnet56-4bfd9763.th")
    config = {
        "device": "cpu",
        "stages": ["prune", "eval"],
        "model": {"checkpoint": "zoo:resnet56-akamaster"},
        "data": prefix_npz,
        "prune": {"method": "srgkp", "rate": 0.4375},
        "eval": {"models": ["final", "dense"]},
    }
    results = run_experiment(build_experiment(config), out=tmp_path / "run")
    final, dense = results, results["other_models"][0]
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["method"] == "srgkp" and len(plan["layers"]) == 54 and final["macs"] < 0.6 * dense["macs"]
    assert dense["benign"]["correct"] >= 199 and final["benign"]["accuracy"] > 0.25  # one-shot, not fine-tuned


# ------------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def pruned_models(tmp_path_factory) -> dict[str, Path]:
    """A dense, a filter-pruned and a grouped-kernel ResNet-8 checkpoint with random BatchNorm statistics."""
    from gkp.application.catalog import PRUNING_METHODS, build_model
    from gkp.application.checkpoints.io import save_checkpoint
    from gkp.mechanisms.pruning.plan import Plan
    from gkp.mechanisms.pruning.surgery import apply

    from test_pruning import randomise_batchnorm

    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    dense = randomise_batchnorm(build_model("resnet8")).eval()
    paths = {"dense": folder / "dense.ckpt"}
    save_checkpoint(paths["dense"], dense, {"input_size": 16})
    for method in ("l1", "srgkp"):
        entry = PRUNING_METHODS.get(method)
        selection = entry.select(dense, 0.5, entry.params())
        paths[method] = folder / f"{method}.ckpt"
        save_checkpoint(paths[method], apply(dense, Plan(method, 0.5, selection.layers)), {"input_size": 16})
    return paths


@pytest.mark.parametrize("kind", ["dense", "l1", "srgkp"])
def test_a_safetensors_export_loads_back_to_the_same_model(pruned_models, kind, tmp_path, capsys):
    out = tmp_path / f"{kind}.safetensors"
    assert main(["export", str(pruned_models[kind]), "--out", str(out)]) == 0
    header_length = int.from_bytes(out.read_bytes()[:8], "little")
    header = json.loads(out.read_bytes()[8 : 8 + header_length])
    assert json.loads(header["__metadata__"]["gkp"])["arch"] == "resnet8"
    original, _ = load_model(pruned_models[kind])
    exported, _ = load_model(out)
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(original(x), exported(x))


@pytest.mark.parametrize("kind", ["dense", "l1", "srgkp"])
def test_an_onnx_export_runs_in_onnx_runtime_like_pytorch(pruned_models, kind, tmp_path, recwarn):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (optional)")
    runtime = pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (optional)")
    out = tmp_path / f"{kind}.onnx"
    assert main(["export", str(pruned_models[kind]), "--format", "onnx", "--out", str(out)]) == 0
    assert not [w for w in recwarn if "Constant folding" in str(w.message)]  # the shortcuts' slices: noise
    model, _ = load_model(pruned_models[kind])
    x = torch.rand(5, 3, 16, 16)
    session = runtime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-5, rtol=1e-5)


def test_safetensors_round_trips_every_dtype_and_refuses_a_damaged_file(tmp_path):
    from gkp.application.checkpoints.export import read_safetensors, write_safetensors

    state = {
        "f32": torch.rand(2, 3),
        "f16": torch.rand(4).half(),
        "bf16": torch.rand(3).bfloat16(),
        "i64": torch.tensor(7),  # 0-dim, as BatchNorm's counter
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "strided": torch.rand(4, 4).t(),
    }
    payload = {"arch": "resnet8", "arch_args": {}, "plan": None, "metadata": {"epoch": 3}, "state_dict": state}
    path = tmp_path / "all.safetensors"
    write_safetensors(payload, path)
    back = read_safetensors(path)
    assert back["metadata"] == {"epoch": 3} and back["arch"] == "resnet8"
    for name, tensor in state.items():
        assert back["state_dict"][name].dtype == tensor.dtype and torch.equal(back["state_dict"][name], tensor)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(CheckpointError, match="is not a safetensors file written by gkp export"):
        read_safetensors(path)


def test_a_cached_checkpoint_that_changed_since_its_conversion_is_refused(shared, cache, tmp_path):
    """The cache is trusted while its file is what was converted: a file put in its place is refused; a cache
    made before digests were recorded is checked against its own record of the release and then recorded."""
    from gkp.application.checkpoints.zoo import recorded_digest

    path = fetch("resnet20-akamaster", shared / "checkpoints" / "resnet20-12fca82f.th")
    genuine = path.read_bytes()
    other = fetch("resnet56-akamaster", shared / "checkpoints" / "resnet56-4bfd9763.th")
    path.write_bytes(other.read_bytes())
    with pytest.raises(ZooError, match="changed since it was converted.*gkp fetch resnet20-akamaster"):
        fetch("resnet20-akamaster")
    recorded_digest(path).unlink()
    with pytest.raises(ZooError, match="is not resnet20-akamaster's converted checkpoint"):
        fetch("resnet20-akamaster")
    path.write_bytes(genuine)
    assert fetch("resnet20-akamaster") == path and recorded_digest(path).read_text().strip() == sha256_of(path)


def test_a_safetensors_file_whose_tensors_share_bytes_is_refused(tmp_path):
    """Two tensors reading one byte range (a crafted file) would load silently: the format forbids it, and
    the safetensors package refuses it."""
    from gkp.application.checkpoints.export import read_safetensors

    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "__metadata__": {"gkp": json.dumps({"arch": "resnet8", "arch_args": {}, "plan": None, "metadata": {}})},
    }
    text = json.dumps(header).encode()
    path = tmp_path / "shared.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + torch.ones(2).numpy().tobytes())
    with pytest.raises(CheckpointError, match="is not a safetensors file written by gkp export"):
        read_safetensors(path)
    from safetensors.torch import save

    path.write_bytes(save({"a": torch.ones(2)}, metadata={"gkp": "[1, 2]"}))  # a valid file, not ours
    with pytest.raises(CheckpointError, match="its gkp metadata is list, not a mapping"):
        read_safetensors(path)
