# Sourced by the other scripts: make sure a virtual environment with this project installed exists.
#
# The environment lives outside the clone (GKP_VENV, default ~/.cache/robust-gkp/venv) and is rebuilt
# only when pyproject.toml or a lock changes, so the multi-GB torch download happens once per machine.
# It installs the exact versions of requirements.lock and requirements-dev.lock for its Python (made by
# scripts/lock.sh), so a fresh clone tests what was tested; GKP_UNLOCKED=1 installs from pyproject.toml's
# ranges instead. GKP_TORCH_INDEX=URL adds a package index for another torch build, e.g.
# https://download.pytorch.org/whl/cpu (CPU-only, about 1 GB instead of 6) or .../whl/cu118 for older
# drivers (docs/development.md). The
# project itself is re-linked (pip install -e . --no-deps, a few seconds) whenever the environment runs
# another clone, so it always runs the clone it was called from.
set -euo pipefail

GKP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
GKP_VENV="${GKP_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/robust-gkp/venv}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 14))' || {
    echo "robust-gkp runs on Python 3.10 to 3.14 (the Pythons its locks pin); set PYTHON=/path/to/python3.x" >&2
    exit 1; }
# The interpreter a virtual environment was made from, not the environment's own: with this environment
# activated, python3 is its python, which the rebuild below deletes before making the new one.
PYTHON="$("$PYTHON" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"

constraints=(-c "$GKP_ROOT/requirements.lock" -c "$GKP_ROOT/requirements-dev.lock")
[ "${GKP_UNLOCKED:-0}" = 1 ] && constraints=()
[ -n "${GKP_TORCH_INDEX:-}" ] && constraints+=(--extra-index-url "$GKP_TORCH_INDEX")
stamp="$(cat "$GKP_ROOT/pyproject.toml" "$GKP_ROOT"/requirements*.lock | sha256sum | cut -d' ' -f1) ${GKP_UNLOCKED:-0} ${GKP_TORCH_INDEX:-}"
linked_clone='import gkp, pathlib; print(pathlib.Path(gkp.__file__).resolve().parents[1])'
if [ ! -x "$GKP_VENV/bin/python" ] || [ "$(cat "$GKP_VENV/.gkp-install-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "setting up $GKP_VENV (torch and friends: a few GB, about a minute) ..." >&2
    rm -rf "$GKP_VENV"
    "$PYTHON" -m venv "$GKP_VENV"
    "$GKP_VENV/bin/python" -m pip install --quiet --upgrade pip
    # Plain ranges (torch>=2.4) take the registry's regular torch build, with which torchvision imports;
    # the lock pins that build's exact version.
    "$GKP_VENV/bin/python" -m pip install --quiet ${constraints[@]+"${constraints[@]}"} -e "$GKP_ROOT[dev]"
    echo "$stamp" > "$GKP_VENV/.gkp-install-stamp"
elif [ "$("$GKP_VENV/bin/python" -I -c "$linked_clone" 2>/dev/null)" != "$GKP_ROOT" ]; then
    "$GKP_VENV/bin/python" -m pip install --quiet --no-deps -e "$GKP_ROOT"
fi
export PATH="$GKP_VENV/bin:$PATH"
cd "$GKP_ROOT"
