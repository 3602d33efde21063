"""The losses a training section minimises: cross-entropy, adversarial training, distillation."""
