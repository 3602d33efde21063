"""Grouped kernel pruning (GKP): kernel smoothness, filter grouping, grouped-kernel selection and the
grouped convolution that makes the pruned model physically smaller."""
