"""Per-group statistics: one batch (vectorized, differentiable) and a whole loader (streaming).

All functions accept group ids of shape ``(N,)`` (one group per sample) or ``(N, M)`` (each
sample in ``M`` groups, e.g. marginal groups); a value then counts once in each of its groups.
Everything stays on the input's device: ``index_add`` / ``bincount``, no Python loop over groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ceag_cooper import native
from ceag_cooper._validation import _assert_values, check_group_ids, check_positive_int
from ceag_cooper.groups import GroupSpec
from ceag_cooper.native import Backend
from ceag_cooper.progress import progress_bar

__all__ = [
    "GroupMetrics",
    "GroupMetricsAccumulator",
    "LossFn",
    "call_model",
    "evaluate_groups",
    "flatten_membership",
    "group_loss_accuracy",
    "group_means",
    "group_sums",
    "model_logits",
    "move_to",
    "per_sample_loss_and_correct",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A per-sample loss: ``loss_fn(logits, targets) -> (N,)`` (no reduction)."""


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def per_sample_loss_and_correct(
    logits: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample loss (cross-entropy by default) and 0/1 correctness (``argmax == target``).

    Returns:
        ``(loss, correct)``, both of shape ``(N,)``; ``correct`` is a float tensor of 0s and 1s.
    """
    if logits.dim() != 2:
        raise ValueError(f"`logits` must have shape (N, num_classes), got {tuple(logits.shape)}.")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"`targets` must have shape ({logits.shape[0]},), got {tuple(targets.shape)}.")
    if targets.numel() and not targets.dtype.is_floating_point:
        low, high = torch.aminmax(targets)
        _assert_values(
            (low >= 0) & (high < logits.shape[1]),
            f"`targets` must be class indices in [0, {logits.shape[1]}); a sample with another value (e.g. an "
            "ignore_index of -100) would count as a wrong prediction in its group. Drop such samples from the batch.",
        )
    loss = (loss_fn or _cross_entropy)(logits, targets)
    if loss.shape != targets.shape:
        raise ValueError(
            f"`loss_fn` must return one loss per sample, shape {tuple(targets.shape)}, got {tuple(loss.shape)}; "
            "use reduction='none'."
        )
    correct = (logits.detach().argmax(dim=1) == targets).to(logits.dtype)
    return loss, correct


def flatten_membership(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair each value with each of its groups, in sample-major order.

    Args:
        values: ``(N,)`` or ``(N, C)`` per-sample values.
        group_ids: ``(N,)`` or ``(N, M)`` group ids.

    Returns:
        ``(flat_ids, flat_values)`` with ``N`` or ``N * M`` rows.
    """
    if group_ids.dim() == 1:
        return group_ids, values
    members = group_ids.shape[1]
    expanded = values.unsqueeze(1).expand(values.shape[0], members, *values.shape[1:])
    return group_ids.reshape(-1), expanded.reshape(-1, *values.shape[1:])


def group_sums(
    values: torch.Tensor,
    group_ids: torch.Tensor,
    num_groups: int,
    *,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (weighted) sums and counts; differentiable with respect to ``values``.

    Args:
        values: ``(N,)`` per-sample values, or ``(N, C)`` for ``C`` statistics at once.
        group_ids: ``(N,)`` or ``(N, M)`` ids in ``[0, num_groups)``.
        num_groups: number of groups ``G``.
        weights: optional ``(N,)`` non-negative sample weights (default 1).

    Returns:
        ``(sums, counts)``: sums of shape ``(G,)`` (or ``(G, C)``) and counts of shape ``(G,)``,
        in the dtype of ``values``.

    Example:
        >>> import torch
        >>> sums, counts = group_sums(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 2, 0]), 3)
        >>> sums.tolist(), counts.tolist()
        ([5.0, 0.0, 2.0], [2.0, 0.0, 1.0])
    """
    if values.dim() not in (1, 2) or values.shape[0] != group_ids.shape[0]:
        raise ValueError(
            f"`values` must have shape ({group_ids.shape[0]},) or ({group_ids.shape[0]}, C) to match "
            f"`group_ids`, got {tuple(values.shape)}."
        )
    if weights is not None and weights.shape != values.shape[:1]:
        raise ValueError(f"`weights` must have shape {tuple(values.shape[:1])}, got {tuple(weights.shape)}.")
    ones = torch.ones_like(values[:, :1]) if values.dim() == 2 else torch.ones_like(values).unsqueeze(1)
    columns = values if values.dim() == 2 else values.unsqueeze(1)
    if weights is not None:
        w = weights.to(values.dtype).unsqueeze(1)
        columns, ones = columns * w, w.detach()
    # One index_add for the sums and the counts together.
    ids, flat = flatten_membership(torch.cat([columns, ones.expand(-1, 1)], dim=1), group_ids)
    totals = values.new_zeros(num_groups, flat.shape[1]).index_add(0, ids, flat)
    sums = totals[:, :-1] if values.dim() == 2 else totals[:, 0]
    return sums, totals[:, -1].detach()


def group_loss_accuracy(
    loss: torch.Tensor,
    correct: torch.Tensor,
    group_ids: torch.Tensor,
    num_groups: int,
    *,
    backend: Backend = "torch",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's per-group mean loss (differentiable), mean accuracy (detached) and counts.

    The batch statistics of every training step, in one place so that both backends compute
    them: ``"torch"`` with one :func:`group_means` call on the stacked values, ``"native"`` with
    one fused CPU kernel call (see :mod:`ceag_cooper.native`).

    Args:
        loss: ``(N,)`` per-sample loss.
        correct: ``(N,)`` per-sample 0/1 accuracy.
        group_ids: ``(N,)`` or ``(N, M)`` ids in ``[0, num_groups)`` (validated by the caller).
        num_groups: number of groups ``G``.
        backend: ``"torch"`` or ``"native"``.

    Returns:
        ``(group_loss, group_accuracy, counts)``, each of shape ``(G,)``, 0 for absent groups.

    Example:
        >>> import torch
        >>> loss = torch.tensor([1.0, 3.0, 2.0], requires_grad=True)
        >>> group_loss, group_acc, counts = group_loss_accuracy(
        ...     loss, torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 2]), 3)
        >>> group_loss.tolist(), group_acc.tolist(), counts.tolist()
        ([2.0, 0.0, 2.0], [0.5, 0.0, 1.0], [2.0, 0.0, 1.0])
    """
    if backend == "native":
        if group_ids.dim() == 1:  # the common case first: nothing to flatten
            return native.load().group_statistics(loss, correct, group_ids, num_groups)
        ids, flat = flatten_membership(torch.stack([loss, correct], dim=1), group_ids)
        # The kernel's autograd Function gives no gradient to ``correct``: no detach needed.
        return native.load().group_statistics(flat[:, 0], flat[:, 1], ids, num_groups)
    means, counts = group_means(torch.stack([loss, correct], dim=1), group_ids, num_groups)
    return means[:, 0], means[:, 1].detach(), counts


