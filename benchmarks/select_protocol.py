"""Choose CEAG's fine-tuning options (issue #13) for a grid's task without reading its test split.

Every candidate runs in the pipeline's *validation* mode (``ExperimentConfig.validation``): the
dense model and the fine-tuning see a group-stratified 80% of the training split (the "fitted"
part: the data the constraints are estimated on) and the other 20% is scored as if it were the
test split. NFT runs on the same splits with the same schedule.

Rule, fixed before any run (``_protocols.RULE``): a candidate is *accurate enough* when its mean validation
accuracy over the seeds is within ``--accuracy-slack`` (1 point) of NFT's. Order the candidates
by (accurate enough first, then the most seeds whose final model has max ψ ≤ ε on the fitted part
in eval mode, then the smallest mean validation max ψ) and take the first. ε is the requirement
(1 point), not a knob. A selection may break that last tie by the smallest mean fitted max ψ
instead (``_protocols.SLACK_RULE``: the 10-group grid's rounds 3-4, where the target judges the training data).

    python benchmarks/select_protocol.py --grid utk_race_12ep               # ~35 min on 2 cores
    python benchmarks/select_protocol.py --grid quick --output /tmp/s --seeds 0   # seconds (tests)
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _protocols import CANDIDATES, PLAIN_SELECTION, SELECTIONS, page_stem, selection_of
from _selection import GRIDS as GRIDS  # the grids, for callers of this script (tests)
from _selection import CellRunner, base_config, command, page, parser, scores, write

from ceag_cooper.experiments import ExperimentConfig, load_task


def summarize(
    name: str, results: list[dict[str, Any]], tolerance: float, selection: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Per-seed scores and their means for one candidate (max ψ over large enough groups, if the selection says)."""
    selection = selection or PLAIN_SELECTION
    per_seed = [scores(r, selection["fit_min_count"], selection["validation_min_count"]) for r in results]
    row: dict[str, Any] = {"name": name, "seeds": [r["config"]["seed"] for r in results], "per_seed": per_seed}
    for key in per_seed[0]:
        row[key] = statistics.mean(s[key] for s in per_seed)
    row["fit_feasible_seeds"] = sum(s["fit_max_psi"] <= tolerance for s in per_seed)
    row["final_iterates"] = [r.get("final_iterate", "diverged" if "failed" in r else "last") for r in results]
    return row


TIE_BREAKS = {"validation_max_psi": "RULE", "fit_max_psi": "SLACK_RULE"}  # rules of _protocols.py
"""The scores the rule's last step may minimize, and the rule that minimizes each."""


def _checked_tie_break(tie_break: str) -> str:
    """``tie_break`` if it is one of ``TIE_BREAKS``, else a ValueError naming them."""
    if tie_break not in TIE_BREAKS:
        choices = " or ".join(f"{score!r} ({rule})" for score, rule in TIE_BREAKS.items())
        raise ValueError(f"tie_break {tie_break!r}: use {choices}")
    return tie_break


def round_reasons(selection: dict[str, Any]) -> tuple[str, ...]:
    """Why each round after the first was added: ``"round_reason"``, one text for all or one per later round.

    A selection with later rounds and no reason for each of them is an error (raised before any run).
    """
    later = len(selection.get("rounds", [])[1:])
    reasons = selection.get("round_reason", ())
    reasons = (reasons,) * later if isinstance(reasons, str) else tuple(reasons)
    if len(reasons) != later:
        raise ValueError(f"a selection with {later} later round(s) needs as many round_reason texts, got {reasons!r}")
    return reasons


