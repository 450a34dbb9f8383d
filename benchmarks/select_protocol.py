"""Choose CEAG's fine-tuning options (issue #13) for a grid's task without reading its test split.

Every candidate runs in the pipeline's *validation* mode (``ExperimentConfig.validation``): the
dense model and the fine-tuning see a group-stratified 80% of the training split (the "fitted"
part: the data the constraints are estimated on) and the other 20% is scored as if it were the
test split. NFT runs on the same splits with the same schedule.

Rule, fixed before any run (``RULE``): a candidate is *accurate enough* when its mean validation
accuracy over the seeds is within ``--accuracy-slack`` (1 point) of NFT's. Order the candidates
by (accurate enough first, then the most seeds whose final model has max ψ ≤ ε on the fitted part
in eval mode, then the smallest mean validation max ψ) and take the first. ε is the requirement
(1 point), not a knob. A selection may break that last tie by the smallest mean fitted max ψ
instead (``SLACK_RULE``: the 10-group grid's rounds 3-4, where the target judges the training data).

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

from _selection import GRIDS as GRIDS  # the grids, for callers of this script (tests)
from _selection import CellRunner, base_config, command, page, parser, scores, write

from ceag_cooper.experiments import ExperimentConfig, load_task


def _merged(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One candidate set from rounds of them, in order; a name in two rounds is refused (it would hide one)."""
    names = [name for round_ in rounds for name in round_]
    if len(set(names)) < len(names):
        raise ValueError(
            f"a candidate name repeats across rounds: {sorted(n for n in set(names) if names.count(n) > 1)}"
        )
    return {name: settings for round_ in rounds for name, settings in round_.items()}


