"""Robustness-aware structured pruning: grouped kernel pruning (SR-GKP, TMI-GKP) and filter-pruning baselines.

The folders are the layers, and the imports run one way (``tests/test_layering.py`` checks it):

- ``foundation``: errors, files, registries, the config schema and sections, seeds, the contracts of
  every entry, the threat model;
- ``mechanisms``: layers, pruning plans and surgery, counting, the training and evaluation loops, data
  splits;
- ``entries``: models, datasets, the grouped-kernel methods, losses, optimizers and attack suites, and the
  top-level ``baselines`` and ``attacks`` packages;
- ``application``: the registries (``catalog``), the config, the pipeline (``pipeline/run.py`` calls its
  four stages in order), checkpoints and the zoo, sweeps, reports and the ``gkp`` command.

See README.md for usage and docs/ for the reference. The Python API (``gkp.load``, ``gkp.prune``,
``gkp.evaluate``, ``gkp.trace``: ``gkp.application.api``, docs/api.md) is loaded on first use, so that
importing a layer of the package does not load the application above it.
"""

__version__ = "0.1.0"

API = ("load", "prune", "evaluate", "trace")


def __getattr__(name: str):
    if name in API:
        from gkp.application import api

        return getattr(api, name)
    raise AttributeError(f"module 'gkp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
