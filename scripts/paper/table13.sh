#!/usr/bin/env bash
# The SR-GKP paper's Table 13: Tiny-ImageNet: ResNet-56 and ResNet-101. One command runs every cell (the dense
# models trained once) and prints our numbers beside the paper's (gkp table --paper table13); rerun it to
# continue; --dry-run lists the cells, their status and the training left. See scripts/paper/run_table.sh.
exec bash "$(dirname "$0")/run_table.sh" table13 \
    configs/sweeps/table13_resnet56.yaml configs/sweeps/table13_resnet101.yaml -- "$@"
