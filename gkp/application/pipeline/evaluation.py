"""The eval stage: each model of ``eval.models`` evaluated clean and under every attack of the config,
with per-sample flags, the worst case over the attacks, parameters and MACs in both conventions. An
interrupted evaluation keeps the attacks it finished; a changed ``attacks`` or ``eval`` section runs
again beside the earlier results (``evaluations/<fingerprint>/``)."""

from __future__ import annotations

import logging
from typing import Any

from gkp.application.api import evaluate_split
from gkp.application.catalog import PRUNING_METHODS
from gkp.application.checkpoints.io import load_model
from gkp.application.pipeline.context import Context, require_model
from gkp.application.pipeline.stages import STAGE_NAMES
from gkp.application.reports.results import hparams_of
from gkp.foundation.files import read_json_mapping
from gkp.mechanisms.counting import count_nonzero_params, measure

log = logging.getLogger(__name__)


def _evaluate_model(ctx: Context, name: str) -> dict[str, Any]:
    path = require_model(ctx, name)
    model, _ = load_model(path, ctx.device)
    evaluation = ctx.fingerprint("eval")
    status = path.stat()
    identity = f"{path.resolve()} {status.st_size} {status.st_mtime_ns}"
    evaluated = evaluate_split(
        model,
        ctx.data.test,
        ctx.exp.attacks,
        batch_size=ctx.exp.data.eval_batch_size,
        seed=ctx.exp.seed,
        options=ctx.exp.eval,
        deterministic=ctx.exp.deterministic,
        description=f"eval {name}",
        finished=ctx.run.finished_attacks(evaluation, name, identity),
        on_finished=lambda label, outcome: ctx.run.save_finished_attack(evaluation, name, identity, label, outcome),
    )
    report, forms = evaluated.report, evaluated.forms
    cost, authors = measure(model, ctx.data.image_size), measure(model, ctx.data.image_size, "authors")
    ctx.run.write_per_sample(name, report.per_sample, evaluation)
    counts = {"params": cost.params, "nonzero_params": count_nonzero_params(model), "macs": cost.macs}
    counts["authors_macs"] = authors.macs
    method = PRUNING_METHODS.get(ctx.exp.prune.method) if ctx.exp.prune else None
    if method is not None and method.count is not None:
        counts["method_macs"] = method.count(model, ctx.data.image_size)
    return {"model": name, "checkpoint": str(path), **counts, **({"forms": forms} if forms else {}), **report.to_dict()}


def evaluate_models(ctx: Context) -> None:
    """The eval stage: every model of ``eval.models``; results.json reports the first, then the others."""
    entries = [_evaluate_model(ctx, name) for name in ctx.exp.eval.models]
    training = {
        stage: read_json_mapping(
            ctx.run.path / f"{stage}.json", f"delete it and state/{stage}.done to run {stage} again"
        )
        for stage in STAGE_NAMES
        if (ctx.run.path / f"{stage}.json").is_file()
    }
    prune = ctx.exp.prune
    results = {
        "name": ctx.exp.name,
        "method": prune.method if prune else None,
        "rate": prune.rate if prune and prune.target_macs is None else None,
        "data": ctx.exp.data.name,
        "device": str(ctx.device),
        **entries[0],
        "other_models": entries[1:],
        "training": training,
    }
    ctx.run.write_results(ctx.fingerprint("eval"), {**results, "evaluation": ctx.fingerprint("eval")})
    ctx.run.write_hparams(*hparams_of(results))
