"""Filter-pruning baselines, one method per file, each exporting its ``METHOD`` (a
``gkp.foundation.contracts.PruningMethod``, most built by ``baselines.filter_method.filter_method`` from a channel score),
registered in ``gkp.application.catalog.PRUNING_METHODS``."""
