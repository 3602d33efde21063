#!/usr/bin/env bash
# The SR-GKP paper's Table 16: SR-GKP's CSB alpha on ResNet-110, CIFAR-10. One command runs every cell (the
# dense models trained once) and prints our numbers beside the paper's (gkp table --paper table16); rerun it to
# continue; --dry-run lists the cells, their status and the training left. See scripts/paper/run_table.sh.
exec bash "$(dirname "$0")/run_table.sh" table16 \
    configs/sweeps/table16.yaml -- "$@"
