"""The architectures a config can name (``model.arch``): CIFAR ResNets (``resnet``: resnet8 ... resnet110),
VGG-16 (``vgg16``) and bottleneck ResNets (``resnet50``, ``resnet101``). Each is a
``gkp.foundation.contracts.PrunableModel``; ``gkp.application.catalog.build_model`` builds them."""
