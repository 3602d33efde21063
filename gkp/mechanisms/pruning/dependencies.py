"""A model's pruning dependency tables, wherever they come from: every mechanism and method reads them
through the functions here.

A registered architecture declares its tables as methods (``gkp.foundation.contracts.PrunableModel``):
its filter groups, the convs grouped kernel pruning prunes and its residual blocks. Any other model gets
the first two by tracing (``gkp.mechanisms.pruning.tracing.trace_tables``), kept on the model as
``gkp_tables`` (so copies of it carry them); ``gkp.prune`` traces a model that declares none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from gkp.foundation.contracts import FilterGroup, ResidualBlock
from gkp.foundation.errors import PruningError

SCOPES = ("3x3", "all")  # grouped kernel pruning's choices of convs: spatial ones, or every conv of a block


@dataclass(frozen=True)
class DependencyTables:
    """The tables of a model that declares none, from a trace: its ``filter_groups``, the grouped-kernel
    ``targets`` of each scope, and, for each conv left out of the filter groups, ``why`` (the first
    operation that ties its channels: a residual sum, a layer the trace keeps whole, the output)."""

    filter_groups: tuple[FilterGroup, ...]
    targets: Mapping[str, tuple[str, ...]]
    why: Mapping[str, str] = field(default_factory=dict)


TABLES_ATTRIBUTE = "gkp_tables"


def traced_tables(model: nn.Module) -> DependencyTables | None:
    return getattr(model, TABLES_ATTRIBUTE, None)


def declares_tables(model: nn.Module) -> bool:
    """Whether the model itself declares its tables (a registered architecture does)."""
    return hasattr(model, "filter_pruning_groups") and hasattr(model, "grouped_kernel_targets")


def attach_tables(model: nn.Module, tables: DependencyTables) -> None:
    setattr(model, TABLES_ATTRIBUTE, tables)


def _missing(model: nn.Module, table: str) -> PruningError:
    return PruningError(
        f"{type(model).__name__} has no {table}: declare it (docs/extending.md, 'A model') or let "
        "gkp.prune(model, ..., example_input=x) trace it (docs/api.md)"
    )


def filter_pruning_groups(model: nn.Module) -> list[FilterGroup]:
    """The ``FilterGroup`` of every conv filter pruning may shrink, in forward order."""
    if hasattr(model, "filter_pruning_groups"):
        return list(model.filter_pruning_groups())
    tables = traced_tables(model)
    if tables is None:
        raise _missing(model, "filter-pruning dependency table (filter_pruning_groups())")
    return list(tables.filter_groups)


def filter_groups(model: nn.Module) -> dict[str, FilterGroup]:
    """``filter_pruning_groups`` by conv name."""
    return {group.conv: group for group in filter_pruning_groups(model)}


def grouped_kernel_targets(model: nn.Module, scope: str = "3x3") -> list[str]:
    """The ungrouped convs grouped kernel pruning prunes: ``scope`` "3x3" the spatial ones, "all" every
    conv of a block; never a conv reading the image nor a residual shortcut's projection."""
    if scope not in SCOPES:
        raise PruningError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if hasattr(model, "grouped_kernel_targets"):
        return list(model.grouped_kernel_targets(scope))
    tables = traced_tables(model)
    if tables is None:
        raise _missing(model, "list of grouped-kernel targets (grouped_kernel_targets())")
    return list(tables.targets[scope])


def residual_blocks(model: nn.Module, required: bool = True) -> dict[str, ResidualBlock]:
    """The blocks a plan may remove, by name. A model that lists none (a traced one) raises
    ``PruningError``, or gives none where they are not ``required``."""
    if not hasattr(model, "residual_blocks") and not required:
        return {}
    if not hasattr(model, "residual_blocks"):
        raise PruningError(
            f"{type(model).__name__} lists no residual blocks (a residual_blocks() method), so none can be removed"
        )
    return {block.name: block for block in model.residual_blocks()}
