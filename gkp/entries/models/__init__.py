"""The architectures: CIFAR ResNets (``cifar_resnet``), VGG-16 (``vgg``) and bottleneck ResNets
(``imagenet_resnet``). Each is a ``gkp.foundation.contracts.PrunableModel``; ``gkp.application.catalog.MODELS`` registers them
and ``gkp.application.catalog.build_model`` builds them."""
