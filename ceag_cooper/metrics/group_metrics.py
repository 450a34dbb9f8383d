"""The per-group statistics of one model on one data set (:class:`GroupMetrics`) and their streaming accumulator."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ceag_cooper._validation import check_group_ids, check_positive_int
from ceag_cooper.metrics.functional import LossFn, group_sums, per_sample_loss_and_correct

__all__ = ["GroupMetrics", "GroupMetricsAccumulator"]


@dataclass
class GroupMetrics:
    """Accuracy and loss of one model on one data set, per group and overall.

    Used both as the dense model's *reference statistics* and as the evaluation of the sparse
    model. Overall numbers count each sample once, also for marginal groups.

    Attributes:
        group_accuracy: ``(G,)`` mean 0/1 accuracy per group (0 where a group has no sample).
        group_loss: ``(G,)`` mean loss per group.
        group_count: ``(G,)`` (weighted) number of samples per group.
        accuracy: overall accuracy (0-d tensor).
        loss: overall mean loss (0-d tensor).
        num_samples: (weighted) number of samples (0-d tensor).
    """

    group_accuracy: torch.Tensor
    group_loss: torch.Tensor
    group_count: torch.Tensor
    accuracy: torch.Tensor
    loss: torch.Tensor
    num_samples: torch.Tensor
    spec: str | None = None
    """The :attr:`GroupSpec.fingerprint` of the groups these statistics are about (``None``: unknown,
    e.g. computed from integer ids). Comparisons of two statistics with different specs are refused."""

    def __post_init__(self) -> None:
        per_group = {"group_accuracy": self.group_accuracy, "group_loss": self.group_loss,
                     "group_count": self.group_count}  # fmt: skip
        overall = {"accuracy": self.accuracy, "loss": self.loss, "num_samples": self.num_samples}
        for name, value in {**per_group, **overall}.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"GroupMetrics.{name} must be a tensor, got {type(value).__name__}.")
        shapes = {name: tuple(value.shape) for name, value in per_group.items()}
        if len(set(shapes.values())) != 1 or len(shapes["group_count"]) != 1:
            raise ValueError(f"GroupMetrics' per-group fields must be 1-D of one length, got shapes {shapes}.")
        if any(value.dim() != 0 for value in overall.values()):
            raise ValueError(
                "GroupMetrics.accuracy, .loss and .num_samples must be 0-d tensors, got shapes "
                f"{[tuple(v.shape) for v in overall.values()]}."
            )
        values = torch.cat([v.detach().reshape(-1).double().cpu() for v in (*per_group.values(), *overall.values())])
        if not bool(torch.isfinite(values).all()):
            raise ValueError("GroupMetrics holds NaN or inf values; recompute it with evaluate_groups.")
        accuracies = torch.cat(
            [self.group_accuracy.detach().reshape(-1).cpu(), self.accuracy.detach().reshape(1).cpu()]
        )
        if bool((accuracies < 0).any() | (accuracies > 1).any()) or bool((self.group_count < 0).any()):
            raise ValueError("GroupMetrics: accuracies must lie in [0, 1] (fractions) and counts be >= 0.")

    @property
    def num_groups(self) -> int:
        """Number of groups ``G``."""
        return int(self.group_count.shape[0])

    @property
    def population_share(self) -> torch.Tensor:
        """``group_count / num_samples``: each group's share of the data."""
        return self.group_count / self.num_samples

    @property
    def device(self) -> torch.device:
        """Device of the tensors."""
        return self.group_accuracy.device

    def to(self, device: torch.device | str) -> GroupMetrics:
        """A copy on ``device``."""
        return GroupMetrics(**{k: v.to(device) for k, v in self._tensors().items()}, spec=self.spec)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            "group_accuracy": self.group_accuracy,
            "group_loss": self.group_loss,
            "group_count": self.group_count,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "num_samples": self.num_samples,
        }

    def state_dict(self) -> dict[str, torch.Tensor | str]:
        """The tensors by field name, and ``spec`` if known (loads with ``torch.load(weights_only=True)``)."""
        return {**self._tensors(), **({"spec": self.spec} if self.spec is not None else {})}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor | str]) -> GroupMetrics:
        """Rebuild from :meth:`state_dict` output."""
        tensors = {k: torch.as_tensor(state[k]) for k in cls.__dataclass_fields__ if k != "spec"}
        return cls(**tensors, spec=state.get("spec"))  # type: ignore[arg-type]

    def check_same_groups(self, other: GroupMetrics, what: str = "the two statistics") -> None:
        """Raise if ``other`` is about other groups (another :class:`GroupSpec`, or another count)."""
        if other.num_groups != self.num_groups:
            raise ValueError(f"{what} have {self.num_groups} and {other.num_groups} groups; use one GroupSpec.")
        if self.spec is not None and other.spec is not None and self.spec != other.spec:
            raise ValueError(
                f"{what} were computed with different GroupSpecs (fingerprints {self.spec} and {other.spec}: other "
                "attribute sizes, order, names or mode), so group g is not the same group in both; compute both "
                "with the same GroupSpec."
            )


