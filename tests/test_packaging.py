"""The project as a user installs it: a wheel, not this clone, run from another folder; and its locks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, f"{command}: {completed.stderr[-2000:]}"
    return completed


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_lists_fetches_and_runs_from_another_folder(tmp_path, shared):
    """``pip wheel`` of this clone, installed (without its dependencies, which this environment has) into
    a folder of its own: from yet another folder, ``gkp zoo`` reads the manifest shipped in the wheel,
    ``gkp fetch NAME --from FILE`` converts a shared checkpoint, the Python API loads and prunes it, and
    ``python -m gkp run`` runs a config."""
    python = sys.executable
    run(
        [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
        tmp_path,
        dict(os.environ),
    )
    (wheel,) = (tmp_path / "dist").glob("robust_gkp-*.whl")
    site = tmp_path / "site"
    run([python, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)], tmp_path, dict(os.environ))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "GKP_ZOO_CACHE": str(tmp_path / "zoo")}

    located = run([python, "-c", "import gkp; print(gkp.__file__)"], elsewhere, env).stdout.strip()
    assert Path(located).is_relative_to(site)
    listing = run([str(site / "bin" / "gkp"), "zoo"], elsewhere, env).stdout
    assert "resnet20-akamaster" in listing
    source = shared / "checkpoints" / "resnet20-12fca82f.th"
    run([python, "-m", "gkp", "fetch", "resnet20-akamaster", "--from", str(source)], elsewhere, env)
    assert list((tmp_path / "zoo").rglob("*.ckpt"))
    api = "import gkp; m = gkp.load('zoo:resnet20-akamaster'); print(len(gkp.prune(m, 'l1', rate=0.5)[1].layers))"
    assert run([python, "-c", api], elsewhere, env).stdout.split() == ["9"]  # the Python API, from the wheel
    config = tiny_config(stages=["train", "prune", "eval"], train={"epochs": 1}, finetune={"epochs": 1}, attacks=[])
    (elsewhere / "tiny.yaml").write_text(yaml.safe_dump(config))
    run([python, "-m", "gkp", "run", "tiny.yaml", "--out", "run"], elsewhere, env)
    assert (elsewhere / "run" / "results.json").is_file()


def accepted_pythons() -> list[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from lock import accepted_pythons as accepted

    return accepted()


def pins(lock: Path, python: str) -> dict[str, str]:
    """{package: version} the lock pins for ``python``; each package at most once."""
    pinned: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"python_version": python}):
                assert requirement.name not in pinned, f"{lock.name} pins {requirement.name} twice for {python}"
                pinned[requirement.name] = str(requirement.specifier).removeprefix("==")
    return pinned


def test_the_locks_pin_every_python_that_pyproject_accepts_and_the_runtime_apart_from_the_dev_tools():
    assert accepted_pythons() == ["3.10", "3.11", "3.12", "3.13", "3.14"]
    for python in accepted_pythons():
        runtime, dev = pins(ROOT / "requirements.lock", python), pins(ROOT / "requirements-dev.lock", python)
        assert {"torch", "torchvision", "numpy", "scipy", "numba", "pyyaml"} <= set(runtime), python
        assert {"pytest", "ruff", "onnxruntime"} <= set(dev) and not {"pytest", "ruff"} & set(runtime), python
        assert not set(runtime) & set(dev), python
    assert Version(pins(ROOT / "requirements.lock", "3.10")["numpy"]) < Version("2.3")  # 2.3 on need 3.11


@pytest.mark.slow
@pytest.mark.parametrize("python", accepted_pythons())
def test_the_locks_resolve_for_each_accepted_python(python, tmp_path):
    """pip resolves the project with its dev extra under the locks' pins for that Python (binary wheels of
    this platform) and chooses exactly the pinned versions. The pins go in with their markers evaluated
    here: pip evaluates a constraint's markers for the Python it runs on, not for ``--python-version``."""
    import json

    locked = {**pins(ROOT / "requirements.lock", python), **pins(ROOT / "requirements-dev.lock", python)}
    constraints = tmp_path / "pins.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in locked.items()))
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
    command += ["--only-binary=:all:", "--python-version", python, "--report", str(report)]
    command += ["-c", str(constraints), f"{ROOT}[dev]"]
    run(command, tmp_path, dict(os.environ))
    installs = json.loads(report.read_text())["install"]
    chosen = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    assert {name: version for name, version in locked.items() if chosen.get(canonicalize_name(name)) != version} == {}