CANDIDATES: dict[str, dict[str, Any]] = {
    "train estimates": {"constraint_estimate": "train"},
    "eval estimates": {"constraint_estimate": "eval"},
    "eval, margin 0.5": {"constraint_estimate": "eval", "margin": 0.005},
    "eval, margin 0.5, dual lr 0.03": {"constraint_estimate": "eval", "margin": 0.005, "dual_lr": 0.03},
    "eval, margin 0.5, nuPI": {
        "constraint_estimate": "eval",
        "margin": 0.005,
        "dual_optimizer": "nupi",
        "nupi_kp": 50.0,
        "nupi_ema": 0.9,
    },
}
"""CEAG candidates (overrides of the grid's base, which sets the schedule and the selection of the
final iterate); dual lr 0.01 with SGD unless said otherwise."""
_DETACHED = {"method": "ceag_detach_overall", "dual_lr": 0.01, "fit_buffers_to_groups": True}
"""Round 3's choice, the base of round 4."""
MANY_GROUP_ROUNDS: list[dict[str, dict[str, Any]]] = [
    {  # Round 1, fixed before any run
        "dual lr 0.01": {"dual_lr": 0.01},
        "dual lr auto": {"dual_lr": "auto"},
        "0.01, exact small groups": {"dual_lr": 0.01, "fit_buffers_to_groups": True},
        "auto, exact small groups": {"dual_lr": "auto", "fit_buffers_to_groups": True},
        "0.01, exact small groups, eval estimates": {
            "dual_lr": 0.01,
            "fit_buffers_to_groups": True,
            "constraint_estimate": "eval",
        },
        "detached overall, auto, exact small groups": {
            "method": "ceag_detach_overall",
            "dual_lr": "auto",
            "fit_buffers_to_groups": True,
        },
    },
    {
        # Round 2, added after all six above missed the fitted-part target on both seeds (same rule): larger
        # dual steps (their multipliers were still rising), and the returned iterate judged on the groups the
        # target judges (round 1's logs: "no iterate was feasible" over all 156 groups, set by tiny ones).
        "0.05, exact small groups": {"dual_lr": 0.05, "fit_buffers_to_groups": True},
        "0.2, exact small groups": {"dual_lr": 0.2, "fit_buffers_to_groups": True},
        "0.01, exact small groups, iterate judged on groups >= 80": {
            "dual_lr": 0.01,
            "fit_buffers_to_groups": True,
            "iterate_min_count": 80,
        },
        "0.05, exact small groups, iterate judged on groups >= 80": {
            "dual_lr": 0.05,
            "fit_buffers_to_groups": True,
            "iterate_min_count": 80,
        },
        "0.2, exact small groups, iterate judged on groups >= 80": {
            "dual_lr": 0.2,
            "fit_buffers_to_groups": True,
            "iterate_min_count": 80,
        },
        "detached overall, 0.05, exact small groups, iterate judged on groups >= 80": {
            "method": "ceag_detach_overall",
            "dual_lr": 0.05,
            "fit_buffers_to_groups": True,
            "iterate_min_count": 80,
        },
    },
    {
        # Round 3, added after round 2 (same rule): the grid's 3 seeds showed only 2-4 large groups above ε,
        # by 0.1-2.3 points, with the multipliers summing to 1.6-2.8 (the paper's proxy then weighs the
        # objective negatively): the detached overall term at 0.01, a margin, a smaller dual step.
        "detached overall, 0.01, exact small groups": {
            "method": "ceag_detach_overall",
            "dual_lr": 0.01,
            "fit_buffers_to_groups": True,
        },
        "detached overall, 0.01, exact small groups, margin 0.5": {
            "method": "ceag_detach_overall",
            "dual_lr": 0.01,
            "fit_buffers_to_groups": True,
            "margin": 0.005,
        },
        "0.01, exact small groups, margin 0.5": {"dual_lr": 0.01, "fit_buffers_to_groups": True, "margin": 0.005},
        "0.003, exact small groups": {"dual_lr": 0.003, "fit_buffers_to_groups": True},
    },
    {
        # Round 4, added after round 3 (same rule): the chosen run's feasibility-first iterate was judged over
        # all 156 groups ("no iterate was feasible", set by groups of 10-40 samples) and its largest
        # multipliers were those of tiny groups; the 3-seed grid's large groups above eps were 0.3-1 point over on
        # the training split (its test split was not read), a k = 40
        # estimate has a standard error of ~5.6 points at 85% accuracy, and once the LR decays (epoch 8 on)
        # the integral dual moves too little to react. So: the iterate judged on the target's groups, a
        # margin, nuPI's proportional term, a 3x dual step, larger buffers.
        "detached overall, 0.01, exact small groups, iterate judged on groups >= 80": {
            **_DETACHED,
            "iterate_min_count": 80,
        },
        "detached overall, 0.01, exact small groups, margin 0.5, iterate judged on groups >= 80": {
            **_DETACHED,
            "margin": 0.005,
            "iterate_min_count": 80,
        },
        "detached overall, 0.01, exact small groups, nuPI K_P 50, iterate judged on groups >= 80": {
            **_DETACHED,
            "dual_optimizer": "nupi",
            "nupi_kp": 50.0,
            "nupi_ema": 0.9,
            "iterate_min_count": 80,
        },
        "detached overall, 0.03, exact small groups, iterate judged on groups >= 80": {
            **_DETACHED,
            "dual_lr": 0.03,
            "iterate_min_count": 80,
        },
        "detached overall, 0.01, exact small groups, k 200, iterate judged on groups >= 80": {
            **_DETACHED,
            "buffer_size": 200,
            "iterate_min_count": 80,
        },
    },
]
"""Issue #15's candidates for a many-groups grid (a grid opts in with ``"selection"``), by round: the
dual step size (fixed or Cooper's 10 x primal lr / C), buffers no larger than each group (its exact
estimate instead of repeats), eval-mode estimates, the detached overall term; later rounds were added
after the earlier ones missed (the comments say why); the rule never changed."""
MANY_GROUP_CANDIDATES = _merged(MANY_GROUP_ROUNDS)
_JUDGED = {"fit_buffers_to_groups": True, "iterate_min_count": 80}
LONG_SCHEDULE_CANDIDATES: dict[str, dict[str, Any]] = {
    "detached overall, 0.01": {**_DETACHED, **_JUDGED},
    "detached overall, 0.01, k 200": {**_DETACHED, **_JUDGED, "buffer_size": 200},
    "detached overall, 0.01, k 200, margin 0.5": {**_DETACHED, **_JUDGED, "buffer_size": 200, "margin": 0.005},
    "detached overall, 0.003": {**_DETACHED, **_JUDGED, "dual_lr": 0.003},
    "detached overall, 0.01, nuPI K_P 50": {
        **_DETACHED,
        **_JUDGED,
        "dual_optimizer": "nupi",
        "nupi_kp": 50.0,
        "nupi_ema": 0.9,
    },
    "paper's proxy, 0.01": {"dual_lr": 0.01, **_JUDGED},
}
"""Candidates for ``adult_many_groups_long`` (fixed before its runs), every one with exact estimates
for the groups smaller than the buffer and its iterate judged on the groups of >= 80 fitted samples:
rounds 1-4 on the 12-epoch schedule all missed, and their logs showed why no dual setting could fix it
there: ~100 steps per epoch and the LR decayed after 4 constrained epochs (~400 steps), so a multiplier
at a 1-point violation grew by ~0.04 in all. The long grid fine-tunes 32 epochs (NFT too)."""
UTK_MANY_GROUP_CANDIDATES: dict[str, dict[str, Any]] = {
    "detached overall, 0.01": {**_DETACHED, **_JUDGED},
    "detached overall, auto": {**_DETACHED, **_JUDGED, "dual_lr": "auto"},
    "detached overall, 0.003": {**_DETACHED, **_JUDGED, "dual_lr": 0.003},
}
"""Candidates for ``utk_many_groups_12ep`` (90 groups), fixed before its runs: Adult's choice, Cooper's
"auto" step (1.1e-3 at 90 constraints; select_utk_many_groups.md chose 1e-3 under the first protocol)
and one between. Each cell takes ~13 min, so the list is short."""
RACE_GENDER_ROUNDS: list[dict[str, dict[str, Any]]] = [
    {
        "train estimates": {"constraint_estimate": "train"},
        "buffers of 160": {"buffer_size": 160},
        "buffers of 160, margin 0.5": {"buffer_size": 160, "margin": 0.005},
        "eval, buffers of 160, margin 0.5": {"constraint_estimate": "eval", "buffer_size": 160, "margin": 0.005},
        "eval, margin 0.5, dual lr 0.03": {"constraint_estimate": "eval", "margin": 0.005, "dual_lr": 0.03},
    },
    # Round 2, added after round 1's choice (buffers of 160) missed on the full grid (same rule): train max ψ
    # 1.32 / 1.56 / 0.82 on its 3 seeds; its logs halve the buffers' noise (median swing of a group's
    # violation between epoch ends 2.6 points, 5.5 at k = 40) while no multiplier passes 0.11 and the binding
    # groups' eval-mode ψ stays at 1.3-1.6 points: the dual now reacts too little, so faster duals at k = 160.
    {
        "buffers of 160, dual lr 0.03": {"buffer_size": 160, "dual_lr": 0.03},
        "buffers of 160, dual lr 0.1": {"buffer_size": 160, "dual_lr": 0.1},
        "buffers of 160, margin 0.5, nuPI": {
            "buffer_size": 160,
            "margin": 0.005,
            "dual_optimizer": "nupi",
            "nupi_kp": 50.0,
            "nupi_ema": 0.9,
        },
    },
]
RACE_GENDER_CANDIDATES = _merged(RACE_GENDER_ROUNDS)
"""Candidates for a selection of its own on ``utk_race_by_race_gender_12ep`` (10 groups), by round, each
fixed before its runs and judged by ``RULE``. Round 1 came after utk_race's choice (the first one) missed there: train
max ψ 1.12 and 1.46 on seeds 0 and 1 (ε = 1). Those cells' logs: at every epoch end the 40-sample buffers'
violations span about −15 to +10 points across the groups, one group's value swinging by as much
between epochs (a binomial standard error of ~5 points at k = 40), and no multiplier passes 0.07.
Larger buffers (160: a quarter of the smallest group's fitted part) cut that noise in half; the
margin and the faster dual are the strongest of utk_race's candidates on the fitted part.
The grid opts in with ``"selection": "race_gender_12ep"``."""
_RULE_ORDER = (
    "accurate enough (mean validation accuracy within the slack, 1 point, of NFT's) first; then the most seeds "
    "whose final model has max ψ ≤ ε on the fitted 80% (eval mode); then "
)
RULE = _RULE_ORDER + "the smallest mean validation max ψ."
SLACK_RULE = _RULE_ORDER + "the smallest mean max ψ on the fitted 80% (the most slack where the target judges)."
RACE_GENDER_TWO_SEED_ROUNDS: list[dict[str, dict[str, Any]]] = [
    {
        name: RACE_GENDER_CANDIDATES[name]
        for name in ("buffers of 160, margin 0.5, nuPI", "buffers of 160, margin 0.5", "buffers of 160, dual lr 0.03")
    },
    # Round 4, added after none of round 3 met ε on the fitted part of validation seed 1 (same rule). Their
    # logs: no multiplier passed 0.13 at SGD 0.01 or nuPI, 0.3 at SGD 0.03 (at a 1-3 point violation an SGD
    # step of 0.01 adds ~3e-4), so the proxy's weight on the worst group stayed within ~10-30% of the
    # others'; the one faster dual (SGD 0.1, round 2) summed its multipliers to 1.39 in its first
    # constrained epoch, turning the overall term's weight 1 - Σλ negative, and collapsed (the many-groups
    # failure of issue #15; a slower cell passed 1.04 for one epoch without collapsing). The detached
    # overall term (CEAG(detach_overall=True)) removes that sign flip, so a fast dual can act; eval-mode
    # estimates remove the gap the logs show between the buffered (training-mode) and the reported ψ.
    {
        "detached overall, buffers of 160, dual lr 0.1": {
            "method": "ceag_detach_overall",
            "buffer_size": 160,
            "dual_lr": 0.1,
        },
        "detached overall, eval, buffers of 160, dual lr 0.1": {
            "method": "ceag_detach_overall",
            "constraint_estimate": "eval",
            "buffer_size": 160,
            "dual_lr": 0.1,
        },
    },
]
RACE_GENDER_TWO_SEEDS = _merged(RACE_GENDER_TWO_SEED_ROUNDS)
"""Rounds 3 and 4 of the 10-group selection, each fixed before its runs: rounds 1-2 judged one validation
seed, on which nearly every candidate met ε on the fitted part, so the tie-break (validation max ψ)
decided, and it did not predict the full grid: the choice (buffers of 160) had fitted max ψ 0.86 on
validation seed 0 and 1.32 on the full grid's seed 0. Issue #13 judges the training data, so round 3
keeps the three candidates with the most slack there on seed 0 (fitted max ψ 0.64, 0.75, 0.76; the
others 0.86 and above), judges them on two validation seeds (0 and 1) and breaks ties by the fitted
max ψ (``SLACK_RULE``); round 4 (the comment above it) is judged the same way."""
MANY_GROUP_RULE = (
    "accurate enough (mean validation accuracy within the slack, 2 points, of NFT's) first; then the most seeds "
    "whose final model has max ψ ≤ ε, in eval mode on the fitted 80%, over the groups with at least 80 samples "
    "there (100 in the whole training split: the groups issue #15's target judges); then the smallest mean "
    "validation max ψ over the groups with at least 20 validation samples."
)


