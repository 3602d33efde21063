#!/usr/bin/env bash
# The SR-GKP paper's Table 10 (ResNet-56, CIFAR-10) by one command: every row's run, the dense models
# trained once (configs/sweeps/table10.yaml), then our numbers beside the paper's (gkp table). Rerun to
# continue; --dry-run lists the cells, their status and the training left.
source "$(dirname "$0")/../env.sh"
gkp sweep configs/sweeps/table10.yaml "$@"
case " $* " in *" --dry-run "*) exit 0 ;; esac
finished=()
for folder in runs/table10/*/; do
    [ -f "$folder/results.json" ] && finished+=("$folder")
done
[ ${#finished[@]} -eq 0 ] || gkp table "${finished[@]}" --paper table10
