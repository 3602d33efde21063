#!/usr/bin/env bash
# Set everything up (first run only) and run the default test suite. Extra arguments go to pytest,
# e.g. -m slow for the longer checks, or -k resume.
source "$(dirname "$0")/env.sh"
python -m pytest "$@"
