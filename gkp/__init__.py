"""Robustness-aware structured pruning: grouped kernel pruning (SR-GKP, TMI-GKP) and filter-pruning baselines.

The package is organised by unit: ``config`` (YAML into frozen dataclasses), ``models``, ``data``,
``pruning`` (plans and surgery), ``engine`` (training and evaluation loops), ``checkpoint`` and
``runner`` (the stages train -> prune -> finetune -> eval). See README.md for usage.
"""

__version__ = "0.1.0"
