"""The ``gkp`` command.

gkp run CONFIG [--set key=value ...] [--out DIR] [--restart]    all the config's stages
gkp STAGE CONFIG [...]                                          one stage of gkp.application.pipeline.stages.STAGES
gkp check CONFIG [--set ...] [--out DIR]                        check what run checks, print the resolved config
gkp list [methods|attacks|suites|models|datasets|losses|optimizers]  what a config can name
gkp import-checkpoint SRC.pt DST.ckpt                           convert an SR-GKP authors' release
gkp zoo                                                         the released checkpoints known by name
gkp fetch NAME [--from FILE]                                    download (or bring in), verify, convert, cache
gkp info CKPT|zoo:NAME [--input-size N] [--convention authors]  arch, plan, params and MACs
gkp export CKPT|zoo:NAME --format safetensors|onnx [--out PATH]  for use outside this project
gkp sweep SPEC [--dry-run]                                      a grid of runs sharing their dense models
gkp table RUN_DIR ... --paper table10 [--csv]                   ours beside the paper's table
gkp plot RUN_DIR ... [--out PREFIX]                             bars of the best per metric, accuracy vs rate
gkp compare RUN_DIR [RUN_DIR ...] [--csv|--json]                several runs' results in one table
gkp curves RUN_DIR [RUN_DIR ...] --attack LABEL [--out PREFIX]  security curves (CSV and PNG)
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gkp.application.pipeline.stages import STAGES
from gkp.foundation.errors import CheckpointError, GkpError, own_message
from gkp.foundation.files import FULL


def check_output(out: Path, source: Path, force: bool) -> None:
    """The file a command writes is never the one it reads, and replaces an existing file only when told."""
    if out.is_dir():
        raise CheckpointError(
            f"{out} is a folder; give the file to write, e.g. {out / source.with_suffix('.ckpt').name}"
        )
    if out.exists() and out.resolve() == source.resolve():
        raise CheckpointError(f"{out} is the file being read; write the output to another file")
    if out.exists() and not force:
        raise CheckpointError(f"{out} exists (a run's checkpoint, maybe); write to another file, or pass --force")


def positive_int(text: str) -> int:
    """An argument that must be a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML experiment file (docs/config.md lists every key)")
    _add_overrides(parser)
    parser.add_argument("--out", help="run folder (default: runs/<name>); a new, empty or earlier run folder")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="move an existing run folder aside (to <folder>.old-<time>) and start over",
    )


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (YAML value; list entries by index, suites' attacks included), e.g. "
        "--set prune.rate=0.625 or --set attacks.2.steps=20 (repeatable)",
    )


def _add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML experiment file")
    _add_overrides(parser)
    parser.add_argument("--out", help="the run folder a run would use (default: runs/<name>): its models are checked")


def _add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="the authors' .pt file (a whole-module pickle; nothing in it is run)")
    parser.add_argument("destination", help="the checkpoint to write (.ckpt)")
    parser.add_argument("--force", action="store_true", help="replace the destination if it exists")


def _add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", choices=tuple(LISTS), help="list one kind only (default: all)")


def _add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a name of gkp zoo, e.g. resnet56-akamaster")
    parser.add_argument(
        "--from",
        dest="source_file",
        metavar="FILE",
        help="the released file, downloaded elsewhere (machines without internet): verified and converted",
    )


def _add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file, or zoo:NAME")
    parser.add_argument("--input-size", type=positive_int, help="image side for MACs (default: the checkpoint's)")
    parser.add_argument(
        "--convention",
        choices=("macs", "authors"),
        default="macs",
        help="MACs of convs and linear layers, or the SR-GKP authors' count (non-zero weights, BatchNorm, pooling)",
    )


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file, or zoo:NAME")
    parser.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors", help="the file format")
    parser.add_argument("--out", help="output file (default: the checkpoint's name with .safetensors or .onnx)")
    parser.add_argument(
        "--input-size", type=positive_int, help="ONNX: the example's image side (default: the checkpoint's)"
    )
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")


