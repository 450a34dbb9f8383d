"""How much a pruned model's training predictions churn against the dense model's, and what that does to max ψ.

``feasible_by_chance`` (``DisparityReport``) judges ε against a null model that only *loses* samples, at the
net overall gap Δ. A pruned model also *gains* samples the dense model got wrong, and ψ_g's sampling spread
grows with the total churn (lost + gained), not with the net gap. This script reads the cells of a grid (or
selection) folder, re-evaluates each cell's last-epoch checkpoint and its dense model on the cell's training
data (the fitted part for validation cells), and reports per cell: the lost and gained rates, the max ψ over the
groups of at least ``--min-count`` samples, and two null models' median max ψ and chance of max ψ ≤ ε: the
loss-only one at Δ (``feasible_by_chance``'s; simulated here) and one that also gains at the measured rate, among
each group's dense errors (both :func:`ceag_cooper.metrics.churn.null_max_psi`). These are the last epochs' models,
not the returned iterates the results' reports describe (the same model where the returned iterate is the last
epoch).

Needs the cells' checkpoints and dense models (``benchmarks/runs/<folder>/checkpoints``, ``dense``; git ignores
them: they exist where the cells ran) and the data set (``CEAG_DATA_DIR``)::

    python benchmarks/churn.py --runs benchmarks/runs/select_utk_many_groups_long   # ~2 min on 2 cores
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
from ceag_cooper.experiments.naming import ADDED_FIELDS
from ceag_cooper.experiments.provenance import code_version, machine, weights_digest
from ceag_cooper.metrics import predict_groups
from ceag_cooper.metrics.churn import group_churn, summarize_churn

__all__ = ["cell_churn", "main"]


def _correct(model: torch.nn.Module, task: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Which training samples ``model`` gets right (eval mode, in order), and their group ids."""
    predictions = predict_groups(model, task.train.batches(512), groups=task.spec)
    return torch.from_numpy(predictions["y_pred"] == predictions["y_true"]), torch.from_numpy(predictions["group_id"])


def cell_churn(results: dict[str, Any], runs: Path, *, min_count: int, draws: int, cache: dict) -> dict[str, Any]:
    """One cell's churn and null-model numbers (see the module docstring); ``cache`` holds data and dense models."""
    config = ExperimentConfig.from_dict({**results["config"], "output_dir": str(runs)})
    key = results["data_fingerprint"], results["dense_weights"]
    if key not in cache:
        task = load_task(config)
        dense, _, _ = train_dense(config, task, progress=False)
        if weights_digest(dense) != results["dense_weights"]:
            raise RuntimeError(f"{results['run']}: the dense model found is not the one the cell started from.")
        cache[key] = task, _correct(dense, task)[0]
    task, dense_correct = cache[key]
    model = build_model(config, task)
    checkpoint = torch.load(runs / "checkpoints" / f"{results['run']}.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    correct, ids = _correct(model, task)
    summary = summarize_churn(group_churn(dense_correct, correct, ids, task.spec.num_groups), min_count=min_count)
    row = {
        "run": results["run"],
        "method": config.method,
        "settings": {k: results["config"][k] for k in ("dual_lr", "buffer_size", "constraint_estimate")}
        | {k: results["config"].get(k, ADDED_FIELDS[k]) for k in ("dual_step_scale", "distill_weight")},
        "seed": config.seed,
        "groups_judged": int(summary.counts.size),
        "lost": summary.lost,
        "gained": summary.gained,
        "gained_share_of_dense_errors": summary.gained_share_of_dense_errors,
        "gap": summary.gap,
        "max_psi_last_epoch": summary.max_psi,
    }
    for name, gains in (("loss_only", False), ("churn", True)):
        null = summary.null(draws=draws, rng=np.random.default_rng(config.seed), gains=gains)
        row[f"{name}_median"] = float(np.median(null))
        row[f"{name}_chance"] = float((null <= config.tolerance + 1e-9).mean())  # psi on the lattice: eps + rounding
        row[f"{name}_percentile"] = float((null <= summary.max_psi).mean())
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
        "`feasible_by_chance`'s) and churn (each group's dense errors gained at the measured share of all dense "
        "errors, capped at all of them, and its other samples lost at the rate that makes its expected ψ 0); their "
        "median max ψ, the chance that max ψ ≤ ε, and the percentile of the cell's max ψ among the churn null's "
        f"draws. Code {header['code']}, {header['machine']}.",
        "",
        "```bash",
        f"python benchmarks/churn.py --runs {args.runs} --min-count {args.min_count}",
        "```",
        "",
        "| cell | seed | lost | gained | gained / dense errors | gap | max ψ | loss-only median | loss-only chance "
        "| churn median | churn chance | percentile (churn) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
        name = "NFT" if row["method"] == "nft" else f"{row['method']} ({settings})"
        lines.append(
            f"| {name} | {row['seed']} | {points(row['lost'])} | {points(row['gained'])} "
            f"| {100 * row['gained_share_of_dense_errors']:.0f}% | {points(row['gap'])} "
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
    parser.add_argument("--draws", type=int, default=200_000)
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
