"""The options every problem shares, and the checks of the references they bring."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, TypedDict

import torch

from ceag_cooper.groups import GroupSpec
from ceag_cooper.metrics.functional import LossFn
from ceag_cooper.metrics.group_metrics import GroupMetrics

__all__ = ["ConstraintEstimate", "ProblemOptions", "check_heldout_references", "check_reference"]

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