def _add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="sweep spec YAML: base config, grid of overrides (see docs/running.md)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their status; run nothing")
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="run more than an hour of estimated training on a machine without a GPU",
    )
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm", "submitit-local"),
        default="local",
        help="local: one run per visible GPU at a time (a CPU: one); slurm: job arrays through submitit; "
        "submitit-local: the slurm path's code on this machine",
    )
    slurm = parser.add_argument_group("slurm (each job is one run)")
    slurm.add_argument("--partition", help="the SLURM partition")
    slurm.add_argument("--account", help="the SLURM account to charge")
    slurm.add_argument(
        "--time", type=positive_int, default=24 * 60, help="minutes per job (requeued and resumed past it)"
    )
    slurm.add_argument("--gpus-per-run", type=positive_int, default=1, help="GPUs of one run (above 1: data-parallel)")
    slurm.add_argument("--cpus-per-gpu", type=positive_int, default=8, help="CPU cores per GPU (data loading)")
    slurm.add_argument("--mem-gb", type=positive_int, help="memory per job")
    slurm.add_argument("--max-parallel", type=positive_int, default=64, help="jobs of an array running at once")
    slurm.add_argument(
        "--slurm-option", action="append", default=[], metavar="KEY=VALUE", help="any other sbatch option, repeatable"
    )


def _add_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        help="run folders, each named after a method of the table (as a sweep names them), in a table with "
        "parts inside the part's folder (runs/table13/resnet56/SR-GKP)",
    )
    parser.add_argument("--paper", required=True, help="the paper's table: table2 to table7, table9 to table19")
    parser.add_argument("--csv", action="store_true", help="CSV instead of Markdown")


def _add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders (each with a results.json)")
    parser.add_argument("--out", default="comparison", help="writes OUT_best.png and, with rates, OUT_sparsity.png")


def _add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders (each with a results.json)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="print the rows as CSV (accuracies as fractions)")
    output.add_argument("--json", action="store_true", help="print the rows as a JSON list of records")


def _add_curves_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        help="run folders evaluated with a minimum-norm attack (fmn, cw_l2); RUN_DIR:MODEL picks a model",
    )
    parser.add_argument("--attack", required=True, help="label of the minimum-norm attack in those runs")
    parser.add_argument("--model", default="final", help="the model of runs given without one (default: final)")
    parser.add_argument("--out", default="security_curves", help="writes OUT.csv and OUT.png")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("robust-gkp")
    except PackageNotFoundError:
        return "unknown (not installed)"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the problem and where to read about it."""

    def error(self, message: str):
        self.exit(2, f"gkp: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="gkp",
        description="Robustness-aware structured pruning experiments: train, prune, fine-tune and attack "
        "CNNs from one YAML config.",
        epilog="Run `gkp COMMAND --help` for a command's arguments and an example.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"gkp {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=f"example:\n  {command.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.arguments(sub)
    return parser


def _run(args: argparse.Namespace) -> None:
    from gkp.application.config import load_experiment
    from gkp.application.pipeline.run import run_experiment
    from gkp.application.reports.results import attacks_table, results_table

    exp = load_experiment(args.config, args.overrides)
    stages = None if args.command == "run" else (args.command,)
    results = run_experiment(exp, out=args.out, stages=stages, restart=args.restart)
    if results is not None:
        print(results_table(results))
        if results["attacks"]:
            print(attacks_table(results))


def _info(args: argparse.Namespace) -> None:
    from gkp.application.checkpoints.io import input_size_of, model_from_payload, read_checkpoint
    from gkp.application.checkpoints.zoo import local_checkpoint
    from gkp.mechanisms.counting import measure

    payload = read_checkpoint(local_checkpoint(args.checkpoint))
    model = model_from_payload(payload, args.checkpoint)
    size = input_size_of(payload, args.input_size)
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
    from gkp.application.checkpoints.export import export_onnx, write_safetensors
    from gkp.application.checkpoints.io import input_size_of, model_from_payload, read_checkpoint
    from gkp.application.checkpoints.zoo import local_checkpoint

    source = local_checkpoint(args.checkpoint)
    payload = read_checkpoint(source)
    out = Path(args.out or source.with_suffix(f".{args.format}").name)
    check_output(out, source, args.force)
    if args.format == "safetensors":
        write_safetensors(payload, out)
    else:
        export_onnx(model_from_payload(payload, str(source)), out, input_size_of(payload, args.input_size))
    print(f"wrote {out}")


def _described(results: dict, folder) -> dict:
    """Results with the method, rate and data of their run, read from its config.yaml where results.json
    (written before they were recorded there) lacks them."""
    import yaml

    config_file = folder / "config.yaml"
    if "method" in results or not config_file.is_file():
        return results
    try:
        config = yaml.safe_load(config_file.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return results  # the table then leaves these columns empty
    if not isinstance(config, dict):
        return results
    prune = config.get("prune") if isinstance(config.get("prune"), dict) else {}
    rate = prune.get("rate") if prune.get("target_macs") is None else None
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    return {**results, "method": prune.get("method"), "rate": rate, "data": data.get("name")}


def _read_results(folders: list[str]) -> list[dict]:
    """Each run folder's results.json, with its method, rate and data (see ``_described``)."""

    from gkp.application.reports.results import check_results
    from gkp.foundation.errors import RunFolderError
    from gkp.foundation.files import read_json_mapping

    runs = []
    for folder in folders:
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise RunFolderError(f"{path} does not exist: run the eval stage of that run first (gkp eval CONFIG)")
        results = read_json_mapping(path, "evaluate the run again: gkp eval CONFIG --out FOLDER")
        check_results(results, str(path))
        runs.append(_described(results, Path(folder)))
    return runs


