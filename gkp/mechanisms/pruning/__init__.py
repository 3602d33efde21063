"""Pruning plans (what each pruned layer keeps) and surgery (building the smaller model a plan describes)."""
