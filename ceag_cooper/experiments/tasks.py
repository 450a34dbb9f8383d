"""The data of an experiment: :class:`Task` (both splits and their groups) for each named data set."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ceag_cooper.data import DATA_SETS, GroupDataset, load_splits
from ceag_cooper.experiments.config import HELDOUT_FRACTION, VALIDATION_SEED
from ceag_cooper.groups import GroupSpec

if TYPE_CHECKING:
    from ceag_cooper.experiments.config import ExperimentConfig

__all__ = ["TASKS", "Task", "data_fingerprint", "heldout_split", "load_task"]

TASKS = DATA_SETS
"""The data sets :func:`load_task` knows: every one :func:`ceag_cooper.data.load_splits` loads."""


@dataclass
class Task:
    """Data of one experiment: splits restricted to the protected attributes, and their groups."""

    train: GroupDataset
    test: GroupDataset
    spec: GroupSpec
    input_shape: tuple[int, ...] = field(default_factory=tuple)


def _loader_options(config: ExperimentConfig) -> dict[str, Any]:
    """What ``config`` asks of its data set's loader (see :func:`ceag_cooper.data.load_splits`)."""
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose among {', '.join(TASKS)}.")
    if config.task in ("utkface", "fairface"):
        options: dict[str, Any] = {"target": config.target, "protected": config.protected, "size": config.image_size}
        if config.task == "utkface":
            options["cache_dir"] = config.cache_dir
        return options
    if config.task == "adult":
        return {"protected": config.protected}
    if config.task == "omniglot":
        return {"size": config.image_size, "groups": config.protected[0]}
    if config.task == "cifar100":
        return {"groups": config.protected[0]}
    return {"seed": config.seed}  # synthetic


def load_task(config: ExperimentConfig) -> Task:
    """Load the train and test splits of ``config.task`` and the group specification."""
    train, test = load_splits(config.task, config.data_dir, **_loader_options(config))
    if config.subset is not None:
        gen = torch.Generator().manual_seed(0)
        train = train.subset(torch.randperm(len(train), generator=gen)[: config.subset])
        test = test.subset(torch.randperm(len(test), generator=gen)[: max(1, config.subset // 4)])
    if config.validation:  # the held-out 20% plays the test split; the real test split is not used
        train, test = train.split_by_group(HELDOUT_FRACTION, seed=VALIDATION_SEED)
    spec = train.group_spec(mode=config.group_mode)  # type: ignore[arg-type]
    return Task(train=train, test=test, spec=spec, input_shape=tuple(train.inputs.shape[1:]))


def data_fingerprint(task: Task) -> str:
    """Which data a run used: a hash of both splits' contents (see ``GroupDataset.fingerprint``)."""
    return hashlib.sha256(f"{task.train.fingerprint()}{task.test.fingerprint()}".encode()).hexdigest()[:16]


def heldout_split(config: ExperimentConfig, task: Task) -> tuple[GroupDataset, GroupDataset]:
    """``(fit, held_out)``: the group-stratified split of the training data used by held-out methods."""
    return task.train.split_by_group(HELDOUT_FRACTION, seed=config.seed)