def choose(
    rows: list[dict[str, Any]], nft_accuracy: float, slack: float, *, tie_break: str = "validation_max_psi"
) -> dict[str, Any]:
    """The documented rule (``_protocols.RULE``; ``_protocols.SLACK_RULE`` with ``tie_break="fit_max_psi"``)."""
    _checked_tie_break(tie_break)
    return min(
        rows,
        key=lambda r: (
            r["validation_accuracy"] < nft_accuracy - slack,
            -r["fit_feasible_seeds"],
            math.inf if math.isnan(r[tie_break]) else r[tie_break],  # nan: no group counted
        ),
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the candidates (finished ones are reused) and write ``select_protocol_<grid>.{json,md}``."""
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the selection's, else 0 1")
    everything = sorted({*CANDIDATES, *(name for s in SELECTIONS.values() for name in s["candidates"])})
    options.add_argument("--candidates", nargs="+", default=None, choices=everything, help="default: the grid's")
    options.add_argument(
        "--selection", choices=sorted(SELECTIONS), default=None, help="default: the grid's (an earlier one: rerun it)"
    )
    given, cmd = command("select_protocol.py", argv)
    args = options.parse_args(given)
    selection = SELECTIONS[args.selection] if args.selection else selection_of(GRIDS[args.grid])
    tie_break = _checked_tie_break(selection.get("tie_break", "validation_max_psi"))  # before any run
    reasons = round_reasons(selection)  # before any run too
    candidates = selection["candidates"]
    names = args.candidates if args.candidates is not None else list(candidates)
    unknown = [name for name in names if name not in candidates]
    if unknown:
        options.error(f"grid {args.grid!r} has no candidate(s) {unknown}; its candidates: {sorted(candidates)}")
    if args.accuracy_slack is None:
        args.accuracy_slack = selection["accuracy_slack"]
    if args.seeds is None:
        args.seeds = selection.get("seeds", (0, 1))
    base = base_config(args)
    plan = {"NFT": {"method": "nft"}, **{name: {"method": "ceag", **candidates[name]} for name in names}}
    run, results = CellRunner(load_task), {name: [] for name in plan}
    for seed in args.seeds:  # seeds outermost: one dense model per seed
        for name, overrides in plan.items():
            config = ExperimentConfig.from_dict({**base, **overrides, "seed": seed})
            results[name].append(run(config, f"{name}, seed {seed}"))
    tolerance = results["NFT"][0]["config"]["tolerance"]
    nft = summarize("NFT", results.pop("NFT"), tolerance, selection)
    rows = [summarize(name, runs, tolerance, selection) for name, runs in results.items()]
    chosen = choose(rows, nft["validation_accuracy"], args.accuracy_slack, tie_break=tie_break)
    rule = selection["rule"]
    payload = {"grid": args.grid, "command": cmd, "rule": rule, "tie_break": tie_break, "tolerance": tolerance,
               "accuracy_slack": args.accuracy_slack, "settings": {k: base[k] for k in ("sparsity", "validation")},
               "seeds": list(args.seeds), "candidates_overrides": {n: candidates[n] for n in names}, "nft": nft,
               "candidates": rows, "chosen": chosen["name"]}  # fmt: skip
    table = [
        "| run | settings | validation acc | validation max ψ | fitted acc | fitted max ψ | fitted max ψ ≤ ε |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in [nft, *rows]:
        mark = " **(chosen)**" if row is chosen else ""
        settings = ", ".join(f"{k}={v}" for k, v in candidates.get(row["name"], {}).items()) or "–"
        table.append(
            f"| {row['name']}{mark} | {settings} | {100 * row['validation_accuracy']:.2f} "
            f"| {100 * row['validation_max_psi']:.2f} | {100 * row['fit_accuracy']:.2f} "
            f"| {100 * row['fit_max_psi']:.2f} | {row['fit_feasible_seeds']}/{len(row['seeds'])} |"
        )
    title = f"CEAG's fine-tuning options for grid `{args.grid}`, chosen on a held-out 20% of the training set"
    intro = (
        f"Sparsity {100 * base['sparsity']:g}%, seeds {', '.join(map(str, args.seeds))}, ε = {100 * tolerance:g} "
        f"point(s); every run has the grid's schedule and returns its feasibility-first iterate. Rule, fixed "
        f"{selection.get('rule_fixed', 'before any run')}: {rule} Means over seeds, accuracy points."
    )
    if tie_break != "validation_max_psi":  # what the plain rule would have chosen, for the record
        plain = choose(rows, nft["validation_accuracy"], args.accuracy_slack)
        intro += f" With RULE's tie-break (the smallest mean validation max ψ) the choice would be {plain['name']}."
    first = selection.get("first_round", 1) + 1
    later_rounds = selection.get("rounds", [])[1:]
    for number, (round_, reason) in enumerate(zip(later_rounds, reasons, strict=True), start=first):
        added = [name for name in names if name in round_]
        if added:
            intro += f" Round {number} ({'; '.join(added)}) was added after {reason}; the rule did not change."
    if "after" in selection:
        intro += f" It follows {selection['after'].format(grid=args.grid)}."
    stem = page_stem(args.grid, selection)
    write(args.output, stem, payload, page(title, intro, cmd, table))
    return payload


if __name__ == "__main__":
    main()
