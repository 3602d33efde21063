#!/usr/bin/env bash
# Refresh requirements.lock on purpose: resolve pyproject.toml's ranges (with the dev extra) in a fresh
# virtual environment and record the exact versions pip chose. scripts/env.sh installs with the lock as a
# constraint, so CI and the quick start test what was tested; users who `pip install .` get the ranges.
# Run it, run `bash scripts/test.sh` on the new environment, and commit the lock with the test result.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
"$PYTHON" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --quiet --upgrade pip
"$scratch/venv/bin/python" -m pip install --quiet "$ROOT[dev]"
{
    echo "# Exact versions scripts/env.sh installs (as pip constraints). Made by scripts/lock.sh on"
    echo "# $(date -u +%Y-%m-%d), $("$scratch/venv/bin/python" -c 'import platform, sys; print(f"Python {platform.python_version()}, {sys.platform} {platform.machine()}")')."
    echo "# Packages another platform does not need (the CUDA wheels, say) are simply not installed there."
    "$scratch/venv/bin/python" -m pip freeze --exclude robust-gkp | grep -v '^#' | LC_ALL=C sort -f
} > "$ROOT/requirements.lock"
echo "wrote $ROOT/requirements.lock ($(grep -vc '^#' "$ROOT/requirements.lock") packages)"
