"""The architectures: CIFAR ResNets (``cifar_resnet``), VGG-16 (``vgg``) and bottleneck ResNets
(``imagenet_resnet``). Each is a ``gkp.contracts.PrunableModel``; ``gkp.catalog.MODELS`` registers them
and ``gkp.catalog.build_model`` builds them."""
