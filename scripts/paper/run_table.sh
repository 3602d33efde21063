#!/usr/bin/env bash
# Shared by scripts/paper/tableN.sh: run one of the paper's tables, i.e. each of its sweeps (the dense
# models first, then every cell: prune, fine-tune with per-epoch evaluation under the paper's attacks,
# evaluate), then print our numbers beside the paper's (gkp table). Rerun to continue where it stopped;
# --dry-run only lists the cells, their status and the training left.
#   usage: run_table.sh TABLE SPEC... [-- GKP_SWEEP_ARGS...]
source "$(dirname "$0")/../env.sh"
table=$1
shift
specs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    specs+=("$1")
    shift
done
[ $# -gt 0 ] && shift
status=0
for spec in "${specs[@]}"; do
    gkp sweep "$spec" "$@" || status=$?
done
case " $* " in *" --dry-run "*) exit $status ;; esac
finished=()
for spec in "${specs[@]}"; do
    out=$(sed -n 's/^out: *//p' "$spec")
    for folder in "${out:-runs/$(basename "$spec" .yaml)}"/*/; do
        [ -f "$folder/results.json" ] && finished+=("$folder")
    done
done
[ ${#finished[@]} -eq 0 ] || gkp table "${finished[@]}" --paper "$table"
exit $status
