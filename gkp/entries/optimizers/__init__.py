"""The optimizers a training section can name (``optimizer``): ``sgd`` (the default) and ``adamw``."""
