"""HRank as its official code runs it: "HRank: Filter Pruning using High-Rank Feature Map" (Lin, Ji,
Wang, Zhang, Zhang, Tian, Shao; CVPR 2020), layer by layer with fine-tuning in between. The one-shot
variant is ``hrank``.

One phase per masked conv, in the order the model registers them (its forward order for every registered
architecture). At the start of the phase of conv k, its filters are
ranked by the mean matrix rank of their feature maps (``relu(bn(conv(x)))``, eval mode, on the fixed,
unaugmented calibration images of ``prune.calibration``; ranks as in ``hrank``), and the floor(N x rate)
lowest are zeroed together with their BatchNorm scale and shift, so the channel outputs exactly zero and
the physical model equals the masked one. The model is then fine-tuned for ``layer_epochs`` epochs with
a fresh SGD (lr x0.1 at each of ``layer_milestones``), re-zeroing every conv masked so far after each
optimizer step. Only the last phase, with every mask in place, can give best-epoch models.

Where this follows the paper rather than the code: the code ranks each block's second conv on the
block's output after the residual sum; here every conv is ranked on its own BatchNorm-ReLU output (what
the paper defines, and what masking the conv changes). The code also restarts each layer from the best
*test* checkpoint of the previous layer; here each layer continues from where the last one ended, so no
test image steers the pruning. Its default is 15 epochs per layer (30 in its README's help); the SR-GKP
paper's HRank rows fit about 6 (ResNet-56) or 3 (ResNet-110) within its 300 epochs. The default here
is the section's epochs divided by the masked convs, rounded down (300 epochs, 55 convs: 5 each).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from baselines.hrank import mean_ranks
from baselines.training_time import SCOPE_DOC, MaskState, Scope, phase_recipe, pruned_counts, training_time_method
from gkp.foundation.contracts import FilterGroup, Phase, PruningContext, Recipe
from gkp.foundation.errors import PruningError
from gkp.foundation.schema import at_least, option
from gkp.mechanisms.pruning.masks import conv_batchnorms, lowest, zero_filters


@dataclass(frozen=True)
class HRankIterativeParams:
    scope: Scope = option("all", doc=SCOPE_DOC)
    layer_epochs: int | None = option(
        None, check=at_least(1), doc="fine-tuning epochs after each layer; default the section's epochs / layers"
    )
    layer_milestones: tuple[int, ...] = option((5, 10), doc="epochs of each layer's fine-tune where lr drops x0.1")


class HRankHooks(MaskState):
    def __init__(self, counts: dict[str, int], batchnorms: dict[str, str], context: PruningContext):
        super().__init__()
        self.counts, self.batchnorms, self.context = counts, batchnorms, context
        self.order = list(counts)

    def start_phase(self, model: nn.Module, phase: int) -> None:
        name = self.order[phase]
        group = {name: FilterGroup(name, self.batchnorms[name], ())}
        ranks = mean_ranks(model, group, self.context.calibration_batches())[name]
        self.masks[name] = lowest(ranks, self.counts[name])
        zero_filters(model, self.masks, self.batchnorms)

    def after_step(self, model: nn.Module, lr: float, step: int) -> None:
        zero_filters(model, self.masks, self.batchnorms)


def build(model: nn.Module, rate: float, params: HRankIterativeParams, context: PruningContext, recipe: Recipe):
    counts = pruned_counts(model, params.scope, rate, context)
    batchnorms = conv_batchnorms(model)
    missing = [name for name in counts if name not in batchnorms]
    if missing:
        raise PruningError(f"hrank_iterative zeroes each conv's BatchNorm too, and {missing[0]} has none after it")
    epochs = params.layer_epochs if params.layer_epochs is not None else recipe.epochs // len(counts)
    schedule = "multistep" if params.layer_milestones else "constant"
    layer = replace(
        phase_recipe(recipe, epochs, "each layer's fine-tune"),
        schedule=schedule,
        milestones=tuple(params.layer_milestones),
        gamma=0.1,
    )
    phases = [Phase(name, layer, final=i + 1 == len(counts)) for i, name in enumerate(counts)]
    return phases, HRankHooks(counts, batchnorms, context)


ENTRY = training_time_method(
    "hrank_iterative",
    HRankIterativeParams,
    build,
    "HRank as published: layer by layer, lowest-rank filters zeroed, fine-tuned between (Lin et al., CVPR 2020)",
    "finetune",
    calibrated=True,
)
