"""Calling a model on any batch format, and evaluating it per group over a whole loader."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ceag_cooper._modes import eval_mode
from ceag_cooper.groups import GroupSpec
from ceag_cooper.metrics.functional import LossFn
from ceag_cooper.metrics.group_metrics import GroupMetrics, GroupMetricsAccumulator
from ceag_cooper.progress import progress_bar

__all__ = ["call_model", "evaluate_groups", "model_logits", "move_to", "predict_groups"]


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


def _evaluation_device(model: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    """``device``, else the model's (CPU for a model without parameters); refuses a mismatch."""
    first = next(model.parameters(), None)
    model_device = first.device if first is not None else None
    resolved = torch.empty(0, device=device if device is not None else model_device).device
    if model_device is not None and model_device != resolved:
        raise ValueError(
            f"the model is on {model_device} but `device={resolved}`; move the model with `model.to(device)`."
        )
    return resolved


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
    device = _evaluation_device(model, device)
    accumulator = GroupMetricsAccumulator(num_groups, device=device)
    iterator = loader
    if progress:
        iterator = progress_bar(loader, description=description)
    from ceag_cooper.distributed import is_distributed, rank_and_world

    synchronize = is_distributed() if distributed is None else distributed
    rank, world = rank_and_world()
    position = 0  # this rank's samples seen so far
    with eval_mode(model):
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
    if position == 0 and not synchronize:
        raise ValueError("`loader` yielded no batch: cannot compute group statistics of an empty data set.")
    metrics = accumulator.compute(all_ranks=synchronize)
    return dataclasses.replace(metrics, spec=spec.fingerprint) if spec is not None else metrics


@torch.no_grad()
def predict_groups(
    model: torch.nn.Module, loader: Iterable, *, groups: GroupSpec | int, device: torch.device | str | None = None
) -> dict[str, Any]:
    """Per-sample predictions with their groups, for tools that want them (fairlearn's ``MetricFrame``).

    Args:
        model: the model (evaluated in eval mode; its mode is restored).
        loader: iterable of ``(inputs, targets, attributes)`` as for :func:`evaluate_groups`.
        groups: a :class:`GroupSpec` or the number of groups (then the third element is group ids).
        device: where batches are moved (default: the model's device; must match it).

    Returns:
        ``{"y_true", "y_pred", "group_id"}`` as 1-D numpy arrays (``(N, M)`` memberships give
        ``group_id`` of shape ``(N, M)``) and ``"group_name"`` (one name per sample, with a
        :class:`GroupSpec` and one group per sample; else ``None``). For fairlearn:
        ``MetricFrame(metrics=accuracy_score, y_true=p["y_true"], y_pred=p["y_pred"],
        sensitive_features=p["group_name"])``.

    Example:
        >>> import torch
        >>> data = [(torch.eye(3), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))]
        >>> p = predict_groups(torch.nn.Identity(), data, groups=2)
        >>> p["y_pred"].tolist(), p["group_id"].tolist()
        ([0, 1, 2], [0, 1, 1])
    """
    spec = groups if isinstance(groups, GroupSpec) else None
    device = _evaluation_device(model, device)
    truth, predicted, ids = [], [], []
    with eval_mode(model):
        for batch in loader:
            inputs, targets, third = _unpack_batch(batch)
            third = third.to(device)
            group_ids = spec.group_ids(third) if spec is not None else third
            predicted.append(call_model(model, move_to(inputs, device)).argmax(dim=1).cpu())
            truth.append(targets.cpu())
            ids.append(group_ids.cpu())
    if not truth:
        raise ValueError("`loader` yielded no batch: nothing to predict.")
    group_id = torch.cat(ids).numpy()
    names = None
    if spec is not None and group_id.ndim == 1:
        names = [spec.group_names[int(g)] for g in group_id]
    return {"y_true": torch.cat(truth).numpy(), "y_pred": torch.cat(predicted).numpy(), "group_id": group_id,
            "group_name": names}  # fmt: skip
