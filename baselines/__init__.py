"""Filter-pruning baselines, one method per file named as the method, each exporting its ``ENTRY`` (a
``gkp.foundation.contracts.PruningMethod``, most built by ``baselines.filter_method.filter_method`` from a
channel score), found by ``gkp.application.catalog.PRUNING_METHODS``. ``filter_method``, ``allocation``,
``activations`` and ``training_time`` hold what the methods share."""
