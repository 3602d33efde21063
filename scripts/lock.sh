#!/usr/bin/env bash
# Refresh the locks on purpose: requirements.lock (runtime) and requirements-dev.lock (what the dev extra
# adds), the exact versions pip resolves for every Python that pyproject.toml accepts (scripts/lock.py).
# scripts/env.sh installs with them as constraints, so CI and the quick start test what was tested; users
# who `pip install .` get the ranges. Pass --keep FILE to keep this Python's tested pins. Then run
# `bash scripts/test.sh` on the new environment, and commit the locks with the test result.
set -euo pipefail
source "$(dirname "$0")/env.sh"
python scripts/lock.py "$@"
