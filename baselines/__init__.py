"""Filter-pruning baselines, one method per file, each exporting its ``METHOD`` (a
``gkp.contracts.PruningMethod``, most built by ``baselines.common.filter_method`` from a channel score),
registered in ``gkp.catalog.PRUNING_METHODS``."""
