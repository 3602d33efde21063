"""The losses a training section minimises: ``cross_entropy`` (the default), the adversarial trainings
``pgd``, ``trades`` and ``fgsm_rs`` (``adversarial: {method: ...}``) and ``distill`` (``distill: {...}``),
one file each; ``crafting`` makes the adversarial examples."""
