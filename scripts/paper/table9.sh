#!/usr/bin/env bash
# The SR-GKP paper's Table 9: ResNet-32, CIFAR-10. One command runs every cell (the dense models trained once)
# and prints our numbers beside the paper's (gkp table --paper table9); rerun it to continue; --dry-run lists
# the cells, their status and the training left. See scripts/paper/run_table.sh.
exec bash "$(dirname "$0")/run_table.sh" table9 \
    configs/sweeps/table9.yaml -- "$@"
