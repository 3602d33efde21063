"""The pipeline: train -> prune -> finetune -> eval. ``run.py`` calls the four stages in order (``training``,
``prune``, ``evaluation``); ``stages.py`` describes them as data; ``rundir.py`` is the run folder."""