PLAIN_SELECTION: dict[str, Any] = {"candidates": CANDIDATES, "rule": RULE, "accuracy_slack": 0.01,
                                   "fit_min_count": None, "validation_min_count": None}  # fmt: skip
"""The selection of a grid without a ``"selection"`` key: ``CANDIDATES`` judged by ``RULE`` on every group."""
_MANY_GROUP_SCORING = {"rule": MANY_GROUP_RULE, "accuracy_slack": 0.02, "fit_min_count": 80, "validation_min_count": 20}
SELECTIONS: dict[str, dict[str, Any]] = {
    "many_groups": {
        "candidates": MANY_GROUP_CANDIDATES,
        **_MANY_GROUP_SCORING,
        "rounds": MANY_GROUP_ROUNDS,
        "round_reason": "the earlier rounds missed the fitted-part target on both seeds",
    },
    "many_groups_long": {"candidates": LONG_SCHEDULE_CANDIDATES, **_MANY_GROUP_SCORING},
    "many_groups_utk": {"candidates": UTK_MANY_GROUP_CANDIDATES, **_MANY_GROUP_SCORING},
    "race_gender_12ep": {
        **PLAIN_SELECTION,
        "candidates": RACE_GENDER_CANDIDATES,
        "rounds": RACE_GENDER_ROUNDS,
        "round_reason": "round 1's choice met the fitted-part target but missed issue #13's on the full grid",
    },
    "race_gender_12ep_two_seeds": {
        **PLAIN_SELECTION,
        "candidates": RACE_GENDER_TWO_SEEDS,
        "rounds": RACE_GENDER_TWO_SEED_ROUNDS,
        "first_round": 3,
        "round_reason": "none of round 3 met ε on the fitted part of both validation seeds",
        "rule": SLACK_RULE,
        "tie_break": "fit_max_psi",
        "seeds": (0, 1),
        "page": "select_protocol_{grid}_two_seeds",
        "rule_fixed": "after rounds 1-2's seed-0 runs and before any seed-1 result (round 3's seed-0 cells are theirs)",
        "after": "select_protocol_{grid}.md (rounds 1-2: its choice, buffers of 160, missed on the full grid)",
    },
}
"""A grid's ``"selection"`` -> its candidates, rule, accuracy slack and the group sizes its scores count
(and, where candidates came in rounds, the rounds and why the later ones were added): the many-groups
sets are judged by ``MANY_GROUP_RULE`` (groups with enough samples), the others by ``RULE`` or
``SLACK_RULE``. Optional: ``"tie_break"`` (the score the rule's last step minimizes; default the
validation max ψ), ``"seeds"`` (the default ``--seeds``), ``"first_round"`` (the number of its first
round, where it continues an earlier selection's rounds), ``"after"`` (the earlier selection it
follows, named on its page), ``"rule_fixed"`` (when its rule was fixed, if not before any run) and
``"page"`` (its results' file stem, ``{grid}`` filled in; default ``select_protocol_{grid}``; run_grid.py's
``selection_page`` reads it from here)."""


