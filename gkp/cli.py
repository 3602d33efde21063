"""The ``gkp`` command.

gkp run CONFIG [--set key=value ...] [--out DIR] [--restart]    all the config's stages
gkp STAGE CONFIG [...]                                          one stage of gkp.pipeline.STAGES
gkp check CONFIG [--set ...]                                    validate and print the resolved config
gkp import-checkpoint SRC.pt DST.ckpt                           convert an SR-GKP authors' release
gkp zoo                                                         the released checkpoints known by name
gkp fetch NAME [--from FILE]                                    download (or bring in), verify, convert, cache
gkp info CKPT|zoo:NAME [--input-size N] [--convention authors]  arch, plan, params and MACs
gkp export CKPT|zoo:NAME --format safetensors|onnx [--out PATH]  for use outside this project
gkp compare RUN_DIR [RUN_DIR ...]                               several runs' results in one table
gkp curves RUN_DIR [RUN_DIR ...] --attack LABEL [--out PREFIX]  security curves (CSV and PNG)
"""

from __future__ import annotations

import argparse
import logging
import sys

from gkp.errors import GkpError
from gkp.pipeline import STAGES


def _add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML experiment file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set prune.rate=0.625 (repeatable)",
    )
    parser.add_argument("--out", help="run folder (default: runs/<name>)")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="move an existing run folder aside (to <folder>.old-<time>) and start over",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gkp", description="Robustness-aware structured pruning experiments")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_experiment_arguments(commands.add_parser("run", help="run the config's stages"))
    for stage in STAGES:
        _add_experiment_arguments(
            commands.add_parser(stage.name, help=f"run only the {stage.name} stage: {stage.summary}")
        )
    check = commands.add_parser("check", help="validate a config and print it resolved")
    check.add_argument("config")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    importer = commands.add_parser("import-checkpoint", help="convert the SR-GKP authors' released ResNet pickle")
    importer.add_argument("source")
    importer.add_argument("destination")
    commands.add_parser("zoo", help="list the released checkpoints model.checkpoint: zoo:NAME can name")
    fetch = commands.add_parser("fetch", help="download, verify, convert and cache a released checkpoint")
    fetch.add_argument("name", help="a name of gkp zoo, e.g. resnet56-akamaster")
    fetch.add_argument(
        "--from",
        dest="source_file",
        metavar="FILE",
        help="the released file, downloaded elsewhere (machines without internet): verified and converted",
    )
    info = commands.add_parser("info", help="describe a checkpoint")
    info.add_argument("checkpoint", help="a checkpoint file, or zoo:NAME")
    info.add_argument("--input-size", type=int, help="image side for MACs (default: the checkpoint's)")
    info.add_argument(
        "--convention",
        choices=("macs", "authors"),
        default="macs",
        help="MACs of convs and linear layers, or the SR-GKP authors' count (+ BatchNorm, pooling)",
    )
    export = commands.add_parser("export", help="write a checkpoint as safetensors or ONNX")
    export.add_argument("checkpoint", help="a checkpoint file, or zoo:NAME")
    export.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors")
    export.add_argument("--out", help="output file (default: the checkpoint's name with .safetensors or .onnx)")
    export.add_argument("--input-size", type=int, help="ONNX: the example's image side (default: the checkpoint's)")
    compare = commands.add_parser("compare", help="print the results of several runs in one table")
    compare.add_argument("runs", nargs="+", help="run folders (each with a results.json)")
    curves = commands.add_parser("curves", help="robust accuracy against eps from a minimum-norm attack")
    curves.add_argument(
        "runs",
        nargs="+",
        help="run folders evaluated with a minimum-norm attack (fmn, cw_l2); RUN_DIR:MODEL picks a model",
    )
    curves.add_argument("--attack", required=True, help="label of the minimum-norm attack in those runs")
    curves.add_argument("--model", default="final", help="the model of runs given without one (default: final)")
    curves.add_argument("--out", default="security_curves", help="writes OUT.csv and OUT.png")
    return parser


