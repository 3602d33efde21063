#!/usr/bin/env bash
# Set everything up (first run only) and run the default test suite, on up to 4 cores (pytest-xdist).
# Extra arguments go to pytest, e.g. -m slow for the longer checks, -k resume, or -n 0 -s to run in
# this process and see what the tests print.
source "$(dirname "$0")/env.sh"
python -m pytest -n auto --maxprocesses 4 --dist worksteal "$@"