def _compare(args: argparse.Namespace) -> None:
    from gkp.application.reports.results import results_records, results_table

    runs = _read_results(args.runs)
    folders = [Path(folder).resolve().name for folder in args.runs]
    names = folders if len(set(folders)) == len(folders) else list(args.runs)
    if args.json:
        print(json.dumps(results_records(*runs, names=names), indent=2))
    elif args.csv:
        records = results_records(*runs, names=names)
        writer = csv.DictWriter(sys.stdout, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    else:
        print(results_table(*runs, names=names))


def _zoo(args: argparse.Namespace) -> None:
    from gkp.application.checkpoints.zoo import zoo_table

    print(zoo_table())


def _fetch(args: argparse.Namespace) -> None:
    from gkp.application.checkpoints.zoo import fetch

    print(f"{fetch(args.name, args.source_file)} (model.checkpoint: zoo:{args.name})")


def _sweep(args: argparse.Namespace) -> None:
    from gkp.application.sweep import load_sweep, local_devices, results_of, run_sweep, status_table
    from gkp.foundation.errors import ConfigError, RunFolderError

    sweep = load_sweep(args.spec)
    if args.launcher == "local":
        print(f"runs on this machine: {local_devices()}")
    if not args.dry_run:
        failed = run_sweep(sweep, args.launcher, _slurm_options(args), args.allow_cpu)
        if failed:
            print(status_table(sweep))
            raise RunFolderError(
                f"sweep {sweep.name}: {len(failed)} run(s) failed: {', '.join(failed)}; rerun to retry"
            )
    print(status_table(sweep))
    finished = results_of(sweep)
    if finished and not args.dry_run:
        _compare(argparse.Namespace(runs=[str(folder) for folder in finished], csv=False, json=False))
    unrunnable = [cell.name for cell in sweep.cells if cell.problem]
    if unrunnable and not args.dry_run:
        raise ConfigError(
            f"sweep {sweep.name}: {len(unrunnable)} cell(s) cannot run ({', '.join(unrunnable[:6])}"
            f"{', ...' if len(unrunnable) > 6 else ''}): the table above says why"
        )


def _slurm_options(args: argparse.Namespace):
    from gkp.application.launchers import SlurmOptions
    from gkp.foundation.errors import ConfigError

    extra = dict(option.split("=", 1) for option in args.slurm_option if "=" in option)
    if len(extra) != len(args.slurm_option):
        raise ConfigError("--slurm-option: KEY=VALUE, e.g. --slurm-option qos=high")
    return SlurmOptions(
        partition=args.partition,
        time_minutes=args.time,
        gpus_per_run=args.gpus_per_run,
        cpus_per_gpu=args.cpus_per_gpu,
        mem_gb=args.mem_gb,
        account=args.account,
        max_parallel=args.max_parallel,
        extra=extra,
    )


def _plot(args: argparse.Namespace) -> None:
    from gkp.application.reports.curves import write_comparison_plots

    names = [Path(folder).resolve().name for folder in args.runs]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    print("wrote " + " and ".join(write_comparison_plots(_read_results(args.runs), names, args.out)))


def _table(args: argparse.Namespace) -> None:
    from gkp.application.reports.paper_tables import Run, table_csv, table_markdown

    runs = [Run(Path(folder), results) for folder, results in zip(args.runs, _read_results(args.runs), strict=True)]
    print(table_csv(args.paper, runs) if args.csv else table_markdown(args.paper, runs))


def _check(args: argparse.Namespace) -> None:
    from gkp.application.config import dump_experiment, load_experiment
    from gkp.application.pipeline.run import check_experiment

    exp = load_experiment(args.config, args.overrides)
    check_experiment(exp, args.out)
    print(dump_experiment(exp), end="")


def _import(args: argparse.Namespace) -> None:
    from gkp.application.checkpoints.authors import import_authors_resnet

    check_output(Path(args.destination), Path(args.source), args.force)
    import_authors_resnet(args.source, args.destination)
    print(f"wrote {args.destination}")


def _curves(args: argparse.Namespace) -> None:
    from gkp.application.reports.curves import load_curves, write_curves

    runs = load_curves(args.runs, args.attack, args.model)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_curves(runs, f"{args.out}.csv", f"{args.out}.png", args.attack)
    print(f"wrote {args.out}.csv and {args.out}.png")


def _entries(kind: str) -> list[tuple[str, str]]:
    """(name, one line) of every entry of a registry ``gkp list`` shows."""
    from gkp.application import catalog

    registry = getattr(catalog, LISTS[kind][0])
    if kind == "methods":
        return [(n, f"{m.summary} [{'during training' if m.training else 'one-shot'}]") for n, m in registry.items()]
    if kind == "models":
        return [(n, m.description) for n, m in registry.items()]
    return [(n, entry.summary) for n, entry in registry.items()]


LISTS = {  # kind: (its registry in gkp.application.catalog, what a config names with it)
    "methods": ("PRUNING_METHODS", "pruning methods (prune.method)"),
    "attacks": ("ATTACKS", "attacks (attacks[].name)"),
    "suites": ("SUITES", "attack suites (attacks[].suite)"),
    "models": ("MODELS", "models (model.arch)"),
    "datasets": ("DATASETS", "datasets (data.name)"),
    "losses": ("LOSSES", "losses (train.adversarial.method, finetune.distill; default cross_entropy)"),
    "optimizers": ("OPTIMIZERS", "optimizers (train.optimizer, finetune.optimizer)"),
}


def _list(args: argparse.Namespace) -> None:
    for kind in [args.kind] if args.kind else LISTS:
        entries = _entries(kind)
        width = max(len(name) for name, _ in entries)
        print(f"{LISTS[kind][1]}:")
        print("\n".join(f"  {name.ljust(width)}  {line}" for name, line in entries))


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    example: str
    arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], None]


