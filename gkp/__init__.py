"""Robustness-aware structured pruning: grouped kernel pruning (SR-GKP, TMI-GKP) and filter-pruning baselines.

The imports run one way (``tests/test_layering.py`` checks it):

- foundation: ``errors``, ``registry``, ``schema``, ``seeding``, ``contracts`` (what every model, method,
  attack and dataset must provide), ``threat`` (boxes and norms), ``settings`` (the config's sections);
- mechanisms: ``layers``, ``pruning`` (plans and surgery), ``counting``, ``engine`` (training and
  evaluation loops), ``data`` (splits);
- entries: ``models``, ``data.sources``, ``grouped`` (the GKP methods), and the ``baselines`` and
  ``attacks`` packages;
- ``catalog`` (every registry), then ``config``, ``stages``, ``runner`` and ``cli``.

See README.md for usage and docs/ for the reference.
"""

__version__ = "0.1.0"
