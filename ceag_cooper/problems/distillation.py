"""Distillation from the dense model in the model step: a sparse model that keeps its dense model's predictions.

Issue #15's measurements (``benchmarks/churn.py``) showed that a pruned model's group accuracy gaps
follow its *churn*, the samples it flips against its dense model either way, more than its net
accuracy loss. Distilling the dense model's outputs into the sparse one during fine-tuning
(Hinton et al., 2015) is the standard way to keep those predictions; here it is one problem option,
so every method (NFT included) can use it and the constraints' proxies see the distilled loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ceag_cooper.metrics.functional import LossFn

__all__ = ["Distillation", "check_distillation_settings", "distillation_loss"]


def check_distillation_settings(
    weight: object, temperature: object, *, names: tuple[str, str] = ("weight", "temperature")
) -> tuple[float, float]:
    """``(weight, temperature)`` as floats, checked: a weight in ``[0, 1]``, a finite temperature > 0.

    ``names`` are the arguments' names in the messages (``ExperimentConfig`` calls them ``distill_*``).

    Example:
        >>> check_distillation_settings(1, 3)
        (1.0, 3.0)
    """
    for name, value in zip(names, (weight, temperature), strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    if not 0 <= weight <= 1:
        raise ValueError(f"`{names[0]}` must be in [0, 1], got {weight}.")
    if temperature <= 0:
        raise ValueError(f"`{names[1]}` must be > 0, got {temperature}.")
    return float(weight), float(temperature)


def distillation_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    weight: float,
    temperature: float,
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    r"""Per-sample ``(1 - weight) * loss_fn(logits, targets) + weight * T^2 * KL(p_teacher^T || p^T)``.

    :math:`p^T` is the softmax of the logits divided by the temperature ``T``; the :math:`T^2`
    factor keeps the soft term's gradient on the scale of the hard one's (Hinton et al., 2015).
    The teacher's logits are treated as constants.

    Args:
        logits: ``(N, C)`` outputs of the model being trained.
        teacher_logits: ``(N, C)`` outputs of the teacher on the same samples.
        targets: ``(N,)`` class indices.
        weight: the soft term's weight, in ``[0, 1]``.
        temperature: ``T > 0``.
        loss_fn: the hard term (default cross-entropy), per sample.

    Returns:
        ``(N,)`` losses.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> same = distillation_loss(logits, logits, torch.tensor([0, 1]), weight=1.0, temperature=2.0)
        >>> same.abs().max() < 1e-6  # a student that matches its teacher has no soft loss
        tensor(True)
    """
    if teacher_logits.shape != logits.shape:
        raise ValueError(
            f"the teacher's logits have shape {tuple(teacher_logits.shape)}, the model's {tuple(logits.shape)}: "
            "the teacher must see the same batch and have the same classes."
        )
    if teacher_logits.device != logits.device:
        raise ValueError(
            f"the teacher's logits are on {teacher_logits.device}, the model's on {logits.device}: move the teacher "
            "to the model's device (e.g. teacher.to(device))."
        )
    hard = loss_fn(logits, targets) if loss_fn is not None else F.cross_entropy(logits, targets, reduction="none")
    log_student = F.log_softmax(logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach().to(logits.dtype) / temperature, dim=1)
    teacher = log_teacher.exp()  # a class the teacher rules out (logit -inf) adds 0, not 0 * inf = nan
    terms = torch.where(teacher > 0, teacher * (log_teacher - log_student), torch.zeros_like(log_student))
    soft = terms.sum(dim=1) * temperature**2
    return (1 - weight) * hard + weight * soft


@dataclass(frozen=True)
class Distillation:
    """The ``distillation=`` option of every problem: the model step's loss mixes in the teacher's outputs.

    With it, the per-sample loss of the model step (the objective, and the per-group losses the
    constraints' proxies are built from) is :func:`distillation_loss`; accuracies, and so CEAG's
    multiplier step, its replay buffers and every report, are unchanged. Loss-based multiplier steps
    (equalized loss) see the distilled loss when they are estimated on the training pass, and the
    plain loss on an eval-mode or held-out pass (where there is no teacher output).

    Args:
        teacher: the model to keep close to, usually the dense model. It is called in eval mode and
            without gradient on the same inputs as the model (one extra forward per step), and must be
            on their device. It is not part of the problem's state: checkpoints store ``weight`` and
            ``temperature`` only.
        weight: the soft term's weight in ``[0, 1]`` (0: plain fine-tuning; 1: the teacher only).
        temperature: the softmax temperature ``T > 0`` of both distributions.

    Example:
        >>> import torch
        >>> from ceag_cooper import Unconstrained
        >>> teacher = torch.nn.Linear(4, 3)
        >>> problem = Unconstrained(num_groups=2, distillation=Distillation(teacher, weight=0.5, temperature=2.0))
        >>> state = problem.compute_cmp_state(torch.nn.Linear(4, 3), torch.randn(6, 4), torch.randint(0, 3, (6,)),
        ...                                   torch.tensor([0, 1, 0, 1, 1, 0]))
        >>> problem.config()["distillation"]
        {'weight': 0.5, 'temperature': 2.0}
    """

    teacher: torch.nn.Module
    weight: float = 0.5
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, torch.nn.Module):
            raise TypeError(f"`teacher` must be a torch.nn.Module (e.g. the dense model), got {type(self.teacher)}.")
        check_distillation_settings(self.weight, self.temperature)

    def loss_fn(self, teacher_logits: torch.Tensor, base: LossFn | None = None) -> LossFn:
        """The per-sample loss of one batch whose teacher outputs are ``teacher_logits``."""

        def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return distillation_loss(
                logits, teacher_logits, targets, weight=self.weight, temperature=self.temperature, loss_fn=base
            )

        return loss

    def config(self) -> dict[str, Any]:
        """What a checkpoint records of it (the teacher is the caller's)."""
        return {"weight": float(self.weight), "temperature": float(self.temperature)}