def group_means(values: torch.Tensor, group_ids: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group means (0 for groups without samples) and counts; differentiable.

    Args:
        values: ``(N,)`` or ``(N, C)`` per-sample values.
        group_ids: ``(N,)`` or ``(N, M)`` group ids.
        num_groups: number of groups ``G``.

    Returns:
        ``(means, counts)``: means of shape ``(G,)`` (or ``(G, C)``), counts ``(G,)``.
    """
    sums, counts = group_sums(values, group_ids, num_groups)
    denominator = counts.clamp(min=1.0)
    return sums / (denominator if sums.dim() == 1 else denominator.unsqueeze(1)), counts


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


def model_logits(output: object) -> torch.Tensor:
    """The ``(N, C)`` logits in a model's output.

    A tensor, ``output.logits`` (Hugging Face model outputs), ``output["logits"]``, or the first
    element of a tuple.

    Example:
        >>> from types import SimpleNamespace
        >>> model_logits(SimpleNamespace(logits=torch.zeros(2, 3))).shape
        torch.Size([2, 3])
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits  # type: ignore[attr-defined]
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}: return a tensor, an object with "
        "`.logits` or a dict with 'logits', or compute them yourself and pass `logits=`."
    )


def move_to(inputs: object, device: torch.device) -> object:
    """``inputs`` on ``device``: a tensor, or a dict / list / tuple of them (e.g. tokenizer output)."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):  # dicts, Hugging Face BatchEncoding (a UserDict)
        return {key: move_to(value, device) for key, value in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(move_to(item, device) for item in inputs)
    return inputs


def call_model(model: torch.nn.Module, inputs: object) -> torch.Tensor:
    """``model(inputs)`` (``model(**inputs)`` for a mapping, e.g. tokenizer output), reduced to its logits."""
    if isinstance(inputs, Mapping):
        return model_logits(model(**inputs))
    return model_logits(model(inputs))


def _unpack_batch(batch: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        raise ValueError(
            "each batch must be a tuple (inputs, targets, protected_attributes_or_group_ids), "
            f"got {type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}."
        )
    return batch[0], batch[1], batch[2]


@torch.no_grad()
def evaluate_groups(
    model: torch.nn.Module,
    loader: Iterable,
    *,
    groups: GroupSpec | int,
    loss_fn: LossFn | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    description: str = "evaluate",
    distributed: bool | None = None,
    dataset_size: int | None = None,
) -> GroupMetrics:
    """Per-group accuracy and loss of ``model`` over a whole loader, in eval mode.

    This is how the dense model's *reference statistics* are computed (once, before
    fine-tuning), and how the sparse model is evaluated for a :class:`DisparityReport`.

    Args:
        model: the model; its train/eval mode is restored afterwards.
        loader: iterable of ``(inputs, targets, attributes)``; with an ``int`` for ``groups``
            the third element must already be group ids.
        groups: a :class:`GroupSpec` (converts attributes to ids) or the number of groups.
        loss_fn: per-sample loss (default cross-entropy).
        device: where batches are moved (default: the model's device; must match it).
        progress: show a progress bar (needs the ``progress`` extra, tqdm; silent without it).
        description: progress bar label.
        distributed: sum the statistics over ``torch.distributed`` ranks (default: when a
            process group with several ranks is initialized); each rank passes its own shard.
        dataset_size: with a ``DistributedSampler`` (which pads the last shard by repeating
            samples), the size of the whole data set: this rank's ``k``-th sample is padding,
            and gets weight 0, when ``rank + k * world_size >= dataset_size``. Leave ``None``
            for shards without padding.

    Returns:
        The :class:`GroupMetrics` of the whole loader.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> data = [(torch.randn(8, 3), torch.randint(0, 2, (8,)), torch.randint(0, 4, (8,)))]
        >>> metrics = evaluate_groups(model, data, groups=4)
        >>> metrics.group_accuracy.shape
        torch.Size([4])
    """
    spec = groups if isinstance(groups, GroupSpec) else None
    num_groups = spec.num_groups if spec is not None else int(groups)
    first = next(model.parameters(), None)
    model_device = first.device if first is not None else None
    device = torch.empty(0, device=device if device is not None else model_device).device
    if model_device is not None and model_device != device:
        raise ValueError(
            f"the model is on {model_device} but `device={device}`; move the model with `model.to(device)`."
        )
    accumulator = GroupMetricsAccumulator(num_groups, device=device)
    was_training = model.training
    model.eval()
    iterator = loader
    if progress:
        iterator = progress_bar(loader, description=description)
    from ceag_cooper.distributed import is_distributed, rank_and_world

    synchronize = is_distributed() if distributed is None else distributed
    rank, world = rank_and_world()
    position = 0  # this rank's samples seen so far
    try:
        for batch in iterator:
            inputs, targets, third = _unpack_batch(batch)
            inputs, targets, third = move_to(inputs, device), targets.to(device), third.to(device)
            group_ids = spec.group_ids(third) if spec is not None else third
            weights = None
            if dataset_size is not None:
                local = torch.arange(position, position + targets.shape[0], device=device)
                weights = (rank + local * world < dataset_size).to(torch.float32)
            accumulator.update(call_model(model, inputs), targets, group_ids, loss_fn=loss_fn, weights=weights)
            position += targets.shape[0]
    finally:
        model.train(was_training)
    if position == 0 and not synchronize:
        raise ValueError("`loader` yielded no batch: cannot compute group statistics of an empty data set.")
    metrics = accumulator.compute(all_ranks=synchronize)
    return dataclasses.replace(metrics, spec=spec.fingerprint) if spec is not None else metrics