def _run(args: argparse.Namespace) -> None:
    from gkp.config import load_experiment
    from gkp.report import attacks_table, results_table
    from gkp.runner import run_experiment

    exp = load_experiment(args.config, args.overrides)
    stages = None if args.command == "run" else (args.command,)
    results = run_experiment(exp, out=args.out, stages=stages, restart=args.restart)
    if results is not None:
        print(results_table(results))
        if results["attacks"]:
            print(attacks_table(results))


def _info(args: argparse.Namespace) -> None:
    from gkp.catalog import MODELS
    from gkp.checkpoint import model_from_payload, read_checkpoint
    from gkp.counting import measure
    from gkp.zoo import local_checkpoint

    payload = read_checkpoint(local_checkpoint(args.checkpoint))
    model = model_from_payload(payload, args.checkpoint)
    size = args.input_size or payload["metadata"].get("input_size") or MODELS.get(payload["arch"]).input_size
    cost = measure(model, size, convention=args.convention)
    plan = payload["plan"]
    plan_text = "none (dense)"
    if plan is not None:
        plan_text = f"{plan['method']} at rate {plan['rate']}, {len(plan['layers'])} layers"
    print(f"checkpoint: {args.checkpoint}")
    print(f"arch:       {payload['arch']} {payload['arch_args']}")
    print(f"plan:       {plan_text}")
    print(f"params:     {cost.params:,} ({cost.params / 1e6:.3f}M)")
    print(f"MACs:       {cost.macs:,} ({cost.macs / 1e6:.3f}M) at {size}x{size}, {args.convention} convention")
    if payload["metadata"]:
        print(f"metadata:   {payload['metadata']}")


def _export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from gkp.catalog import MODELS
    from gkp.checkpoint import model_from_payload, read_checkpoint
    from gkp.export import export_onnx, write_safetensors
    from gkp.zoo import local_checkpoint

    source = local_checkpoint(args.checkpoint)
    payload = read_checkpoint(source)
    out = Path(args.out or source.with_suffix(f".{args.format}").name)
    if args.format == "safetensors":
        write_safetensors(payload, out)
    else:
        size = args.input_size or payload["metadata"].get("input_size") or MODELS.get(payload["arch"]).input_size
        export_onnx(model_from_payload(payload, str(source)), out, size)
    print(f"wrote {out}")


def _compare(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from gkp.errors import RunFolderError
    from gkp.report import results_table

    runs = []
    for folder in args.runs:
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise RunFolderError(f"{path} does not exist: run the eval stage of that run first (gkp eval CONFIG)")
        runs.append(json.loads(path.read_text()))
    print(results_table(*runs))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if args.command in ("run", *(stage.name for stage in STAGES)):
            _run(args)
        elif args.command == "check":
            from gkp.config import dump_experiment, load_experiment

            print(dump_experiment(load_experiment(args.config, args.overrides)), end="")
        elif args.command == "import-checkpoint":
            from gkp.authors import import_authors_resnet

            import_authors_resnet(args.source, args.destination)
            print(f"wrote {args.destination}")
        elif args.command == "zoo":
            from gkp.zoo import zoo_table

            print(zoo_table())
        elif args.command == "fetch":
            from gkp.zoo import fetch

            print(f"{fetch(args.name, args.source_file)} (model.checkpoint: zoo:{args.name})")
        elif args.command == "info":
            _info(args)
        elif args.command == "export":
            _export(args)
        elif args.command == "compare":
            _compare(args)
        elif args.command == "curves":
            from gkp.curves import load_curves, write_curves

            runs = load_curves(args.runs, args.attack, args.model)
            write_curves(runs, f"{args.out}.csv", f"{args.out}.png", args.attack)
            print(f"wrote {args.out}.csv and {args.out}.png")
    except GkpError as error:
        print(f"gkp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gkp: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
