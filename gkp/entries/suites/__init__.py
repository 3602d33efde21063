"""Ready-made attack suites a config can name among its attacks, e.g. ``attacks: [{suite: paper-cifar}]``:
``paper`` (paper-cifar, paper-imagenet) and ``strong``."""
