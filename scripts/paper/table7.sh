#!/usr/bin/env bash
# The SR-GKP paper's Table 7: TMI-GKP's and SR-GKP's pruning time on ResNet-32/56/110: Tables 9-11's runs. One
# command runs every cell (the dense models trained once) and prints our numbers beside the paper's (gkp table
# --paper table7); rerun it to continue; --dry-run lists the cells, their status and the training left. See
# scripts/paper/run_table.sh.
exec bash "$(dirname "$0")/run_table.sh" table7 \
    configs/sweeps/table7_resnet32.yaml configs/sweeps/table7_resnet56.yaml configs/sweeps/table7_resnet110.yaml -- "$@"
