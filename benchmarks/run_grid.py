"""Run a grid of (task, sparsity, method, seed) cells and aggregate them into a table.

Each cell is one :func:`ceag_cooper.experiments.run_experiment`; dense checkpoints are shared by
every cell with the same dense settings (one per task and seed), and a cell whose results JSON
already exists is skipped and an interrupted cell continues from its last epoch checkpoint, so an
interrupted grid resumes where it stopped. After every cell the
aggregate is rewritten: ``benchmarks/results/<grid>.json`` (every cell's numbers) and
``<grid>.md`` (mean ± std over seeds, and the command that produced it).

    python benchmarks/run_grid.py --grid utk_race            # the paper's first task, 3 seeds
    python benchmarks/run_grid.py --grid quick --output /tmp/q   # seconds: synthetic, 1 epoch
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # its siblings, also when loaded from a file (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _protocols import page_stem, selection_of

from ceag_cooper import NonFiniteError
from ceag_cooper.experiments import (
    LEGACY_PROTOCOL,
    METHODS,
    ExperimentConfig,
    data_fingerprint,
    load_task,
    portable_path,
    run_experiment,
)
from ceag_cooper.metrics import DisparityReport

PAPER_METHODS = ("nft", "nft_es", "el", "el_rb", "ceag_no_rb", "ceag")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RUNS_DIR = Path(__file__).resolve().parent / "runs"  # per-cell JSON (committed, for resuming); dense/ is ignored

UTKFACE = {"task": "utkface", "image_size": 32, "model": "small_cnn"}
LEGACY = {**UTKFACE, **LEGACY_PROTOCOL}
"""The grids that ran before issue #13: 4 fine-tuning epochs at a constant LR, training-mode estimates."""
PROTOCOL_12EP = {**UTKFACE, "finetune_epochs": 8, "lr_milestones": (0.6, 0.8, 0.9), "final_iterate": "feasible_best",
                 "el_form": "paper"}  # fmt: skip
"""Issue #13's protocol: 4 pruning + 8 fine-tuning epochs, primal LR x0.1 at 60/80/90% of the 12 (the
paper's schedule), feasibility-first final iterate for the constrained methods, the paper's EL."""
ADULT_MANY_GROUPS = {
    "task": "adult",
    "target": "income",
    "protected": ("sex", "age_bucket", "occupation"),
    "model": "mlp",
    "width": 32,
    "batch_size": 256,
    "dense_epochs": 10,
    "dense_lr": 0.05,
    "augment": False,
    "prune_epochs": 4,
    "finetune_epochs": 8,
    "lr_milestones": (0.6, 0.8, 0.9),
    "final_iterate": "feasible_best",
    "tolerance": 0.02,
    "buffer_size": 40,
    "el_form": "signed",  # the default when its cells ran (no EL row here; it keeps their names)
}
"""Issue #15's many-groups task and its 12-epoch protocol (4 pruning + 8 fine-tuning epochs, LR x0.1 at 60/80/90%)."""
UTK_MANY_GROUPS_12EP = {**PROTOCOL_12EP, "target": "race", "protected": ("race", "gender", "age_bucket"),
                        "tolerance": 0.02}  # fmt: skip
