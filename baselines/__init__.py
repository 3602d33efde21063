"""Filter-pruning baselines, one method per file, each a ``gkp.pruning.method.PruningMethod``."""

from baselines import l1

BASELINES = {method.name: method for method in (l1.METHOD,)}
