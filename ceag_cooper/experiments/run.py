"""One cell end to end: dense model, fine-tuning, reports on both splits, the results JSON."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cooper
import torch

from ceag_cooper import __version__
from ceag_cooper._atomic import atomic_write
from ceag_cooper.experiments.config import ExperimentConfig
from ceag_cooper.experiments.dense import train_dense
from ceag_cooper.experiments.finetuning import finetune
from ceag_cooper.experiments.provenance import code_version, machine, portable_path, weights_digest
from ceag_cooper.experiments.tasks import Task, data_fingerprint, load_task
from ceag_cooper.metrics import DisparityReport, evaluate_groups

__all__ = ["run_experiment"]


def run_experiment(
    config: ExperimentConfig, *, task: Task | None = None, progress: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Run one (task, sparsity, method, seed) cell end to end and write its results JSON.

    With ``resume=True`` an interrupted fine-tuning continues from its last epoch checkpoint.

    Returns:
        The results: config, versions, timings, dense and sparse metrics, disparity reports on
        train and test, the epoch log, and where the JSON was written (``"results_path"``).
    """
    started = time.perf_counter()
    code_version()  # recorded now, before anything can change the checkout under a long run
    task = task or load_task(config)
    dense, checkpoint, reused = train_dense(config, task, progress=progress)
    dense_weights = weights_digest(dense)  # before fine-tuning touches it: which dense model this cell started from
    dense_seconds = time.perf_counter() - started
    reference = evaluate_groups(dense, task.train.batches(512), groups=task.spec)
    dense_test = evaluate_groups(dense, task.test.batches(512), groups=task.spec)
    model, pruner, log = finetune(
        config, task, dense, reference, progress=progress, resume=resume, dense_test=dense_test
    )
    names = task.spec.group_names
    reports = {
        "train": DisparityReport.from_metrics(
            reference,
            evaluate_groups(model, task.train.batches(512), groups=task.spec),
            group_names=names,
            tolerance=config.tolerance,
            never_feasible=log[-1].get("never_feasible") if log else None,  # constraints are on train
        ),
        "test": DisparityReport.from_metrics(
            dense_test,
            evaluate_groups(model, task.test.batches(512), groups=task.spec),
            group_names=names,
            tolerance=config.tolerance,
        ),
    }
    results = {
        "config": {**asdict(config), "output_dir": portable_path(config.output_dir)},
        "run": config.run_name(),
        "versions": {
            "ceag_cooper": __version__,
            "torch": torch.__version__,
            "cooper": cooper.__version__,
            "python": platform.python_version(),
            "code": code_version(),
            "machine": machine(),
        },
        "final_iterate": log[-1].get("final_iterate", "last") if log else "last",
        "data_fingerprint": data_fingerprint(task),
        "dense_checkpoint": portable_path(checkpoint),
        "dense_reused": reused,
        "dense_weights": dense_weights,
        "timings_s": {"dense": round(dense_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "sparsity": round(pruner.measured_sparsity(), 4),
        "groups": names,
        "reports": {split: report.to_dict() for split, report in reports.items()},
        "log": log,
    }
    path = Path(config.output_dir) / "results" / f"{config.run_name()}.json"
    text = (json.dumps(results, indent=2) + "\n").encode()
    atomic_write(path, lambda handle: handle.write(text))  # readers never see half a results file
    results["results_path"] = str(path)
    return results
