"""Write the locks: the exact versions pip chooses for every Python that pyproject.toml accepts.

``requirements.lock`` pins the runtime dependencies, ``requirements-dev.lock`` what the dev extra adds
(tests, ruff, ART, ONNX, submitit), each resolved with pip's ``--dry-run --report`` for each accepted
Python (``--python-version``, binary wheels only, this machine's platform), the dev set under the runtime
pins so that the two agree. A package whose version differs between Pythons gets a line per version with
a ``python_version`` marker. ``scripts/env.sh`` installs with both as constraints.

    python scripts/lock.py                          # every accepted Python, resolved afresh
    python scripts/lock.py --keep requirements.lock # this Python keeps the pins its tests passed with
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from collections import defaultdict
from datetime import date
from pathlib import Path

import tomllib
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RUNTIME, DEV = ROOT / "requirements.lock", ROOT / "requirements-dev.lock"


def accepted_pythons() -> list[str]:
    """The minor versions of Python 3 that pyproject.toml's requires-python accepts."""
    spec = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    return [f"3.{minor}" for minor in range(8, 30) if f"3.{minor}" in spec]


def resolve(python: str, requirement: str, constraints: list[Path]) -> dict[str, str]:
    """{package: version} that pip installs for ``requirement`` on ``python`` (the project left out)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        command += ["--only-binary=:all:", "--python-version", python, "--report", str(report)]
        command += [item for path in constraints for item in ("-c", str(path))] + [requirement]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        installs = json.loads(report.read_text())["install"]
    pins = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    pins.pop("robust-gkp", None)
    return pins


def pins_file(pins: dict[str, str], folder: str) -> Path:
    path = Path(folder) / "pins.txt"
    path.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    return path


def lock_lines(per_python: dict[str, dict[str, str]]) -> list[str]:
    """One line per package, or per package and version with the Pythons that take it as a marker."""
    pythons = list(per_python)
    lines = []
    for name in sorted({name for pins in per_python.values() for name in pins}):
        versions: dict[str, list[str]] = defaultdict(list)
        for python in pythons:
            if name in per_python[python]:
                versions[per_python[python][name]].append(python)
        for version, takers in versions.items():
            marker = " or ".join(f'python_version == "{python}"' for python in takers)
            lines.append(f"{name}=={version}" if takers == pythons else f"{name}=={version} ; {marker}")
    return lines


def write(path: Path, what: str, lines: list[str], pythons: list[str]) -> None:
    header = [
        f"# {what}, as scripts/lock.py resolved them on {date.today()} for Python {', '.join(pythons)} on",
        f"# {sys.platform} {platform.machine()} (binary wheels). scripts/env.sh installs with it as constraints.",
        "# On CPU-only Linux too, torch's default wheel is the CUDA build (see docs/development.md).",
    ]
    path.write_text("\n".join(header + lines) + "\n")
    print(f"wrote {path} ({len(lines)} lines)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="constraints for this Python's resolution (its tested lock)")
    args = parser.parse_args()
    pythons = accepted_pythons()
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    runtime, dev = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for python in pythons:
            kept = [args.keep] if args.keep and python == here else []
            runtime[python] = resolve(python, str(ROOT), kept)
            full = resolve(python, f"{ROOT}[dev]", [*kept, pins_file(runtime[python], folder)])
            dev[python] = {name: version for name, version in full.items() if name not in runtime[python]}
            print(f"Python {python}: {len(runtime[python])} runtime packages, {len(dev[python])} more for dev")
    write(RUNTIME, "Exact versions of the runtime dependencies", lock_lines(runtime), pythons)
    write(DEV, "Exact versions of what the dev extra adds", lock_lines(dev), pythons)


if __name__ == "__main__":
    main()
