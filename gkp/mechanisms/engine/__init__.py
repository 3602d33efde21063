"""Training and evaluation loops, and the device/precision settings they share."""
