"""Training and evaluation loops, a phase's optimizers, and the device/precision settings they share."""
