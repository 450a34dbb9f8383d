"""The ``ceag-cooper`` command line: train-dense, prune, report, demo.

Every experiment option is a field of :class:`ceag_cooper.experiments.ExperimentConfig`; the flags
are generated from it (``--dense-epochs`` sets ``dense_epochs``), so the CLI, the pipeline and
the results JSON always agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from ceag_cooper import __version__
from ceag_cooper.checkpoint import CheckpointError
from ceag_cooper.experiments import METHODS, ExperimentConfig, load_task, run_experiment, train_dense
from ceag_cooper.experiments.results import (
    SYNTHETIC_DEMO,
    UTKFACE_DEMO,
    config_file_values,
    read_results,
    results_table,
    write_report,
)

__all__ = ["build_parser", "main"]

_FINETUNE_FIELDS = {
    "sparsity",
    "prune_epochs",
    "finetune_epochs",
    "lr",
    "method",
    "tolerance",
    "buffer_size",
    "dual_lr",
    "lr_milestones",
    "lr_gamma",
    "margin",
    "dual_optimizer",
    "nupi_kp",
    "nupi_ema",
    "constraint_estimate",
    "final_iterate",
    "el_form",
    "resolution_z",
    "fit_buffers_to_groups",
    "iterate_min_count",
    "pruning",
    "dual_step_scale",
    "distill_weight",
    "distill_temperature",
}
_HELP = {
    "task": "utkface, fairface, adult, omniglot, cifar100 or synthetic",
    "target": "target attribute (utkface: race, gender, age_bucket)",
    "protected": "protected attribute(s) defining the groups",
    "group_mode": "intersectional (product of values) or marginal",
    "model": "small_cnn, resnet20, resnet56, mlp, (with torchvision) mobilenet_v2, resnet18, or package.module:factory",
    "method": f"fine-tuning method: {', '.join(METHODS)}",
    "tolerance": "epsilon, as a fraction (0.01 = one accuracy point)",
    "buffer_size": "replay buffer length k per group",
    "subset": "use this many training samples (quick runs)",
    "data_dir": "folder holding the data sets (default $CEAG_DATA_DIR or ../shared/data)",
    "cache_dir": "where decoded images are cached (default ~/.cache/ceag_cooper)",
    "output_dir": "where checkpoints and results go",
    "mitigate_during_pruning": "switch the constraints on from the first step, not after pruning",
    "validation": "for choosing settings: fit on 80%% of the training split, report the other 20%% as 'test'",
    "lr_milestones": "fractions of all pruning + fine-tuning epochs after which the primal LR is multiplied by "
    "--lr-gamma (the paper: 0.6 0.8 0.9; none: constant LR)",
    "margin": "CEAG enforces tolerance - margin (a fraction; 0.005 = half a point); reports still check tolerance",
    "dual_optimizer": "multiplier optimizer: sgd (the paper) or nupi (PI controller, Cooper's nuPI)",
    "nupi_kp": "nuPI proportional gain K_P (0 = SGD)",
    "nupi_ema": "nuPI smoothing of the violation, in [0, 1)",
    "constraint_estimate": "train (training pass, the paper) or eval (one extra eval-mode pass of the clean batch)",
    "final_iterate": "last, or feasible_best: the most accurate epoch end with train max psi <= tolerance "
    "(else the least infeasible), for constrained methods",
    "el_form": "equalized loss: signed (L_g - L = 0) or paper (|L_g - L| = 0, the official code)",
    "dual_lr": "multiplier step size, or auto: 10 x lr / number of constraints (Cooper's rule for many groups)",
    "resolution_z": "CEAG: per-group tolerance eps + z * SE_g from each group's size (0: one eps for all)",
    "iterate_min_count": "with --final-iterate feasible_best: judge max psi over groups with >= this many samples",
    "fit_buffers_to_groups": "CEAG: a group smaller than buffer_size gets a buffer of its size",
    "dual_step_scale": "CEAG: uniform (one multiplier step for all groups) or share (in proportion to group size)",
    "distill_weight": "every method: weight in [0, 1] of distillation from the dense model in the model step's "
    "loss (0: none)",
    "distill_temperature": "softmax temperature of that distillation",
    "pruning": "unstructured (weight magnitudes, the paper) or channel (whole channels via torch-pruning; "
    "--sparsity is then the fraction of channels)",
    "device": "where models train and are evaluated: cpu, cuda, cuda:1, mps (not part of the run name)",
}


def _add_config_flags(parser: argparse.ArgumentParser, *, skip: set[str] = frozenset()) -> None:
    defaults = ExperimentConfig()
    for item in fields(ExperimentConfig):
        if item.name in skip:
            continue
        flag = "--" + item.name.replace("_", "-")
        default = getattr(defaults, item.name)
        help_text = f"{_HELP.get(item.name, item.name.replace('_', ' '))} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif isinstance(default, tuple):
            nargs = "*" if item.name == "lr_milestones" else "+"  # no milestones: a constant LR
            parser.add_argument(flag, nargs=nargs, type=float if nargs == "*" else str, default=list(default),
                                help=help_text)  # fmt: skip
        elif item.name in ("subset",):
            parser.add_argument(flag, type=int, default=default, help=help_text)
        elif item.name == "dual_lr":
            parser.add_argument(flag, type=_float_or_auto, default=default, help=help_text)
        elif default is None:
            parser.add_argument(flag, type=str, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text)


def _float_or_auto(text: str) -> float | str:
    """``"auto"`` or a float (the flag's type; the config validates the value)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _config(args: argparse.Namespace, **overrides: Any) -> ExperimentConfig:
    values = {f.name: getattr(args, f.name) for f in fields(ExperimentConfig) if hasattr(args, f.name)}
    config = ExperimentConfig.from_dict({**values, **overrides})
    _check_writable(Path(config.output_dir), "--output-dir")
    if config.cache_dir is not None:
        _check_writable(Path(config.cache_dir), "--cache-dir")
    return config


def _check_writable(folder: Path, flag: str) -> None:
    """Fail before any training if results could not be written (was a traceback after the work)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{flag} {folder} is not a writable folder ({type(error).__name__}: {error}).") from error


def _cmd_train_dense(args: argparse.Namespace) -> int:
    config = _config(args)
    task = load_task(config)
    started = time.perf_counter()
    _, path, reused = train_dense(config, task)
    print(f"dense checkpoint {'reused' if reused else 'written'}: {path} ({time.perf_counter() - started:.1f} s)")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    result = run_experiment(_config(args), resume=args.resume)
    print(results_table([result]))
    print(f"results: {result['results_path']}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    results = [read_results(Path(p)) for p in args.results]
    _check_writable(Path(args.output), "--output")
    print(results_table(results))
    print(f"report: {write_report(results, Path(args.output))}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    quick = {"subset": 1500, "dense_epochs": 1, "prune_epochs": 1, "finetune_epochs": 1, "lr_milestones": ()}
    quick = quick if args.quick else {}
    output = Path(args.output_dir)
    _check_writable(output, "--output-dir")
    where = {"data_dir": args.data_dir, "cache_dir": args.cache_dir, "output_dir": str(output)}
    base = ExperimentConfig(**where, **{**UTKFACE_DEMO, **quick})
    if args.task == "synthetic":
        base = ExperimentConfig(**where, **{**SYNTHETIC_DEMO, **quick})
    started = time.perf_counter()
    try:
        task = load_task(base)
    except FileNotFoundError as error:
        if args.task != "utkface-or-synthetic":
            raise
        print(
            f"UTKFace is not here ({error}).\nRunning the synthetic demo instead (generated in-process, no "
            "download); for the UTKFace demo put UTKFace.tar.gz under <data dir>/utkface/ and pass --data-dir "
            "or set CEAG_DATA_DIR.\n"
        )
        base = ExperimentConfig(**where, **{**SYNTHETIC_DEMO, **quick})
        task = load_task(base)
    what = f"UTKFace {base.image_size}px" if base.task == "utkface" else "Synthetic task (3 groups)"
    print(
        f"{what}, target {base.target}, groups {'x'.join(base.protected)}, {base.model}, "
        f"{100 * base.sparsity:.0f}% sparsity; NFT vs CEAG (eps = {base.tolerance}, k = {base.buffer_size})"
    )
    results = []
    for method in ("nft", "ceag"):
        config = ExperimentConfig.from_dict({**asdict(base), "method": method})
        results.append(run_experiment(config, task=task))
    report = write_report(results, output)
    print()
    print(results_table(results))
    nft, ceag = (r["reports"]["train"]["overall"]["max_psi"] for r in results)
    seconds = time.perf_counter() - started
    summary = {
        "command": "ceag-cooper demo" + (" --quick" if args.quick else "")
        + (f" --task {args.task}" if args.task != "utkface-or-synthetic" else ""),
        "task": base.task,
        "seconds": round(seconds, 1),
        "versions": results[-1]["versions"],
        "data_fingerprint": results[-1]["data_fingerprint"],
        "config": asdict(base),
        "dense": {split: results[0]["reports"][split]["overall"]["dense_accuracy"] for split in ("train", "test")},
        "rows": {r["config"]["method"]: {split: r["reports"][split]["overall"] for split in ("train", "test")}
                 for r in results},
        "final_iterate": {r["config"]["method"]: r.get("final_iterate", "last") for r in results},
    }  # fmt: skip
    (output / "demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"\ntrain max ψ: NFT {100 * nft:.2f} → CEAG {100 * ceag:.2f} points. "
        f"Report, plots and JSON in {output}/ ({report.name}, demo.json); took {seconds:.0f} s."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its four subcommands."""
    parser = argparse.ArgumentParser(prog="ceag-cooper", description="Constrain the disparate impact of pruning.")
    parser.add_argument("--version", action="version", version=f"ceag-cooper {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    dense = commands.add_parser("train-dense", help="train (or reuse) the dense model")
    _add_config_flags(dense, skip=_FINETUNE_FIELDS | {"group_mode", "mitigate_during_pruning"})
    _add_config_file_flag(dense)
    dense.set_defaults(run=_cmd_train_dense)
    prune = commands.add_parser("prune", help="prune, fine-tune with a method, evaluate, write results JSON")
    _add_config_flags(prune)
    _add_config_file_flag(prune)
    prune.add_argument("--resume", action="store_true", help="continue from the run's last epoch checkpoint")
    prune.set_defaults(run=_cmd_prune)
    report = commands.add_parser("report", help="markdown table and plots from results JSON files")
    report.add_argument("results", nargs="+", help="results JSON files written by `prune` or `demo`")
    report.add_argument("--output", default="outputs/report", help="folder for report.md and plots")
    report.set_defaults(run=_cmd_report)
    demo = commands.add_parser("demo", help="UTKFace at 16 px, NFT vs CEAG at 90%% sparsity (~8 min on 2 CPU cores)")
    demo.add_argument("--quick", action="store_true", help="tiny subset and 1 epoch each (a smoke test)")
    demo.add_argument(
        "--task",
        choices=("utkface-or-synthetic", "utkface", "synthetic"),
        default="utkface-or-synthetic",
        help="UTKFace (needs the archive), the synthetic task (needs nothing), or UTKFace falling back to the "
        "synthetic task when the archive is absent (default)",
    )
    demo.add_argument("--data-dir", default=None, help=_HELP["data_dir"])
    demo.add_argument("--cache-dir", default=None, help=_HELP["cache_dir"])
    demo.add_argument("--output-dir", default="outputs/demo", help="where the report, plots and JSON go")
    demo.set_defaults(run=_cmd_demo)
    return parser


def _add_config_file_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a JSON file of settings: a results JSON (its 'config' block, to rerun that run) or a dict of "
        "config fields; flags given on the command line override it",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ceag-cooper``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is not None:
        try:
            values = config_file_values(args.config)
        except ValueError as error:
            print(f"ceag-cooper: {error}", file=sys.stderr)
            return 2
        # The file's values become the defaults and the command line is read again: explicit flags win.
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].set_defaults(**values)
        args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("once")
            return args.run(args)
    except CheckpointError as error:
        print(f"ceag-cooper: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"ceag-cooper: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"ceag-cooper: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # permissions, a file where a folder should be, a full disk...
        print(f"ceag-cooper: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
