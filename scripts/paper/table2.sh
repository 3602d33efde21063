#!/usr/bin/env bash
# The SR-GKP paper's Table 2: ResNet-56, CIFAR-10: Table 10 without DHP, GAL and L1Norm-A; the same runs. One
# command runs every cell (the dense models trained once) and prints our numbers beside the paper's (gkp table
# --paper table2); rerun it to continue; --dry-run lists the cells, their status and the training left. See
# scripts/paper/run_table.sh.
exec bash "$(dirname "$0")/run_table.sh" table2 \
    configs/sweeps/table2.yaml -- "$@"