"""Issue #15's UTK-90 task under issue #13's protocol, eps = 2 points: utk_many_groups_12ep's base, and with 16
fine-tuning epochs utk_many_groups_long's."""
UTK_MANY_GROUPS_CHOICE = {
    "ceag_detach_overall": {
        "dual_lr": "auto",
        "fit_buffers_to_groups": True,
        "iterate_min_count": 100,
        "buffer_size": 160,
    }
}
"""What both UTK-90 selections chose (each grid's page; 80 fitted samples there = 100 in the full split)."""
GRIDS: dict[str, dict[str, Any]] = {
    "utk_race_12ep": {
        "base": {**PROTOCOL_12EP, "target": "race", "protected": ("race",)},
        "sparsities": (0.9, 0.95),
        "methods": ("nft", "nft_es", "el_rb", "ceag_no_rb", "ceag"),
        "seeds": (0, 1, 2, 3, 4),
        "selected": {"ceag": {"constraint_estimate": "train"}},  # results/select_protocol_utk_race_12ep.md
    },
    "utk_race_by_race_gender_12ep": {
        "base": {**PROTOCOL_12EP, "target": "race", "protected": ("race", "gender")},
        "sparsities": (0.9,),
        "methods": ("nft", "nft_es", "el_rb", "ceag_no_rb", "ceag"),
        "seeds": (0, 1, 2),
        # utk_race's choice (train estimates, k = 40) missed here on 2 of 3 seeds; its own candidates were
        # fixed before any of its runs (_protocols.RACE_GENDER_CANDIDATES). Their choice (buffers of 160,
        # results/select_protocol_utk_race_by_race_gender_12ep.md) missed too, so rounds 3-4 judged the three
        # with the most slack and two with a fast dual on two validation seeds (RACE_GENDER_TWO_SEEDS): none
        # met ε on both; SLACK_RULE chose the nuPI one.
        "selection": "race_gender_12ep_two_seeds",
        "selected": {
            "ceag": {"buffer_size": 160, "margin": 0.005, "dual_optimizer": "nupi", "nupi_kp": 50.0, "nupi_ema": 0.9}
        },
        "earlier_selected": [{"ceag": {"buffer_size": 160}}],  # rounds 1-2
    },
    "utk_race": {
        "base": {**LEGACY, "target": "race", "protected": ("race",)},
        "sparsities": (0.9, 0.95),
        "methods": PAPER_METHODS,
        "seeds": (0, 1, 2),
        "selected": {"ceag": {"dual_lr": 0.003}},  # results/select_utk_race.md
    },
    "utk_race_by_race_gender": {
        "base": {**LEGACY, "target": "race", "protected": ("race", "gender")},
        "sparsities": (0.9, 0.95),
        "methods": PAPER_METHODS,
        "seeds": (0,),
        "selected": {"ceag": {"dual_lr": 0.003}},  # results/select_utk_race_by_race_gender.md
    },
    "utk_gender_by_race": {
        "base": {**LEGACY, "target": "gender", "protected": ("race",)},
        "sparsities": (0.9, 0.95),
        "methods": PAPER_METHODS,
        "seeds": (0,),
        "selected": {"ceag": {"dual_lr": 0.003}},  # results/select_utk_gender_by_race.md
    },
    "utk_generalization": {
        "base": {**LEGACY, "target": "race", "protected": ("race",)},
        "sparsities": (0.9, 0.95),
        "methods": ("nft", "ceag", "ceag_heldout", "ceag_heldout_select", "ceag_two_sided", "ceag_heldout_two_sided"),
        "seeds": (0, 1, 2),
    },
    "utk_many_groups": {
        "base": {**LEGACY, "target": "race", "protected": ("race", "gender", "age_bucket")},
        "sparsities": (0.9,),
        "methods": ("nft", "el_rb", "ceag", "ceag_detach_overall"),
        "seeds": (0,),
        "selected": {"ceag_detach_overall": {"dual_lr": 0.001}},  # results/select_utk_many_groups.md
    },
    "utk_many_groups_12ep": {
        # Issue #15's UTK-90 target with issue #13's protocol and #15's options (set before any of its runs):
        # eps = 2 points, since one sample is already a point in the 100-sample groups the target judges.
        # Its knobs: the "many_groups_utk" candidates (_protocols.py) run by select_protocol.py.
        "selection": "many_groups_utk",
        "judged_min_count": 100,
        "selected": UTK_MANY_GROUPS_CHOICE,  # select_protocol_utk_many_groups_12ep.md
        "base": UTK_MANY_GROUPS_12EP,
        "sparsities": (0.9,),
        "methods": ("nft", "ceag_detach_overall"),
        "seeds": (0, 1, 2),
    },
    "utk_many_groups_long": {
        # utk_many_groups_12ep with 16 fine-tuning epochs instead of 8 (every method), as adult_many_groups_long:
        # _protocols.UTK_LONG_SCHEDULE_CANDIDATES says why (the 12-epoch selection's validation logs). Dense
        # models: the same as utk_many_groups_12ep's (the schedule after pruning is not part of a dense key).
        # Not run: by the rule fixed before its selection, the 3-seed grid runs only if the chosen candidate meets
        # eps on the fitted part of a validation seed, and none did (select_protocol_utk_many_groups_long.md).
        "selection": "many_groups_utk_long",
        "judged_min_count": 100,
        # Round 4's distillation took the choice by the tie-break (validation max psi), not by meeting eps.
        "selected": {
            "ceag_detach_overall": {
                **UTK_MANY_GROUPS_CHOICE["ceag_detach_overall"],
                "distill_weight": 0.5,
                "distill_temperature": 3.0,
            }
        },  # select_protocol_utk_many_groups_long.md
        "base": {**UTK_MANY_GROUPS_12EP, "finetune_epochs": 16},
        "sparsities": (0.9,),
        "methods": ("nft", "ceag_detach_overall"),
        "seeds": (0, 1, 2),
    },
    "omniglot_many_groups": {
        "base": {
            **LEGACY_PROTOCOL,
            "task": "omniglot",
            "target": "character",
            "protected": ("character",),
            "image_size": 28,
            "width": 16,
            "batch_size": 64,
            "dense_epochs": 30,
            "augment": False,
            "tolerance": 0.02,
            "buffer_size": 10,
            "dual_lr": 0.05,
        },
        "sparsities": (0.9,),
        "methods": ("nft", "el_rb", "ceag", "ceag_detach_overall"),
        "selected": {"ceag_detach_overall": {"dual_lr": 0.001}},  # results/select_omniglot_many_groups.md
        "seeds": (0,),
    },
    "adult_many_groups": {
        # Issue #15's many-groups task: 156 groups (sex x age bucket x occupation), 91 with >= 100 training
        # samples; tabular, so a cell is minutes. Knobs are chosen in validation mode before the runs by
        # select_protocol.py with its many-groups candidates and rule ("selection") and recorded as
        # "selected"; until then the grid must not be reported.
        "selection": "many_groups",
        "judged_min_count": 100,
        "selected": {
            "ceag_detach_overall": {"dual_lr": 0.01, "fit_buffers_to_groups": True}
        },  # select_protocol_adult_many_groups.md
        "base": ADULT_MANY_GROUPS,
        "sparsities": (0.9,),
        "methods": ("nft", "ceag", "ceag_detach_overall"),
        "seeds": (0, 1, 2),
    },
    "adult_many_groups_long": {
        # adult_many_groups with 32 fine-tuning epochs instead of 8 (every method): its selection's logs showed
        # ~100 steps per epoch and the LR decayed after 4 constrained epochs, too short for any dual to react.
        "selection": "many_groups_long",
        "judged_min_count": 100,
        "selected": {  # select_protocol_adult_many_groups_long.md; 80 fitted samples there = 100 in the full split
            "ceag_detach_overall": {"dual_lr": 0.01, "fit_buffers_to_groups": True, "iterate_min_count": 100}
        },
        "base": {**ADULT_MANY_GROUPS, "finetune_epochs": 32},
        "sparsities": (0.9, 0.95),  # 95%: the 90% selection reused, as utk_race does
        "methods": ("nft", "ceag", "ceag_detach_overall"),
        "seeds": (0, 1, 2),
    },
    "quick": {
        "base": {
            "task": "synthetic",
            "model": "mlp",
            "width": 8,
            "dense_epochs": 2,
            "prune_epochs": 1,
            "finetune_epochs": 1,
            "lr_milestones": (),  # constant LR: too short for the default schedule
            "augment": False,
        },
        "sparsities": (0.9,),
        "methods": ("nft", "ceag"),
        "seeds": (0, 1),
    },
}
COLUMNS = (
    ("train", "sparse_accuracy", "train acc"),
    ("test", "sparse_accuracy", "test acc"),
    ("train", "max_psi", "train max ψ"),
    ("test", "max_psi", "test max ψ"),
    ("train", "psi_pw", "train Ψ_PW"),
    ("test", "psi_pw", "test Ψ_PW"),
)


