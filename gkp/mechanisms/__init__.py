"""The machinery that knows no entry: layers, pruning plans and surgery, the training and evaluation
loops, data splits, MACs and parameter counts. Imports only the foundation."""
