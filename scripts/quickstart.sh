#!/usr/bin/env bash
# Set everything up (first run only) and run the quick start: train a ResNet-20 on scikit-learn's
# digits, prune it one-shot with L1-norm filter pruning and, from the same trained model, with SR-GKP;
# fine-tune both, evaluate them clean and under FGSM and PGD, and print one table. Extra arguments go
# to both `gkp run` calls, e.g. --restart.
source "$(dirname "$0")/env.sh"
gkp run configs/quickstart.yaml "$@"
gkp run configs/quickstart_srgkp.yaml "$@"
gkp compare runs/quickstart runs/quickstart-srgkp
echo
echo "gkp lives in $GKP_VENV: run 'source $GKP_VENV/bin/activate' to use it in this shell."
