#!/usr/bin/env bash
# The SR-GKP paper's Table 11: ResNet-110, CIFAR-10. One command runs every cell (the dense models trained once)
# and prints our numbers beside the paper's (gkp table --paper table11); rerun it to continue; --dry-run lists
# the cells, their status and the training left. See scripts/paper/run_table.sh.
exec bash "$(dirname "$0")/run_table.sh" table11 \
    configs/sweeps/table11.yaml -- "$@"
