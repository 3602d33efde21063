"""Fold each BatchNorm of a model into the conv before it, for evaluation and attacks.

In eval mode a BatchNorm is a fixed per-channel affine map, so a conv whose output feeds nothing but a
BatchNorm computes, with that BatchNorm, the same function as one conv with scaled weights and a bias
(equal up to float rounding, about 1e-5 on the logits of a CIFAR ResNet). Attacks run the model forward
and backward many times per batch; without the BatchNorm layers each pass skips one read and one write
of every conv's output, forward and backward (about 1.2x faster forward + backward for ResNet-20 on CPU,
see ``benchmarks/bench_attacks.py``).

The pairs are found on the model's torch.fx graph: an ``nn.Conv2d`` or ``GroupedKernelConv2d`` called
once, whose only user is a ``BatchNorm2d`` with running statistics, itself called once. The evaluator
works on a folded copy; the model itself, its checkpoint and its training are untouched. A model that
torch.fx cannot trace is evaluated unfolded (logged).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from gkp.mechanisms.layers.grouped_conv import GroupedKernelConv2d

log = logging.getLogger(__name__)

CONVS = (nn.Conv2d, GroupedKernelConv2d)


class _ConvLeafTracer(fx.Tracer):
    """Keeps grouped-kernel convs whole, as ``nn.Conv2d`` is, so that they appear as one call."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, GroupedKernelConv2d) or super().is_leaf_module(module, qualified_name)


def conv_batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) of every BatchNorm that can be folded into the conv before it."""
    graph = _ConvLeafTracer().trace(model)
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], CONVS)
            and len(source.users) == 1
            and calls[source.target] == calls[node.target] == 1
            and modules[node.target].track_running_stats
        ):
            pairs.append((source.target, node.target))
    return pairs


@torch.no_grad()
def _fold_pair(conv: nn.Module, batchnorm: nn.BatchNorm2d) -> None:
    rows = slice(None)  # BatchNorm channel i scales weight row i ...
    if isinstance(conv, GroupedKernelConv2d) and conv.restore is not None:
        rows = torch.argsort(conv.restore)  # ... unless row q produces output channel argsort(restore)[q]
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight,
        conv.bias,
        batchnorm.running_mean[rows],
        batchnorm.running_var[rows],
        batchnorm.eps,
        None if batchnorm.weight is None else batchnorm.weight[rows],
        None if batchnorm.bias is None else batchnorm.bias[rows],
    )


def batchnorm_folded(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable BatchNorm folded into its conv (see the module
    docstring); the copy unfolded when torch.fx cannot trace the model."""
    folded = copy.deepcopy(model).eval()
    try:
        pairs = conv_batchnorm_pairs(folded)
    except Exception as error:  # any tracing failure: the unfolded copy is always a correct fallback
        log.info("BatchNorm folding skipped: torch.fx cannot trace %s (%s)", type(model).__name__, error)
        return folded
    for conv_name, batchnorm_name in pairs:
        _fold_pair(folded.get_submodule(conv_name), folded.get_submodule(batchnorm_name))
        folded.set_submodule(batchnorm_name, nn.Identity())
    log.debug("folded %d BatchNorm layers into their convs for evaluation", len(pairs))
    return folded.eval()  # the new Identity modules too
