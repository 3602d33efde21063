"""Layers the models and the pruned models are built from: input normalisation (with the datasets'
statistics), the grouped-kernel convolution a GKP-pruned conv becomes and the choice of its fastest
equivalent form, and the layers of structure-changing plans (removed blocks, factorised convs, adapters)."""
