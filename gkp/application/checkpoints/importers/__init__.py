"""The checkpoint formats the model zoo converts (``gkp.foundation.contracts.Importer``), one file per source:
``srgkp_authors`` (the SR-GKP authors' whole-module pickles), ``akamaster`` (akamaster/pytorch_resnet_cifar10's
CIFAR ResNets) and ``torchvision`` (its ImageNet ResNets); ``loading`` holds what they share. Each reads its
file with ``weights_only=True`` (or the authors' restricted unpickler): nothing in a downloaded file is
executed."""
