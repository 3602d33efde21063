"""The pipeline: train -> prune -> finetune -> eval, and the run folder it works in."""