def cells(grid: dict[str, Any], runs: Path, seeds: Sequence[int] | None) -> list[ExperimentConfig]:
    """Every cell's config, seeds outermost so that each seed's dense model is trained once.

    A grid's optional ``selected`` maps a method to settings chosen for it on held-out data by
    ``select_hparams.py`` (e.g. ``{"ceag": {"dual_lr": 0.003}}``); they override ``base``. Its optional
    ``earlier_selected`` lists the ``selected`` of its earlier selections, oldest first: their cells
    stay in ``runs/`` and the README reports them (``readme_results._before_selection``).
    """
    selected = grid.get("selected", {})
    return [
        ExperimentConfig.from_dict(
            {**grid["base"], **selected.get(m, {}), "sparsity": s, "method": m, "seed": seed, "output_dir": str(runs)}
        )
        for seed in (seeds if seeds is not None else grid["seeds"])
        for s in grid["sparsities"]
        for m in grid["methods"]
    ]


def selection_page(name: str, grid: dict[str, Any]) -> str:
    """The results page (file stem under ``results/``) of the selection that chose a grid's knobs."""
    return page_stem(name, selection_of(grid))


def _tuning_text(name: str, grid: dict[str, Any], config: ExperimentConfig) -> str:
    """How ε and the dual lr were set, for the table's header."""
    text = f"ε = {100 * config.tolerance:g} point(s), k = {config.buffer_size}, dual lr {config.dual_lr}"
    selected = grid.get("selected", {})
    if not selected and "selection" in grid:
        return (
            f"{text}: the grid's base settings (not tuned), while its own choice by `select_protocol.py` "
            f"(results/{selection_page(name, grid)}.md) is not committed. "
            "ε is the requirement, not tuned."
        )
    if not selected:
        return text + ". ε and the dual lr are fixed (not tuned on any split)."
    chosen = "; ".join(
        f"{method}: " + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in settings.items())
        for method, settings in selected.items()
    )
    protocol = name.endswith("_12ep") or "selection" in grid  # select_protocol.py; the others select_hparams.py
    script, record = (
        ("select_protocol", selection_page(name, grid)) if protocol else ("select_hparams", f"select_{name}")
    )
    return (
        f"{text} except where chosen on a held-out 20% of the training split by `{script}.py` "
        f"(results/{record}.md; the test split was not read): {chosen}. ε is the requirement, not tuned."
    )


