"""Checkpoint files, released checkpoints (the zoo), their importers and exports."""
