"""The project as a user installs it: a wheel, not this clone, run from another folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
    ``gkp fetch NAME --from FILE`` converts a shared checkpoint and ``python -m gkp run`` runs a config."""
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
    config = tiny_config(stages=["train", "prune", "eval"], train={"epochs": 1}, finetune={"epochs": 1}, attacks=[])
    (elsewhere / "tiny.yaml").write_text(yaml.safe_dump(config))
    run([python, "-m", "gkp", "run", "tiny.yaml", "--out", "run"], elsewhere, env)
    assert (elsewhere / "run" / "results.json").is_file()
