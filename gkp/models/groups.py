"""The filter-pruning dependency table every architecture provides.

A ``FilterGroup`` says which modules must shrink together when filters of one conv are removed: the
conv's output channels, the BatchNorm that follows it, and the input channels of each consumer (a conv,
or a linear layer fed by a 1x1 feature map). Pruning methods score the ``conv``; surgery applies the
same kept indices to all three. Convs whose outputs feed a residual sum are not listed: with option-A
(zero-padding) shortcuts their width is tied across a whole stage.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FilterGroup:
    conv: str
    bn: str
    consumers: tuple[str, ...]
