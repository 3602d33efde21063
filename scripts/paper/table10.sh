#!/usr/bin/env bash
# The SR-GKP paper's Table 10 (ResNet-56, CIFAR-10) by one command: every row's run, the dense models
# trained once (configs/sweeps/table10.yaml). Rerun to continue; --dry-run lists the cells and their status.
source "$(dirname "$0")/../env.sh"
gkp sweep configs/sweeps/table10.yaml "$@"
