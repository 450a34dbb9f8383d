"""The options every problem shares, and the checks of the references they bring."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, TypedDict

import torch

from ceag_cooper.groups import GroupSpec
from ceag_cooper.metrics.functional import LossFn
from ceag_cooper.metrics.group_metrics import GroupMetrics
from ceag_cooper.problems.distillation import Distillation

__all__ = ["ConstraintEstimate", "ProblemOptions", "check_heldout_references", "check_options", "check_reference"]

ConstraintEstimate = Literal["train", "eval"]
"""Where the multiplier step's statistics come from: the training forward pass (``"train"``) or
one extra no-grad forward of the clean batch with the model in eval mode (``"eval"``)."""


class ProblemOptions(TypedDict, total=False):
    """The keyword options every problem accepts and forwards to :class:`GroupFairnessProblem`.

    Subclasses take them as ``**options: Unpack[ProblemOptions]``, so a new base option is added in
    one place (here and in the base signature; a test keeps the two equal).
    """

    loss_fn: LossFn | None
    start_step: int
    device: torch.device | str | None
    check_finite: bool
    skip_nonfinite: bool
    heldout: Iterable | None
    heldout_reference: GroupMetrics | None
    heldout_spec: GroupSpec | None
    constraint_estimate: ConstraintEstimate
    distillation: Distillation | None


def check_options(
    owner: type,
    *,
    num_groups: int | None,
    reference: GroupMetrics | None,
    start_step: int,
    constraint_estimate: str,
    heldout_reference: GroupMetrics | None,
    heldout_spec: GroupSpec | None,
) -> int:
    """Every check of a problem's shared options; returns the number of groups.

    ``owner`` is the problem class (its ``requires_reference`` and name go into the messages).
    """
    if constraint_estimate not in ("train", "eval"):
        raise ValueError(f"`constraint_estimate` must be 'train' or 'eval', got {constraint_estimate!r}.")
    if reference is None and getattr(owner, "requires_reference", False):
        raise ValueError(
            f"{owner.__name__} needs `reference`: the dense model's GroupMetrics, e.g. "
            "`evaluate_groups(dense_model, train_loader, groups=spec)`."
        )
    num_groups = check_reference(reference, num_groups)
    if num_groups is None:
        raise ValueError("give `num_groups` or `reference` (whose number of groups is used).")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"`num_groups` must be an int >= 1, got {num_groups!r}.")
    if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
        raise ValueError(f"`start_step` must be an int >= 0, got {start_step!r}.")
    check_heldout_references(num_groups, reference, heldout_reference, heldout_spec)
    return num_groups


def check_reference(reference: GroupMetrics | None, num_groups: int | None) -> int | None:
    """The number of groups, checked against ``reference`` (every group must have samples)."""
    if reference is None:
        return num_groups
    if not isinstance(reference, GroupMetrics):
        raise TypeError(f"`reference` must be a GroupMetrics, got {type(reference).__name__}.")
    if num_groups is not None and num_groups != reference.num_groups:
        raise ValueError(
            f"`reference` was computed for {reference.num_groups} groups but `num_groups={num_groups}`; "
            "recompute the reference with the same GroupSpec as the problem."
        )
    empty = (reference.group_count <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"groups {empty[:10]} have zero samples in `reference`: their dense accuracy is undefined. "
            "Drop or merge those groups (fewer attribute values), or use a larger reference set."
        )
    return reference.num_groups


def check_heldout_references(
    num_groups: int, reference: GroupMetrics | None, heldout_reference: GroupMetrics | None, spec: GroupSpec | None
) -> None:
    """The held-out reference and the spec that turns held-out attributes into ids agree with the problem."""
    if heldout_reference is not None and heldout_reference.num_groups != num_groups:
        raise ValueError(f"`heldout_reference` has {heldout_reference.num_groups} groups, the problem {num_groups}.")
    if reference is not None and heldout_reference is not None:
        reference.check_same_groups(heldout_reference, "`reference` and `heldout_reference`")
    for name, metrics in (("reference", reference), ("heldout_reference", heldout_reference)):
        if spec is not None and metrics is not None and metrics.spec not in (None, spec.fingerprint):
            raise ValueError(
                f"`{name}` was computed with another GroupSpec than `heldout_spec` (fingerprints {metrics.spec} "
                f"and {spec.fingerprint}): its group g is not the held-out batches' group g."
            )