class GroupMetricsAccumulator:
    """Streaming per-group accuracy and loss over many batches (torchmetrics vocabulary).

    Sums are kept in float64 so that long evaluations do not lose precision.

    Args:
        num_groups: number of groups ``G``.
        device: where the running sums live (default CPU; use the model's device).

    Example:
        >>> import torch
        >>> acc = GroupMetricsAccumulator(2)
        >>> acc.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), torch.tensor([0, 1]))
        >>> acc.compute().group_accuracy.tolist()
        [1.0, 0.0]
    """

    def __init__(self, num_groups: int, *, device: torch.device | str | None = None) -> None:
        self.num_groups = check_positive_int(num_groups, "num_groups")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        zeros = torch.zeros(self.num_groups, dtype=torch.float64, device=self.device)
        self._correct, self._loss, self._count = zeros.clone(), zeros.clone(), zeros.clone()
        self._total = torch.zeros(3, dtype=torch.float64, device=self.device)  # correct, loss, count

    @torch.no_grad()
    def update(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        group_ids: torch.Tensor,
        *,
        weights: torch.Tensor | None = None,
        loss_fn: LossFn | None = None,
    ) -> None:
        """Add one batch of predictions.

        Args:
            logits: ``(N, C)`` model outputs.
            targets: ``(N,)`` class indices.
            group_ids: ``(N,)`` or ``(N, M)`` group ids.
            weights: optional ``(N,)`` sample weights (e.g. 0 for padded samples).
            loss_fn: per-sample loss (default cross-entropy).
        """
        group_ids = check_group_ids(group_ids, self.num_groups)
        loss, correct = per_sample_loss_and_correct(logits, targets, loss_fn)
        self.update_from_values(loss, correct, group_ids, weights=weights)

    @torch.no_grad()
    def update_from_values(
        self,
        loss: torch.Tensor,
        correct: torch.Tensor,
        group_ids: torch.Tensor,
        *,
        weights: torch.Tensor | None = None,
    ) -> None:
        """Add per-sample losses and 0/1 correctness directly (no model outputs needed)."""
        loss, correct = loss.double().to(self.device), correct.double().to(self.device)
        group_ids = group_ids.to(self.device)
        w = torch.ones_like(loss) if weights is None else weights.double().to(self.device)
        correct_sums, counts = group_sums(correct, group_ids, self.num_groups, weights=w)
        loss_sums, _ = group_sums(loss, group_ids, self.num_groups, weights=w)
        self._correct += correct_sums
        self._loss += loss_sums
        self._count += counts
        self._total += torch.stack([(correct * w).sum(), (loss * w).sum(), w.sum()])

    def compute(self, *, all_ranks: bool = False) -> GroupMetrics:
        """The metrics of everything seen since the last :meth:`reset` (float32 tensors).

        Args:
            all_ranks: under ``torch.distributed``, sum the running totals over ranks first (one
                all-reduce), so that every rank gets the metrics of the union of their data.
        """
        correct, loss, count, total = self._correct, self._loss, self._count, self._total
        if all_ranks:
            from ceag_cooper.distributed import all_reduce_sum

            packed = all_reduce_sum(torch.cat([correct, loss, count, total]))
            g = self.num_groups
            correct, loss, count, total = packed[:g], packed[g : 2 * g], packed[2 * g : 3 * g], packed[3 * g :]
        safe_count = count.clamp(min=1e-12)
        safe_total = total[2].clamp(min=1e-12)
        return GroupMetrics(
            group_accuracy=(correct / safe_count).float(),
            group_loss=(loss / safe_count).float(),
            group_count=count.float(),
            accuracy=(total[0] / safe_total).float(),
            loss=(total[1] / safe_total).float(),
            num_samples=total[2].float(),
        )
