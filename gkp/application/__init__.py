"""What reads the registries: the config, the pipeline and its run folder, checkpoints and the zoo,
sweeps, reports and the ``gkp`` command."""
