#!/usr/bin/env bash
# The SR-GKP paper's Table 5: ablation of grouping and kernel selection on ResNet-56, CIFAR-10. One command runs
# every cell (the dense models trained once) and prints our numbers beside the paper's (gkp table --paper
# table5); rerun it to continue; --dry-run lists the cells, their status and the training left. See
# scripts/paper/run_table.sh.
exec bash "$(dirname "$0")/run_table.sh" table5 \
    configs/sweeps/table5.yaml -- "$@"
