"""What the selection scripts (``select_hparams.py``, ``select_protocol.py``) share; not a script.

Both choose CEAG's settings for a grid's task without reading its test split: every candidate
runs in the experiments' *validation* mode (``ExperimentConfig.validation``), fitted on a
group-stratified 80% of the training split and scored on the other 20% as if it were the test
split. Shared here: the common options, the validation-mode base config of a grid, running a
cell or reusing its results JSON, the scores read from a result, and the results page.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import arguments, reproduce_command, write_results
from run_grid import GRIDS, RESULTS_DIR, RUNS_DIR, record_failure

from ceag_cooper import NonFiniteError
from ceag_cooper.experiments import ExperimentConfig, run_experiment
from ceag_cooper.metrics import DisparityReport


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser with the options both scripts have (its description: the first line of ``doc``)."""
    result = argparse.ArgumentParser(description=doc.splitlines()[0])
    result.add_argument("--grid", choices=sorted(GRIDS), required=True)
    result.add_argument("--sparsity", type=float, default=None, help="default: the grid's first")
    result.add_argument(
        "--accuracy-slack", type=float, default=None, help="default: the selection's (1 point; 2 for many groups)"
    )
    result.add_argument("--output", type=Path, default=RESULTS_DIR)
    result.add_argument("--data-dir", default=None)
    return result


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The grid's base settings in validation mode, at the chosen sparsity, writing its cells apart.

    Cells go to ``runs/select_<grid>/`` when the results go to ``results/``, else next to the results.
    """
    grid = GRIDS[args.grid]
    base = {**grid["base"], "validation": True}
    base["sparsity"] = args.sparsity if args.sparsity is not None else grid["sparsities"][0]
    base["output_dir"] = str(RUNS_DIR / f"select_{args.grid}") if args.output == RESULTS_DIR else str(args.output)
    if args.data_dir:
        base["data_dir"] = args.data_dir
    return base


class CellRunner:
    """Runs a cell, or reads its results JSON where it finished before; loads the task once.

    ``load_task`` is passed in (the script's own name for it, so that a test can replace it there).
    """

    def __init__(self, load_task: Callable[[ExperimentConfig], Any]) -> None:
        self.load_task = load_task
        self.task: Any = None

    def __call__(self, config: ExperimentConfig, label: str) -> dict[str, Any]:
        """The results dict of ``config``'s cell."""
        path = Path(config.output_dir) / "results" / f"{config.run_name()}.json"
        if path.exists():
            return json.loads(path.read_text())
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.task = self.task or self.load_task(config)
                result = run_experiment(config, task=self.task, progress=False, resume=True)
        except NonFiniteError as error:  # a candidate that diverges is a result (it loses), as in run_grid
            result = record_failure(config, error, path)
        print(
            f"{label}: {time.perf_counter() - started:.0f} s" + (" (diverged)" if "failed" in result else ""),
            flush=True,
        )
        return result


def scores(
    result: dict[str, Any], fit_min_count: int | None = None, validation_min_count: int | None = None
) -> dict[str, float]:
    """Accuracy and disparity of a cell on the held-out 20% ("validation") and on the fitted 80%.

    With ``*_min_count`` the max ψ of that part counts only the groups with at least that many
    samples in it (:meth:`DisparityReport.max_psi_among`).
    """
    if "failed" in result:  # diverged: no accuracy, unbounded disparity
        return {"validation_accuracy": 0.0, "validation_max_psi": math.inf, "validation_psi_pw": math.inf,
                "fit_accuracy": 0.0, "fit_max_psi": math.inf}  # fmt: skip
    held, fit = result["reports"]["test"], result["reports"]["train"]

    def max_psi(report: dict[str, Any], min_count: int | None) -> float:
        if min_count is None:
            return report["overall"]["max_psi"]
        return DisparityReport.from_dict(report).max_psi_among(min_count=min_count)

    return {
        "validation_accuracy": held["overall"]["sparse_accuracy"],
        "validation_max_psi": max_psi(held, validation_min_count),
        "validation_psi_pw": held["overall"]["psi_pw"],
        "fit_accuracy": fit["overall"]["sparse_accuracy"],
        "fit_max_psi": max_psi(fit, fit_min_count),
    }


def page(title: str, intro: str, command: str, table: Sequence[str]) -> str:
    """A selection's results page: title, what was run and the rule, the command, the table."""
    return "\n".join([f"# {title}", "", intro, "", "```bash", command, "```", "", *table]) + "\n"


def write(output: Path, stem: str, payload: dict[str, Any], markdown: str) -> None:
    """Print the page and write ``<stem>.{json,md}`` under ``output``."""
    print(markdown, end="")
    write_results(output, stem, payload, markdown, indent=1)


def command(script: str, argv: Sequence[str] | None) -> tuple[list[str], str]:
    """The arguments of this run and the command that reproduces it."""
    given = arguments(argv)
    return given, reproduce_command(Path(__file__).with_name(script), given)
