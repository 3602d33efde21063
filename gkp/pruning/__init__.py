"""Pruning plans (what to keep), surgery (building the smaller model) and the method registry."""
