"""The selection protocols of ``select_protocol.py``: candidates, rules and which grid uses which; data only.

A module of its own so that ``run_grid.py`` can name a grid's selection page (``page_stem``) without
importing the selection script, which imports ``run_grid`` (via ``_selection.py``). Not a script.
"""

from __future__ import annotations

from typing import Any


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
UTK_MANY_GROUP_ROUNDS: list[dict[str, dict[str, Any]]] = [
    {  # Round 1, fixed before any run: Adult's choice, Cooper's "auto" step and one between.
        "detached overall, 0.01": {**_DETACHED, **_JUDGED},
        "detached overall, auto": {**_DETACHED, **_JUDGED, "dual_lr": "auto"},
        "detached overall, 0.003": {**_DETACHED, **_JUDGED, "dual_lr": 0.003},
    },
    # Round 2, added after round 1 missed the fitted-part target on validation seed 0 (max psi over the groups
    # of >= 80 fitted samples 4.07 / 7.63 / 6.13 points at auto / 0.003 / 0.01, eps = 2; 0.01 also lost 4.4
    # points of validation accuracy, its multipliers summing to 4-5.5), fixed before seed 1's results: the
    # binding groups are large (e.g. 462 samples), whose 40-sample buffers have a binomial standard error of
    # ~5 points, more than eps, so buffers of 160 (half the noise); and the 10-group grid's choice (nuPI
    # K_P 50, margin 0.5, k = 160) with the step the 90 constraints call for ("auto").
    {
        "detached overall, auto, k 160": {**_DETACHED, **_JUDGED, "dual_lr": "auto", "buffer_size": 160},
        "detached overall, auto, k 160, nuPI K_P 50, margin 0.5": {
            **_DETACHED,
            **_JUDGED,
            "dual_lr": "auto",
            "buffer_size": 160,
            "margin": 0.005,
            "dual_optimizer": "nupi",
            "nupi_kp": 50.0,
            "nupi_ema": 0.9,
        },
    },
    # Round 3, added after round 2's choice (auto, k 160) missed on the 3-seed grid (utk_many_groups_12ep.md:
    # train max psi over the groups of >= 100 samples 3.59 / 3.81 / 5.38, eps = 2), fixed before its runs (same
    # rule). Those cells' logs: the multipliers sum to <= 1.03 with none above 0.11, and both fall from the epoch
    # after the first LR decay while the eval-mode max psi the target judges stays at 3.6-5.7 points: the
    # training-mode buffers (dropout, batch statistics, augmentation) see most constraints as met when the
    # eval-mode model does not. So eval-mode estimates (the 10-group grid's fix for the same gap), at the
    # "auto" step (~0.0011 here: ~0.005 per epoch at a 4-point violation) and two faster ones (0.003, 0.01).
    {
        f"detached overall, {step}, k 160, eval estimates": {
            **_DETACHED,
            **_JUDGED,
            "dual_lr": lr,
            "buffer_size": 160,
            "constraint_estimate": "eval",
        }
        for step, lr in (("auto", "auto"), ("0.003", 0.003), ("0.01", 0.01))
    },
]
UTK_MANY_GROUP_CANDIDATES = _merged(UTK_MANY_GROUP_ROUNDS)
"""Candidates for ``utk_many_groups_12ep`` (90 groups), by round, each fixed before its runs and judged by
``MANY_GROUP_RULE``; every one detaches the overall term, fits buffers to groups smaller than them and
judges its iterate on the groups of >= 80 fitted samples. A cell takes ~5 min on the machine that ran
them (13 on earlier ones), so each round is short."""
UTK_LONG_SCHEDULE_ROUNDS: list[dict[str, dict[str, Any]]] = [
    {"detached overall, auto, k 160": UTK_MANY_GROUP_CANDIDATES["detached overall, auto, k 160"]},
    # Round 2, added after round 1 missed on validation seed 0 (fitted max psi 3.24 over the groups of >= 80
    # samples; NFT 13.22), before seed 1's result. At that cell's end its k = 160 buffers put groups at
    # psi 4.0-4.4 with multipliers of ~1e-4, while the groups its report put highest had buffered psi below 0:
    # a 160-sample estimate has a standard error of ~2.3 points, more than eps. Buffers of 800 (more than
    # any group has), fitted to the groups, read each group's exact eval-mode accuracy over its last pass,
    # the measure the target judges, one pass late. (Noticed after the runs: that report is of the returned
    # iterate, epoch 12, and the buffers are of the last epoch, 19: two models. At epoch 19 the buffered and the
    # eval-mode max psi over those groups were close, 4.4 and 4.6; docs/concepts.md#many-groups.)
    {
        "detached overall, auto, whole-group eval buffers": {
            **UTK_MANY_GROUP_CANDIDATES["detached overall, auto, k 160"],
            "buffer_size": 800,
            "constraint_estimate": "eval",
        }
    },
    # Round 3, added after round 2 missed on both validation seeds (fitted max psi 4.79 / 3.75; round 1 3.24 /
    # 3.61), fixed before its runs (same rule, same gate), with a new option, CEAG(dual_step_scale="share"): each
    # group's multiplier step in proportion to its size (n_g over the mean group size, 169 fitted samples here:
    # x0.6 at 100 samples, x2.7 at 460, x0.04 at 6). What the logs showed: with whole-group eval-mode buffers
    # (exact estimates of what the target judges) the multipliers of the violating large groups (126-462
    # samples, fitted psi 2.3-4.8) stayed at 0.01-0.09 and the model, at LR 0.001 and below for the last 8
    # epochs, did not move them below eps; faster uniform steps (the 12-epoch round 3's 0.003 and 0.01) lost 3.1
    # and 4.7 validation points, the small groups' noisy multipliers growing fastest. A multiplier weighs its
    # group's mean loss next to the overall mean, where the group already counts with its share, so the same
    # re-weighting of a group takes a multiplier in proportion to its size: share-scaled steps move every
    # lambda_g / n_g at one rate. Two base steps, ~2.7 and ~9 times "auto" (so groups of 100 samples get 1.6
    # and 5.3 times auto's step, groups of 20 at most auto's).
    {
        f"share-scaled steps, {lr}, whole-group eval buffers": {
            **UTK_MANY_GROUP_CANDIDATES["detached overall, auto, k 160"],
            "buffer_size": 800,
            "constraint_estimate": "eval",
            "dual_lr": lr,
            "dual_step_scale": "share",
        }
        for lr in (0.003, 0.01)
    },
    # Round 4, added after round 3 missed on both validation seeds (fitted max psi 3.38 / 4.92 at 0.003, 3.71 /
    # 3.69 at 0.01, which also failed the slack), fixed before its runs (same rule, same gate), with a new option,
    # distillation from the dense model in the model step (Distillation; ExperimentConfig.distill_weight).
    # What the measurements showed (benchmarks/results/churn_select_utk_many_groups_long.md): every validation
    # cell's last epoch lost 3.3-7.3% of the fitted samples its dense model got right and gained 1.5-1.7% it got
    # wrong, and a model without disparate impact flipping at those rates has median max psi 3.6-5.0 over the
    # judged groups (chance of eps = 2: 0.02-0.8%); CEAG's cells sit inside that null, so more dual pressure only
    # moves which samples flip. Distillation keeps the dense model's predictions (fewer flips either way), and
    # under CEAG each multiplier then weighs its group's distilled loss, i.e. its agreement with the dense model.
    # Round 1's choice (the best fitted max psi so far) with the soft term at T = 3 (where the unit test's MLP
    # kept more of its dense model's predictions than at T = 1) and two weights.
    {
        f"detached overall, auto, k 160, distilled {weight}": {
            **UTK_MANY_GROUP_CANDIDATES["detached overall, auto, k 160"],
            "distill_weight": weight,
            "distill_temperature": 3.0,
        }
        for weight in (0.5, 0.9)
    },
]
UTK_LONG_SCHEDULE_CANDIDATES = _merged(UTK_LONG_SCHEDULE_ROUNDS)
"""The candidates of ``utk_many_groups_long``, by round, each fixed before its runs. Round 1: the 12-epoch
selection's choice, unchanged, on 16 fine-tuning epochs instead of 8 (NFT too), so that the schedule is the
only change. Rounds 1-3 on the 12-epoch schedule all missed; their validation logs (the iterate judged at
every epoch end on the fitted groups of >= 80 samples) show max psi swinging between 10 and 15 points while
the LR is 0.01 and falling to 4-6 only at the first decay, after which the model has two epochs at LR 0.001
and then too small an LR to move: the dual acts on SGD noise, and the settled phase is too short for it to act
on the violations that remain. 16 epochs double both phases. Judged on 2 validation seeds; the 3-seed grid
runs only if the chosen candidate meets eps on the fitted part of at least one of them."""
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
    "many_groups_utk": {
        "candidates": UTK_MANY_GROUP_CANDIDATES,
        **_MANY_GROUP_SCORING,
        "rounds": UTK_MANY_GROUP_ROUNDS,
        "round_reason": (
            "round 1 missed the fitted-part target on validation seed 0",
            "round 2's choice (detached overall, auto, k 160) missed issue #15's target on the 3-seed grid",
        ),
    },
    "many_groups_utk_long": {
        "candidates": UTK_LONG_SCHEDULE_CANDIDATES,
        **_MANY_GROUP_SCORING,
        "rounds": UTK_LONG_SCHEDULE_ROUNDS,
        "round_reason": (
            "round 1 missed the fitted-part target on validation seed 0 (before seed 1's result)",
            "rounds 1 and 2 missed the fitted-part target on both validation seeds",
            "rounds 1-3 missed the fitted-part target on both validation seeds, and the churn measurements "
            "(churn_select_utk_many_groups_long.md) put their max psi inside a null model without disparate impact",
        ),
        "after": "select_protocol_utk_many_groups_12ep.md (rounds 1-3 on the 12-epoch schedule, none of which met ε "
        "on the fitted part of either validation seed)",
    },
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
(and, where candidates came in rounds, the rounds and why the later ones were added: ``"round_reason"``,
one text for every later round or a tuple of one per later round): the many-groups
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
