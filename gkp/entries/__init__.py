"""What a config names: models, datasets, the grouped-kernel pruning methods, losses, optimizers and
attack suites (the filter-pruning baselines and the attacks are the top-level ``baselines`` and
``attacks`` packages). Each entry module is found by its name (``gkp.foundation.registry``); entries import
the foundation and the mechanisms, never the application."""
