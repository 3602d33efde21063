"""The datasets a config can name (``data.name``), one file each: ``cifar`` (cifar10, cifar100), ``imagefolder``,
``npz``, ``digits`` and ``synthetic``; ``arrays`` and ``folders`` read and split them."""
