"""Data as the engine sees it: a ``DataBundle`` of splits on the device, batches and augmentation."""