def record_failure(config: ExperimentConfig, error: Exception, path: Path) -> dict[str, Any]:
    """Write a diverged cell's record to ``path`` (repository-relative paths, as a finished cell's) and return it."""
    result = {
        "run": config.run_name(),
        "config": {**asdict(config), "output_dir": portable_path(config.output_dir)},
        "failed": str(error),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


DERIVED_GROUP_FIELDS = ("gap", "standard_error", "resolvable")
"""Per-group fields the grid aggregate leaves out (``DisparityReport.from_dict`` derives them); with them
and every digit, the 156-group Adult aggregate passed 2 MB. The per-cell JSON in runs/ keeps everything."""


def _compact_reports(cell: dict[str, Any]) -> dict[str, Any]:
    """``cell`` with per-group rows cut to stored fields, their numbers to 6 decimals (1e-4 points)."""

    def row(values: dict[str, Any]) -> dict[str, Any]:
        return {
            k: round(v, 6) if isinstance(v, float) else v for k, v in values.items() if k not in DERIVED_GROUP_FIELDS
        }

    reports = {
        split: {**report, "by_group": {group: row(values) for group, values in report["by_group"].items()}}
        for split, report in cell["reports"].items()
    }
    return {**cell, "reports": reports}


def mean_std(values: list[float]) -> str:
    """Fractions as points: ``"12.34"`` for one seed, ``"12.34 ± 0.56"`` (sample std) for several."""
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def _step_seconds(result: dict[str, Any]) -> float:
    """Median seconds of a fine-tuning epoch once the constraints are on (training loop only)."""
    epochs = [e["seconds"] for e in result["log"] if e["mitigation"]] or [e["seconds"] for e in result["log"]]
    return statistics.median(epochs)


def aggregate(results: list[dict[str, Any]], judged_min_count: int = 0) -> list[dict[str, Any]]:
    """One row per (sparsity, method): mean ± std over seeds, feasibility rate, time vs NFT.

    The epoch time is relative to NFT's cells of the same seeds and dense models only (``epoch_time_seeds``
    says which seeds): a cell that started from another dense model ran on another machine.

    With ``judged_min_count`` (a many-groups grid's ``"judged_min_count"``) a row also has the max ψ
    over the groups with at least that many samples in each split, per seed, and how many seeds met ε
    on train over them (issue #15's target: a group of 20 cannot resolve a 2-point tolerance).
    """
    rows = []
    dense = {id(r): key for r, key in zip(results, dense_model_keys(results), strict=True)}
    keys = sorted({(r["config"]["sparsity"], r["config"]["method"]) for r in results},
                  key=lambda k: (k[0], METHODS.index(k[1])))  # fmt: skip
    for sparsity, method in keys:
        group = [r for r in results if (r["config"]["sparsity"], r["config"]["method"]) == (sparsity, method)]
        nft = [r for r in results if (r["config"]["sparsity"], r["config"]["method"]) == (sparsity, "nft")]
        row: dict[str, Any] = {
            "sparsity": sparsity,
            "method": method,
            "seeds": sorted(r["config"]["seed"] for r in group),
        }
        for split, metric, name in COLUMNS:
            row[name] = [r["reports"][split]["overall"][metric] for r in group]
        tolerance = group[0]["config"]["tolerance"]
        row["feasible"] = sum(r["reports"]["train"]["overall"]["max_psi"] <= tolerance for r in group) / len(group)
        if judged_min_count:
            for split in ("train", "test"):
                row[f"{split} max ψ, n ≥ {judged_min_count}"] = [
                    DisparityReport.from_dict(r["reports"][split]).max_psi_among(min_count=judged_min_count)
                    for r in group
                ]
            judged = row[f"train max ψ, n ≥ {judged_min_count}"]
            row["feasible_judged"] = sum(value <= tolerance for value in judged) / len(group)
        tracked = [r["log"][-1]["never_feasible"] for r in group if "never_feasible" in r["log"][-1]]
        if tracked:  # constrained methods: which groups were violated at every check, over how many seeds
            row["never_feasible"] = {"seeds": len(tracked), "groups": never_feasible_counts(tracked)}
        # Times only against NFT cells of the same seed and dense model: another dense model means another machine.
        shared = {dense[id(r)] for r in group} & {dense[id(r)] for r in nft}
        if shared:
            timed, nft_timed = ([r for r in rows_of if dense[id(r)] in shared] for rows_of in (group, nft))
            row["epoch_time_vs_nft"] = statistics.mean(map(_step_seconds, timed)) / statistics.mean(
                map(_step_seconds, nft_timed)
            )
            row["epoch_time_seeds"] = sorted({seed for seed, _ in shared})
        rows.append(row)
    return rows


def _dense_accuracies(result: dict[str, Any]) -> tuple[float, float]:
    """A cell's dense model's train and test accuracy (what tells dense models apart in cells without a digest)."""
    train, test = (result["reports"][split]["overall"]["dense_accuracy"] for split in ("train", "test"))
    return train, test


def dense_model_keys(results: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """Each cell's ``(seed, dense model)``, in the order of ``results``.

    The dense model is the cell's ``dense_weights`` digest (``weights_digest`` of the model it started
    from, recorded from its introduction on). Cells from before then are told apart by their dense train
    and test accuracy: such a cell joins the digest of the recorded cells with its seed and accuracies when
    there is exactly one, else it is its own model named by those accuracies.
    """
    digests: dict[tuple[int, tuple[float, float]], set[str]] = {}
    for result in results:
        if "dense_weights" in result:
            key = (result["config"]["seed"], _dense_accuracies(result))
            digests.setdefault(key, set()).add(result["dense_weights"])
    keys = []
    for result in results:
        seed, accuracies = result["config"]["seed"], _dense_accuracies(result)
        known = digests.get((seed, accuracies), set())
        if "dense_weights" in result:
            keys.append((seed, result["dense_weights"]))
        elif len(known) == 1:
            keys.append((seed, next(iter(known))))
        else:
            keys.append((seed, f"dense train/test accuracy {accuracies[0]!r}/{accuracies[1]!r}"))
    return keys


def dense_models_per_seed(results: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """The seeds whose cells ran on more than one dense model -> each model's dense accuracies and cells.

    Dense models are told apart by ``dense_model_keys`` (the recorded weights digest, else the dense
    accuracies). A cell is its ``(sparsity, method)``; a model also lists the dense checkpoints its cells
    name (file stems: the dense key), the weights digests (``dense_weights``, where recorded) and the
    machines they record (``versions.machine``, where recorded). Models are in the order of their first
    cell. A dense model is trained once per ``runs/<grid>/dense`` folder (not committed), so cells run on
    another machine train it anew: see benchmarks/README.md.
    """
    by_seed: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for result, (seed, key) in zip(results, dense_model_keys(results), strict=True):
        by_seed.setdefault(seed, {}).setdefault(key, []).append(result)
    return {
        seed: [_dense_model(cells) for cells in models.values()]
        for seed, models in sorted(by_seed.items())
        if len(models) > 1
    }


def _dense_model(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """One entry of ``dense_models_per_seed``: the model's dense accuracies and what its cells record."""
    train, test = _dense_accuracies(cells[0])
    return {
        "train_dense_accuracy": train,
        "test_dense_accuracy": test,
        "cells": [(r["config"]["sparsity"], r["config"]["method"]) for r in cells],
        "dense_checkpoints": sorted({Path(r["dense_checkpoint"]).stem for r in cells if "dense_checkpoint" in r}),
        "dense_weights": sorted({r["dense_weights"] for r in cells if "dense_weights" in r}),
        "machines": sorted({r["versions"]["machine"] for r in cells if "machine" in r.get("versions", {})}),
    }


def dense_model_parts(
    models: list[dict[str, Any]], *, names: dict[str, str] | None = None, detail: bool = True
) -> list[str]:
    """One phrase per dense model of a seed (a ``dense_models_per_seed`` value): its cells and its test accuracy.

    ``names`` maps methods to display names (default: the method ids); with ``detail`` a phrase also names
    the model's checkpoints and weights digests (the grid pages; the README leaves them out).
    """
    parts = []
    for model in models:
        cells_text = ", ".join(f"{(names or {}).get(m, m)} {100 * sparsity:g}%" for sparsity, m in model["cells"])
        part = f"{cells_text} from a dense model of test accuracy {100 * model['test_dense_accuracy']:.2f}"
        if detail:
            recorded = [*model.get("dense_checkpoints", []), *(f"weights {d}" for d in model.get("dense_weights", []))]
            part += f" ({', '.join(recorded) or 'checkpoint not recorded'})"
        parts.append(part)
    return parts


def _dense_models_text(per_seed: dict[int, list[dict[str, Any]]]) -> str:
    """Markdown note on the seeds whose cells started from different dense models (empty when none did)."""
    if not per_seed:
        return ""
    lines = [
        "",
        "Seeds whose cells started from different dense models (benchmarks/README.md says when that happens). "
        "Each cell's ψ is measured against its own dense model; accuracies across these cells differ by the dense "
        "models' differences too, and their epoch times are not compared:",
        "",
    ]
    lines += [f"- seed {seed}: " + "; ".join(dense_model_parts(models)) for seed, models in per_seed.items()]
    return "\n".join(lines) + "\n"


def never_feasible_counts(tracked: list[list[str]]) -> dict[str, int]:
    """Each never-feasible group -> on how many seeds, most seeds first, ties in the order the logs name them.

    (Ties used to follow a set's order, which changes with Python's string hashing from one run to the next.)
    """
    counts = Counter(name for names in tracked for name in names)  # first-seen order, kept by the stable sort
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _never_feasible_text(row: dict[str, Any]) -> str:
    """Groups whose constraint was violated at every epoch-end check, with their seed counts."""
    if "never_feasible" not in row:
        return "–"
    seeds, groups = row["never_feasible"]["seeds"], row["never_feasible"]["groups"]
    shown = [f"{short_name(name)} ({count}/{seeds})" for name, count in list(groups.items())[:5]]
    more = f" and {len(groups) - 5} more" if len(groups) > 5 else ""
    return ", ".join(shown) + more or "none"


def short_name(group: str) -> str:
    """``"race=Indian, gender=male"`` -> ``"Indian/male"``."""
    return "/".join(part.split("=")[-1] for part in group.split(", "))


def _failures_text(failed: list[dict[str, Any]]) -> str:
    """Markdown list of the cells whose training diverged (empty when none did)."""
    if not failed:
        return ""
    lines = ["", "Cells whose training diverged (no row above; the run stopped at the first non-finite loss):", ""]
    lines += [f"- `{f['run']}`: {f['failed']}" for f in failed]
    return "\n".join(lines) + "\n"


def markdown(
    name: str, grid: dict[str, Any], rows: list[dict[str, Any]], command: str, cells_done: int, seconds: float = 0.0
) -> str:
    """The grid's markdown table."""
    base = grid["base"]
    config = ExperimentConfig.from_dict(base)
    lines = [
        f"# Grid `{name}`",
        "",
        f"Task {base['task']}, target {base.get('target')}, groups {' × '.join(base.get('protected', ()))} "
        f"({config.group_mode}); model {config.model} at {config.image_size} px; dense {config.dense_epochs} "
        f"epochs; gradual magnitude pruning over {config.prune_epochs} epochs, then {config.finetune_epochs} "
        f"fine-tuning epochs; {_tuning_text(name, grid, config)} Mean ± std over seeds, in accuracy points; "
        "'feasible' is the fraction of seeds with train max ψ ≤ ε; 'epoch time' is the "
        "training loop's time per fine-tuning epoch relative to NFT of the same seeds and dense models, from "
        "cells run one after another: it "
        "moves with the machine's load (benchmarks/overhead.py has the controlled, side-by-side step ratio). "
        "'Never feasible in training' lists the groups whose constraint was violated at every epoch-end check "
        "of the fine-tuning (count of seeds; – where the cell predates this record or has no constraints).",
        "",
        f"{cells_done} cell(s), {seconds / 60:.0f} min of wall time in all on 2 CPU cores (sum of the cells' own "
        "times, dense training included where a cell trained its dense model; longer while other jobs shared the "
        "cores). Produced by:",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    judged = grid.get("judged_min_count", 0)
    names = [c[2] for c in COLUMNS]
    if judged:
        names += [f"train max ψ, n ≥ {judged}", f"test max ψ, n ≥ {judged}"]
        lines[2] += (
            f" Columns 'n ≥ {judged}' count only the groups with at least {judged} samples in that split (the "
            f"groups whose ψ a {100 * config.tolerance:g}-point tolerance can resolve); 'feasible, n ≥ {judged}' "
            "is the fraction of seeds with that train max ψ ≤ ε."
        )
    lines += [
        "| sparsity | method | seeds | "
        + " | ".join(names)
        + " | feasible | "
        + (f"feasible, n ≥ {judged} | " if judged else "")
        + "epoch time vs NFT | never feasible in training |",
        "|---:|---|---:|" + "---:|" * len(names) + "---:|" * (2 + bool(judged)) + "---|",
    ]
    for row in rows:
        feasible = [row["feasible"], *([row["feasible_judged"]] if judged else [])]
        time_text = f"{row['epoch_time_vs_nft']:.2f}×" if "epoch_time_vs_nft" in row else "–"
        values = [mean_std(row[name]) for name in names] + [f"{100 * f:.0f}%" for f in feasible] + [time_text]
        lines.append(
            f"| {100 * row['sparsity']:.0f}% | {row['method']} | {len(row['seeds'])} | {' | '.join(values)} "
            f"| {_never_feasible_text(row)} |"
        )
    return "\n".join(lines) + "\n"


def _without_run_filters(argv: list[str]) -> list[str]:
    """The command that reproduces the whole grid: ``--no-run`` and the ``--only-*`` filters dropped."""
    kept: list[str] = []
    skipping = False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg in ("--no-run", "--only-methods", "--only-sparsities")
            if skipping:
                continue
        elif skipping:
            continue
        kept.append(arg)
    return kept


def _selected_now(config: ExperimentConfig, methods: list[str] | None, sparsities: list[float] | None) -> bool:
    """Whether a not-yet-finished cell is run in this invocation (``--only-*`` put a grid's cells in an order)."""
    return (methods is None or config.method in methods) and (sparsities is None or config.sparsity in sparsities)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run (or resume) a grid and write its aggregate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the grid's seeds")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="where <grid>.json/.md go")
    parser.add_argument("--runs", type=Path, default=None, help="dense checkpoints and per-cell JSON")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--no-run", action="store_true", help="only aggregate the cells already finished")
    parser.add_argument(
        "--only-methods", nargs="+", default=None, help="run only these methods now (others: reuse finished cells)"
    )
    parser.add_argument(
        "--only-sparsities", type=float, nargs="+", default=None, help="run only these sparsities now (same rule)"
    )
    args = parser.parse_args(argv)
    grid = GRIDS[args.grid]
    if args.data_dir:
        grid = {**grid, "base": {**grid["base"], "data_dir": args.data_dir}}
    runs = args.runs or RUNS_DIR / args.grid
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "benchmarks/run_grid.py", *_without_run_filters(given)])
    configs = cells(grid, runs, args.seeds)
    task = None
    results: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for index, config in enumerate(configs, start=1):
        path = runs / "results" / f"{config.run_name()}.json"
        if not path.exists() and (args.no_run or not _selected_now(config, args.only_methods, args.only_sparsities)):
            continue
        if path.exists():
            result = json.loads(path.read_text())
            if result.get("data_fingerprint") is not None:  # cells from before it was recorded: trusted
                task = task or load_task(config)
                if result["data_fingerprint"] != data_fingerprint(task):
                    raise SystemExit(
                        f"{path} was computed on other data (fingerprint {result['data_fingerprint']}, this data "
                        f"{data_fingerprint(task)}); move it away or pass --runs to another folder."
                    )
            print(f"[{index}/{len(configs)}] {config.run_name()}: done before, reused", flush=True)
        else:
            started = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    task = task or load_task(config)
                    result = run_experiment(config, task=task, progress=False, resume=True)
            except NonFiniteError as error:
                # A method that diverges is a result, not a crash of the grid: record it and go on.
                result = record_failure(config, error, path)
            print(f"[{index}/{len(configs)}] {config.run_name()}: {time.perf_counter() - started:.0f} s", flush=True)
        (failed if "failed" in result else results).append(result)
        args.output.mkdir(parents=True, exist_ok=True)
        rows = aggregate(results, grid.get("judged_min_count", 0))
        kept = ("run", "config", "versions", "dense_weights", "sparsity", "reports", "log", "timings_s")
        payload = {
            "grid": args.grid,
            "command": command,
            "settings": {**asdict(configs[0]), "output_dir": portable_path(configs[0].output_dir)},
            "rows": rows,
        }
        payload["cells"] = [_compact_reports({k: r[k] for k in kept if k in r}) for r in results]
        payload["failed"] = failed
        payload["dense_models"] = dense_models_per_seed(results)
        (args.output / f"{args.grid}.json").write_text(json.dumps(payload, indent=1) + "\n")
        seconds = sum(r["timings_s"]["total"] for r in results)
        text = markdown(args.grid, grid, rows, command, len(results), seconds)
        text += _dense_models_text(payload["dense_models"]) + _failures_text(failed)
        (args.output / f"{args.grid}.md").write_text(text)
    if results or failed:
        print((args.output / f"{args.grid}.md").read_text())
    return results


if __name__ == "__main__":
    main()
