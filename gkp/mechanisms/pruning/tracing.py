"""The pruning dependency tables of any model, read from a trace of its forward pass with ``torch.fx``.

``trace_tables(model, example_input)`` returns the ``DependencyTables`` a registered architecture writes
by hand (``tests/test_tracing.py`` checks that they are equal for every one):

- **filter groups**: a conv whose only reader is a BatchNorm of its width, from which every path reaches
  convs or linear layers (its consumers) through operations that act on each channel alone: activations,
  dropout, pooling, further BatchNorms and depthwise convs (both shrink with the group: its
  ``channelwise`` modules), and a flatten or spatial mean that leaves one value per channel for a linear
  layer. Any other reader (a residual sum, a concatenation, a product, the output, a layer kept whole)
  ties the channels, and the conv is left out, with the reason in ``DependencyTables.why``.
- **grouped-kernel targets**: every ungrouped conv (scope "all"), or every one with a kernel wider than
  1x1 (scope "3x3"), except a conv that reads the image (nothing but elementwise operations between it
  and the input) and a residual shortcut's projection (of the two operands of a sum, the convs only one
  of them depends on, on the side with fewer).

torch.fx, part of torch, is enough for these two tables and adds no dependency; Torch-Pruning's
``DependencyGraph`` would trace more (concatenations, attention) but prunes by changing the model in
place, while ours states the dependencies as tables the plans, methods and surgery already read.

A layer torch.fx cannot trace (Python control flow on tensor values) raises ``PruningError`` naming it;
listed in ``leave_unpruned``, it is kept whole instead: not traced into, never pruned, and tying the
channels of whatever feeds it.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from gkp.foundation.contracts import FilterGroup
from gkp.foundation.errors import PruningError
from gkp.mechanisms.pruning.dependencies import DependencyTables

ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)  # each output channel reads only the same input channel, with no weights of its own
ELEMENTWISE_FUNCTIONS = {
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    torch.sigmoid,
    torch.tanh,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}
ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_", "contiguous", "clone"}
RESHAPING_FUNCTIONS = {torch.flatten, torch.mean, torch.amax, torch.sum, torch.squeeze, torch.reshape}
RESHAPING_METHODS = {"flatten", "view", "reshape", "squeeze", "mean", "amax", "sum"}
SIZE_METHODS = {"size", "dim"}  # read a tensor's shape, not its values
SUMS = {operator.add, operator.iadd, torch.add}


def _is_conv(module: nn.Module) -> bool:
    return type(module) is nn.Conv2d and module.groups == 1


def _is_depthwise(module: nn.Module) -> bool:
    return type(module) is nn.Conv2d and module.groups == module.in_channels == module.out_channels > 1


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping the modules ``whole`` as single calls and remembering the innermost module
    whose forward failed."""

    def __init__(self, whole: set[str]):
        super().__init__()
        self.whole = whole
        self.failed_in: str | None = None

    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        return name in self.whole or super().is_leaf_module(module, name)

    def call_module(self, module, forward, args, kwargs):
        try:
            return super().call_module(module, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_of_module(module)
            raise


def _traced(model: nn.Module, example_input: torch.Tensor, whole: set[str]) -> fx.GraphModule:
    tracer = _Tracer(whole)
    try:
        graph = tracer.trace(model)
    except Exception as error:
        where = f"'{tracer.failed_in}'" if tracer.failed_in else f"{type(model).__name__}.forward"
        hint = f"; pass leave_unpruned=['{tracer.failed_in}'] to keep it whole" if tracer.failed_in else ""
        raise PruningError(f"torch.fx cannot trace {where} ({type(error).__name__}: {error}){hint}") from error
    module = fx.GraphModule(model, graph)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(module).propagate(example_input)
    finally:
        model.train(was_training)
    return module


class _Graph:
    """The traced graph with what the tables ask of it."""

    def __init__(self, module: fx.GraphModule, whole: set[str]):
        self.modules = dict(module.named_modules())
        self.nodes = list(module.graph.nodes)
        self.whole = whole
        self.calls = Counter(node.target for node in self.nodes if node.op == "call_module")

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules[node.target] if node.op == "call_module" else None

    def kept_whole(self, node: fx.Node) -> bool:
        name = node.target if node.op == "call_module" else None
        return name is not None and any(name == w or name.startswith(f"{w}.") for w in self.whole)

    def convs(self) -> list[fx.Node]:
        """Each ungrouped conv's call, in forward order (a conv called twice is left out)."""
        return [
            node
            for node in self.nodes
            if _is_conv(self.module(node)) and not self.kept_whole(node) and self.calls[node.target] == 1
        ]


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _features(node: fx.Node) -> int | None:
    """The feature count of a (batch, features) tensor, else None."""
    shape = _shape(node)
    return shape[1] if shape is not None and len(shape) == 2 else None


def _elementwise(graph: _Graph, node: fx.Node) -> bool:
    module = graph.module(node)
    if module is not None:
        return isinstance(module, ELEMENTWISE_MODULES) and not graph.kept_whole(node)
    if node.op == "call_function":
        return node.target in ELEMENTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in ELEMENTWISE_METHODS


def _one_value_per_channel(graph: _Graph, node: fx.Node, source: fx.Node) -> bool:
    """A flatten, view or spatial reduction whose output keeps the batch and channel axes of its input
    and nothing else (so channel c of the input is feature c of the output)."""
    reshaping = (
        (node.op == "call_function" and node.target in RESHAPING_FUNCTIONS)
        or (node.op == "call_method" and node.target in RESHAPING_METHODS)
        or type(graph.module(node)) is nn.Flatten
    )
    before, after = _shape(source), _shape(node)
    if not reshaping or before is None or after is None or len(before) < 2 or len(after) < 2:
        return False
    return after[:2] == before[:2] and math.prod(after[2:]) == 1


def _reader_description(graph: _Graph, node: fx.Node) -> str:
    if node.op == "output":
        return "the model's output"
    if node.op == "call_module":
        kept = " (kept whole)" if graph.kept_whole(node) else ""
        return f"'{node.target}' ({type(graph.module(node)).__name__}){kept}"
    return f"{getattr(node.target, '__name__', node.target)}() ({node.name}), which mixes channels or positions"


def _group(graph: _Graph, conv: fx.Node, shortcuts: set[str]) -> FilterGroup | str:
    """The conv's filter group, or why its channels are tied (``shortcuts``: the residual shortcuts'
    projections, whose inputs are a stage's width, left to the stage as the registered ResNets do)."""
    readers = list(conv.users)
    bn = readers[0] if len(readers) == 1 else None
    norm = graph.module(bn) if bn is not None else None
    width = graph.module(conv).out_channels
    if type(norm) is not nn.BatchNorm2d or norm.num_features != width or graph.kept_whole(bn):
        return "its output is not read by one BatchNorm2d alone"
    channelwise, consumers, todo, seen = [], [], [bn], set()
    while todo:
        current = todo.pop(0)
        for reader in current.users:
            if reader in seen:
                continue
            seen.add(reader)
            module = graph.module(reader)
            if reader.op == "call_method" and reader.target in SIZE_METHODS:
                continue
            if module is not None and graph.calls[reader.target] > 1 and not _elementwise(graph, reader):
                return f"{_reader_description(graph, reader)} is called more than once"
            if _is_conv(module) and not graph.kept_whole(reader):
                consumers.append(reader.target)
            elif isinstance(module, nn.Linear) and not graph.kept_whole(reader) and _features(current) == width:
                consumers.append(reader.target)
            elif (type(module) is nn.BatchNorm2d or _is_depthwise(module)) and not graph.kept_whole(reader):
                channelwise.append(reader.target)
                todo.append(reader)
            elif _elementwise(graph, reader) or _one_value_per_channel(graph, reader, current):
                todo.append(reader)
            else:
                return f"it reaches {_reader_description(graph, reader)}"
    if not consumers:
        return "no conv or linear layer reads it"
    projections = sorted(set(consumers) & shortcuts)
    if projections:
        return f"the residual shortcut's projection '{projections[0]}' reads it, so its width is the stage's"
    return FilterGroup(conv.target, bn.target, tuple(consumers), tuple(channelwise))


def _reads_image(graph: _Graph) -> set[str]:
    """The convs with nothing but elementwise operations (a Normalize, say) between them and the input."""
    raw: set[fx.Node] = set()
    reading = set()
    for node in graph.nodes:
        inputs = [arg for arg in node.all_input_nodes if arg in raw]
        if node.op == "placeholder":
            raw.add(node)
        elif inputs and isinstance(graph.module(node), (nn.Conv2d, nn.Linear)):
            reading.add(node.target)
        elif inputs:
            raw.add(node)
    return reading


def _shortcut_projections(graph: _Graph) -> set[str]:
    """Of each residual sum's two operands, the convs only one depends on, on the side with fewer."""
    ancestors: dict[fx.Node, frozenset[str]] = {}
    for node in graph.nodes:
        own = {node.target} if isinstance(graph.module(node), nn.Conv2d) else set()
        ancestors[node] = frozenset(own.union(*(ancestors[arg] for arg in node.all_input_nodes)))
    shortcuts: set[str] = set()
    for node in graph.nodes:
        is_sum = (node.op == "call_function" and node.target in SUMS) or (
            node.op == "call_method" and node.target in ("add", "add_")
        )
        operands = [arg for arg in node.args if isinstance(arg, fx.Node)]
        if not is_sum or len(operands) != 2:
            continue
        left, right = (ancestors[operand] for operand in operands)
        only_left, only_right = left - right, right - left
        if len(only_left) != len(only_right):
            shortcuts |= min(only_left, only_right, key=len)
    return shortcuts


def _targets(graph: _Graph, convs: list[fx.Node], shortcuts: set[str]) -> dict[str, tuple[str, ...]]:
    excluded = _reads_image(graph) | shortcuts
    every = [node.target for node in convs if node.target not in excluded]
    spatial = [name for name in every if math.prod(graph.modules[name].kernel_size) > 1]
    return {"all": tuple(every), "3x3": tuple(spatial)}


def trace_tables(model: nn.Module, example_input: torch.Tensor, leave_unpruned: Iterable[str] = ()) -> DependencyTables:
    """The filter groups and grouped-kernel targets of ``model``, traced on ``example_input`` (a batch of
    the inputs it takes: shapes decide where a flatten keeps one value per channel). The modules named in
    ``leave_unpruned`` (and everything in them) are kept whole and unpruned."""
    whole = set(leave_unpruned)
    names = dict(model.named_modules())
    unknown = sorted(whole - set(names))
    if unknown:
        raise PruningError(f"leave_unpruned names {', '.join(unknown)}, which the model does not have")
    graph = _Graph(_traced(model, example_input, whole), whole)
    convs, shortcuts = graph.convs(), _shortcut_projections(graph)
    groups, why = [], {}
    for conv in convs:
        group = _group(graph, conv, shortcuts)
        if isinstance(group, FilterGroup):
            groups.append(group)
        else:
            why[conv.target] = group
    return DependencyTables(tuple(groups), _targets(graph, convs, shortcuts), why)
