"""How much a pruned model's training predictions churn against the dense model's, and what that does to max ψ.

``feasible_by_chance`` (``DisparityReport``) judges ε against a null model that only *loses* samples, at the
net overall gap Δ. A pruned model also *gains* samples the dense model got wrong, and ψ_g's sampling spread
grows with the total churn (lost + gained), not with the net gap. This script reads the cells of a grid (or
selection) folder, re-evaluates each cell's last-epoch checkpoint and its dense model on the cell's training
data (the fitted part for validation cells), and reports per cell: the lost and gained rates, the max ψ over the
groups of at least ``--min-count`` samples, and two null models' median max ψ and chance of max ψ ≤ ε: the
loss-only one at Δ (``feasible_by_chance``'s; simulated here) and one that also gains at the measured rate.

Needs the cells' checkpoints and dense models (``benchmarks/runs/<folder>/checkpoints``, ``dense``; git ignores
them: they exist where the cells ran) and the data set (``CEAG_DATA_DIR``)::

    python benchmarks/churn.py --runs benchmarks/runs/select_utk_many_groups_long   # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceag_cooper.experiments import ExperimentConfig, load_task
from ceag_cooper.experiments.dense import build_model, train_dense
from ceag_cooper.experiments.provenance import code_version, machine

__all__ = ["cell_churn", "churn_null_max_psi", "main"]


def churn_null_max_psi(
    counts: np.ndarray, *, lost: float, gained: float, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """``(draws,)`` max ψ over groups of a null model that loses and gains samples alike in every group.

    Each of group g's ``n_g`` samples is lost with probability ``lost`` and gained with probability ``gained``
    (independently; two binomials per group), so ψ_g = (lost_g - gained_g) / n_g - (lost - gained). With
    ``gained = 0`` it is ``DisparityReport.feasible_by_chance``'s null model.
    """
    lost_g = rng.binomial(counts, lost, size=(draws, counts.size))
    gained_g = rng.binomial(counts, gained, size=(draws, counts.size)) if gained > 0 else 0
    return ((lost_g - gained_g) / counts - (lost - gained)).max(axis=1)


def _correct(model: torch.nn.Module, data: Any) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        predictions = [model(data.inputs[i : i + 512]).argmax(1) for i in range(0, len(data), 512)]
    return torch.cat(predictions) == data.targets


def cell_churn(results: dict[str, Any], runs: Path, *, min_count: int, draws: int, cache: dict) -> dict[str, Any]:
    """One cell's churn and null-model numbers (see the module docstring); ``cache`` holds tasks by seed."""
    config = ExperimentConfig.from_dict({**results["config"], "output_dir": str(runs)})
    if config.seed not in cache:
        task = load_task(config)
        dense, _, _ = train_dense(config, task, progress=False)
        cache[config.seed] = task, _correct(dense, task.train)
    task, dense_correct = cache[config.seed]
    model = build_model(config, task)
    checkpoint = torch.load(runs / "checkpoints" / f"{results['run']}.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    correct = _correct(model, task.train)
    ids = task.spec.group_ids(task.train.attributes)
    counts = torch.bincount(ids, minlength=task.spec.num_groups).double()
    lost_g = torch.bincount(ids, (dense_correct & ~correct).double(), minlength=counts.numel())
    gained_g = torch.bincount(ids, (~dense_correct & correct).double(), minlength=counts.numel())
    lost, gained = float(lost_g.sum() / counts.sum()), float(gained_g.sum() / counts.sum())
    judged = counts >= min_count
    max_psi = float(((lost_g - gained_g) / counts)[judged].max()) - (lost - gained)
    sizes = counts[judged].numpy().astype(int)
    tolerance = config.tolerance
    rates = {"loss_only": (lost - gained, 0.0), "churn": (lost, gained)}
    nulls = {
        name: churn_null_max_psi(sizes, lost=a, gained=b, draws=draws, rng=np.random.default_rng(config.seed))
        for name, (a, b) in rates.items()
    }
    row = {
        "run": results["run"],
        "method": config.method,
        "settings": {k: results["config"][k] for k in ("dual_lr", "buffer_size", "constraint_estimate")}
        | {"dual_step_scale": results["config"].get("dual_step_scale", "uniform")},
        "seed": config.seed,
        "groups_judged": int(judged.sum()),
        "lost": lost,
        "gained": gained,
        "gap": lost - gained,
        "max_psi_last_epoch": max_psi,
    }
    for name, null in nulls.items():
        row[f"{name}_median"] = float(np.median(null))
        row[f"{name}_chance"] = float((null <= tolerance + 1e-9).mean())  # psi on the lattice: eps up to rounding
        row[f"{name}_percentile"] = float((null <= max_psi).mean())
    return row


def _markdown(rows: list[dict[str, Any]], args: argparse.Namespace, header: dict[str, Any]) -> str:
    def points(x: float) -> str:
        return f"{100 * x:.2f}"

    lines = [
        f"# Prediction churn against the dense model: `{args.runs}`",
        "",
        f"Each cell's last-epoch checkpoint and its dense model, evaluated on the cell's training data (the fitted "
        f"part for validation cells). Lost: the dense model right, the sparse one wrong; gained: the reverse; gap = "
        f"lost - gained (Δ). Max ψ over the groups of at least {args.min_count} samples, in points. Null models "
        f"({args.draws:,} draws per cell, the cell's group sizes): loss-only (each sample lost with probability Δ, "
        "`feasible_by_chance`'s) and churn (each lost with the lost rate and gained with the gained rate); their "
        "median max ψ, the chance that max ψ ≤ ε, and the percentile of the cell's max ψ among the churn null's "
        f"draws. Code {header['code']}, {header['machine']}.",
        "",
        "```bash",
        f"python benchmarks/churn.py --runs {args.runs} --min-count {args.min_count}",
        "```",
        "",
        "| cell | seed | lost | gained | gap | max ψ | loss-only median | loss-only chance | churn median "
        "| churn chance | percentile (churn) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
        name = "NFT" if row["method"] == "nft" else f"{row['method']} ({settings})"
        lines.append(
            f"| {name} | {row['seed']} | {points(row['lost'])} | {points(row['gained'])} | {points(row['gap'])} "
            f"| {points(row['max_psi_last_epoch'])} | {points(row['loss_only_median'])} "
            f"| {100 * row['loss_only_chance']:.2f}% | {points(row['churn_median'])} "
            f"| {100 * row['churn_chance']:.2f}% | {100 * row['churn_percentile']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Evaluate every cell of ``--runs`` that has a checkpoint; write ``churn_<folder>.json`` and ``.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/runs/select_utk_many_groups_long"))
    parser.add_argument("--min-count", type=int, default=80, help="judge the groups with at least this many samples")
    parser.add_argument("--draws", type=int, default=20_000)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    cache: dict = {}
    rows = []
    for path in sorted((args.runs / "results").glob("*.json")):
        results = json.loads(path.read_text())
        if (args.runs / "checkpoints" / f"{results['run']}.pt").exists():
            rows.append(cell_churn(results, args.runs, min_count=args.min_count, draws=args.draws, cache=cache))
            print(rows[-1]["run"], f"max psi {100 * rows[-1]['max_psi_last_epoch']:.2f}", flush=True)
    header = {"code": code_version(), "machine": machine(), "runs": str(args.runs), "min_count": args.min_count}
    stem = args.output / f"churn_{args.runs.name}"
    stem.with_suffix(".json").write_text(json.dumps({**header, "cells": rows}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(_markdown(rows, args, header))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
