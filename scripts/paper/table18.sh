#!/usr/bin/env bash
# The SR-GKP paper's Table 18: ResNet-56, CIFAR-10, pruning rate 0.625. One command runs every cell (the dense
# models trained once) and prints our numbers beside the paper's (gkp table --paper table18); rerun it to
# continue; --dry-run lists the cells, their status and the training left. See scripts/paper/run_table.sh.
exec bash "$(dirname "$0")/run_table.sh" table18 \
    configs/sweeps/table18.yaml -- "$@"
