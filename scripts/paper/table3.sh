#!/usr/bin/env bash
# The SR-GKP paper's Table 3: ResNet-50, ImageNet-1k: from a self-trained and from torchvision's dense model.
# One command runs every cell (the dense models trained once) and prints our numbers beside the paper's (gkp
# table --paper table3); rerun it to continue; --dry-run lists the cells, their status and the training left.
# See scripts/paper/run_table.sh.
exec bash "$(dirname "$0")/run_table.sh" table3 \
    configs/sweeps/table3_self-trained.yaml configs/sweeps/table3_torchvision.yaml -- "$@"