def selection_of(grid: dict[str, Any]) -> dict[str, Any]:
    """A grid's selection (``SELECTIONS[grid["selection"]]``, else ``PLAIN_SELECTION``)."""
    return SELECTIONS[grid["selection"]] if "selection" in grid else PLAIN_SELECTION


def page_stem(grid: str, selection: dict[str, Any]) -> str:
    """The file stem of a selection's results for ``grid`` (``run_grid.selection_page`` names it in tables)."""
    return selection.get("page", "select_protocol_{grid}").format(grid=grid)


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


TIE_BREAKS = {"validation_max_psi": "RULE", "fit_max_psi": "SLACK_RULE"}
"""The scores the rule's last step may minimize, and the rule that minimizes each."""


def _checked_tie_break(tie_break: str) -> str:
    """``tie_break`` if it is one of ``TIE_BREAKS``, else a ValueError naming them."""
    if tie_break not in TIE_BREAKS:
        choices = " or ".join(f"{score!r} ({rule})" for score, rule in TIE_BREAKS.items())
        raise ValueError(f"tie_break {tie_break!r}: use {choices}")
    return tie_break


def choose(
    rows: list[dict[str, Any]], nft_accuracy: float, slack: float, *, tie_break: str = "validation_max_psi"
) -> dict[str, Any]:
    """The documented rule (``RULE``; ``SLACK_RULE`` with ``tie_break="fit_max_psi"``)."""
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
    for number, round_ in enumerate(selection.get("rounds", [])[1:], start=selection.get("first_round", 1) + 1):
        added = [name for name in names if name in round_]
        if added:
            intro += (
                f" Round {number} ({'; '.join(added)}) was added after {selection['round_reason']}; "
                "the rule did not change."
            )
    if "after" in selection:
        intro += f" It follows {selection['after'].format(grid=args.grid)}."
    stem = page_stem(args.grid, selection)
    write(args.output, stem, payload, page(title, intro, cmd, table))
    return payload


if __name__ == "__main__":
    main()
