"""The per-channel mean and std of the datasets the models are normalised with by default."""

# The CIFAR-10 statistics of the SR-GKP code (and many CIFAR repositories). Keeping them matters for
# reproducing the paper's attacks, whose eps was given in units of this normalisation.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
