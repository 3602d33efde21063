"""Filter-pruning baselines, one method per file, each a ``gkp.contracts.PruningMethod`` built by
``baselines.common.filter_method`` from its channel score."""

from baselines import chip, fpgm, group_norm, hrank, l1, l2, lamp, random_filters, slimming, taylor, thinet

BASELINES = {
    method.name: method
    for method in (
        l1.METHOD,
        l1.L1_A,
        l1.L1_B,
        l2.METHOD,
        fpgm.METHOD,
        slimming.METHOD,
        taylor.METHOD,
        hrank.METHOD,
        chip.METHOD,
        thinet.METHOD,
        lamp.METHOD,
        group_norm.METHOD,
        random_filters.METHOD,
    )
}
