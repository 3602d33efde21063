#!/usr/bin/env bash
# Set everything up (first run only) and run the quick start: train a ResNet-20 on scikit-learn's
# digits, prune it one-shot, fine-tune it, evaluate it clean and under FGSM and PGD. Extra arguments go
# to `gkp run`, e.g. --restart or --set prune.rate=0.625.
source "$(dirname "$0")/env.sh"
gkp run configs/quickstart.yaml "$@"