COMMANDS = (
    Command(
        "run",
        "run the config's stages",
        "gkp run configs/quickstart.yaml --set prune.rate=0.625",
        _add_experiment_arguments,
        _run,
    ),
    *(
        Command(
            stage.name,
            f"run only the {stage.name} stage: {stage.summary}",
            f"gkp {stage.name} configs/quickstart.yaml",
            _add_experiment_arguments,
            _run,
        )
        for stage in STAGES
    ),
    Command(
        "check",
        "check a config as gkp run does before any compute (data, inputs, the method's rate) and print it resolved",
        "gkp check configs/quickstart.yaml --set prune.method=fpgm",
        _add_check_arguments,
        _check,
    ),
    Command(
        "list",
        "the methods, attacks, suites, models, datasets, losses and optimizers a config can name",
        "gkp list methods",
        _add_list_arguments,
        _list,
    ),
    Command(
        "import-checkpoint",
        "convert the SR-GKP authors' released ResNet pickle",
        "gkp import-checkpoint adv_robust_gkp_resnet20_cifar10.pt resnet20.ckpt",
        _add_import_arguments,
        _import,
    ),
    Command(
        "zoo", "list the released checkpoints model.checkpoint: zoo:NAME can name", "gkp zoo", lambda parser: None, _zoo
    ),
    Command(
        "fetch",
        "download, verify, convert and cache a released checkpoint",
        "gkp fetch resnet56-akamaster --from resnet56-4bfd9763.th",
        _add_fetch_arguments,
        _fetch,
    ),
    Command(
        "info",
        "describe a checkpoint: arch, plan, params and MACs",
        "gkp info runs/quickstart/finetuned.ckpt --convention authors",
        _add_info_arguments,
        _info,
    ),
    Command(
        "export",
        "write a checkpoint as safetensors or ONNX",
        "gkp export runs/quickstart/finetuned.ckpt --format onnx",
        _add_export_arguments,
        _export,
    ),
    Command(
        "sweep",
        "run a grid of configs that share their dense models; rerun to continue",
        "gkp sweep configs/sweeps/quickstart.yaml --dry-run",
        _add_sweep_arguments,
        _sweep,
    ),
    Command(
        "table",
        "our results in the layout of one of the paper's tables, beside its numbers",
        "gkp table runs/table10/* --paper table10",
        _add_table_arguments,
        _table,
    ),
    Command(
        "plot",
        "figures of several runs: best accuracy per metric (bars), and accuracy against the pruning rate",
        "gkp plot runs/sweep/* --out figures",
        _add_plot_arguments,
        _plot,
    ),
    Command(
        "compare",
        "print the results of several runs in one table",
        "gkp compare runs/quickstart runs/quickstart-srgkp",
        _add_compare_arguments,
        _compare,
    ),
    Command(
        "curves",
        "robust accuracy against eps from a minimum-norm attack (CSV and PNG)",
        "gkp curves runs/fmn_run --attack fmn --out curves",
        _add_curves_arguments,
        _curves,
    ),
)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that it ends as an interruption does: a KeyboardInterrupt,
    which code catching Exception lets through (DataLoader workers, which inherit the handler, stop quietly
    on it too)."""


def _terminated(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, --version (0) or a wrong argument (2, its line already printed)
        return int(exit_.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    command = next(command for command in COMMANDS if command.name == args.command)
    in_main_thread = threading.current_thread() is threading.main_thread()  # where signals can be handled
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        return _handled(command, args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _handled(command: Command, args: argparse.Namespace) -> int:
    """Run the command; its errors, interruptions, a full disk and a closed pipe end in one line (or none)
    and an exit code."""
    try:
        command.handler(args)
    except GkpError as error:
        print(f"gkp: error: {own_message(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output left (gkp zoo | head): stop quietly, as cat would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        return 128 + signal.SIGPIPE
    except OSError as error:
        if error.errno not in FULL:
            raise
        print(
            f"gkp: error: {error.strerror} writing {error.filename or 'a file'}; free some space and run the same "
            "command again (a run resumes from its last finished epoch)",
            file=sys.stderr,
        )
        return 2
    except Terminated:
        print("gkp: terminated; run the same command again to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("gkp: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
