"""The reference experiment: dense training, gradual pruning, mitigation, evaluation.

``train dense -> (save) -> gradual magnitude pruning -> fine-tune with NFT | NFT+ES | EL | EL+RB |
CEAG (no RB) | CEAG -> evaluate on train and test -> DisparityReport``. The dense checkpoint is
keyed by everything that determines it, so it is trained once per seed and reused by every
method and sparsity. Used by the CLI, the examples and the benchmarks.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import math
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import cooper
import numpy as np
import torch
import torch.nn.functional as F

from ceag_cooper import __version__
from ceag_cooper._atomic import atomic_write
from ceag_cooper._validation import check_non_negative_float
from ceag_cooper.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ceag_cooper.data import GroupDataset, load_adult, load_omniglot, load_utkface, make_group_imbalanced_task
from ceag_cooper.groups import GroupSpec
from ceag_cooper.metrics import DisparityReport, GroupMetrics, GroupMetricsAccumulator, evaluate_groups
from ceag_cooper.models import MLP, SmallCNN, cifar_resnet
from ceag_cooper.optim import build_optimizer
from ceag_cooper.problems import CEAG, EqualizedLoss, GroupFairnessProblem, TwoSidedCEAG, Unconstrained
from ceag_cooper.progress import progress_bar
from ceag_cooper.pruning import GradualSchedule, MagnitudePruner, check_sparsity, recalibrate_batchnorm
from ceag_cooper.selection import FeasibilityMonitor, IterateSelector

__all__ = ["LEGACY_PROTOCOL", "METHODS", "ExperimentConfig", "load_task", "primal_lr", "run_experiment", "train_dense"]

METHODS = (
    "nft", "nft_es", "el", "el_rb", "ceag_no_rb", "ceag", "ceag_two_sided", "ceag_heldout", "ceag_heldout_select",
    "ceag_heldout_two_sided", "ceag_detach_overall",
)  # fmt: skip
"""Fine-tuning methods: naive (NFT), NFT with early stopping on test accuracy (the paper's NFT+ES),
equalized loss without / with replay buffers, CEAG without / with replay buffers; beyond the
paper: two-sided CEAG (|psi_g| <= eps), CEAG with constraints estimated on a held-out 20% of the
training set, the same plus constrained model selection on that held-out part, two-sided
constraints estimated on the held-out part, and CEAG whose model step treats the proxy's overall
term as a constant (for many groups, see ``CEAG(detach_overall=True)``)."""
HELDOUT_FRACTION = 0.2
VALIDATION_SEED = 2024
"""Seed of the validation split (``ExperimentConfig.validation``): fixed, so that every candidate
setting is scored on the same samples."""

LEGACY_PROTOCOL: dict[str, Any] = {
    "finetune_epochs": 4,
    "lr_milestones": (),
    "constraint_estimate": "train",
    "margin": 0.0,
    "dual_optimizer": "sgd",
    "nupi_kp": 0.0,
    "nupi_ema": 0.0,
    "final_iterate": "last",
    "el_form": "signed",
}
"""The fine-tuning protocol before issue #13 (constant primal LR for 4 epochs, training-mode
estimates, no margin, SGD dual, last iterate, signed EL): the grids that ran with it set these
values. Fields added since then are left out of :meth:`ExperimentConfig.run_name` when they hold
these values, so the names (and result files) of those runs stay valid."""

_DENSE_FIELDS = (
    "task", "target", "image_size", "model", "width", "seed", "batch_size",
    "dense_epochs", "dense_lr", "weight_decay", "augment", "subset",
)  # fmt: skip


@dataclass
class ExperimentConfig:
    """Everything that defines one (task, sparsity, method, seed) run. Defaults: the demo's.

    The defaults are still the protocol the demo and the first grids ran with
    (:data:`LEGACY_PROTOCOL`); issue #13's options (schedule, eval-mode estimates, margin, nuPI,
    feasibility-first iterate, the paper's EL) are opt-in until its grid has measured them.
    """

    task: str = "utkface"
    target: str = "race"
    protected: tuple[str, ...] = ("race",)
    group_mode: str = "intersectional"
    image_size: int = 32
    model: str = "small_cnn"
    width: int = 32
    seed: int = 0
    batch_size: int = 128
    dense_epochs: int = 15
    dense_lr: float = 0.05
    weight_decay: float = 5e-4
    augment: bool = True
    sparsity: float = 0.9
    prune_epochs: int = 4
    finetune_epochs: int = 4
    lr: float = 0.01
    lr_milestones: tuple[float, ...] = ()
    """Fractions of the ``prune_epochs + finetune_epochs`` epochs after which the primal LR is
    multiplied by ``lr_gamma`` (epoch ``int(m * total)`` starts decayed); empty: a constant LR. The
    paper's schedule is ``(0.6, 0.8, 0.9)`` (issue #13's grids, ``benchmarks/run_grid.py``)."""
    lr_gamma: float = 0.1
    method: str = "ceag"
    tolerance: float = 0.01
    margin: float = 0.0
    """CEAG enforces ``tolerance - margin``; ``tolerance`` stays the requirement reports check."""
    buffer_size: int = 40
    dual_lr: float = 0.01
    dual_optimizer: str = "sgd"
    """``"sgd"`` (the paper) or ``"nupi"`` (see :func:`ceag_cooper.build_optimizer`)."""
    nupi_kp: float = 0.0
    nupi_ema: float = 0.0
    constraint_estimate: str = "train"
    """``"train"`` or ``"eval"``: what the multiplier step sees (see ``GroupFairnessProblem``)."""
    final_iterate: str = "last"
    """``"last"`` or ``"feasible_best"``: constrained methods return the most accurate iterate with
    train max ψ ≤ ε among the epoch ends at final sparsity (eval mode, the constraint data), else
    the least infeasible one. Unconstrained methods always return the last (NFT+ES: best test)."""
    el_form: str = "signed"
    """Equalized loss: ``"signed"`` (L_g - L = 0) or ``"paper"`` (the official code's |L_g - L| = 0)."""
    mitigate_during_pruning: bool = False
    subset: int | None = None
    data_dir: str | None = None
    cache_dir: str | None = None
    output_dir: str = "outputs"
    validation: bool = False
    """Hyperparameter-selection mode: train on a group-stratified 80% of the training split and
    report the other 20% as the "test" split, so that settings are chosen without the test set."""

    def __post_init__(self) -> None:
        self.protected = tuple(self.protected)
        self._check_numbers()
        check_sparsity(self.sparsity)
        check_non_negative_float(self.tolerance, "tolerance")
        if self.group_mode not in ("intersectional", "marginal"):
            raise ValueError(f"`group_mode` must be 'intersectional' or 'marginal', got {self.group_mode!r}.")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose among {list(METHODS)}.")
        if self.prune_epochs < 1 or self.finetune_epochs < 0 or self.dense_epochs < 0:
            raise ValueError("`prune_epochs` must be >= 1, `finetune_epochs` and `dense_epochs` >= 0.")
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)
        if any(not 0 < m < 1 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(self.lr_milestones):
            raise ValueError(f"`lr_milestones` must be increasing fractions in (0, 1), got {self.lr_milestones}.")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"`lr_gamma` must be in (0, 1], got {self.lr_gamma}.")
        check_non_negative_float(self.margin, "margin")
        choices = {
            "dual_optimizer": ("sgd", "nupi"),
            "constraint_estimate": ("train", "eval"),
            "final_iterate": ("last", "feasible_best"),
            "el_form": ("signed", "paper"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {list(allowed)}, got {getattr(self, name)!r}.")
        if not (math.isfinite(self.nupi_kp) and self.nupi_kp >= 0 and 0 <= self.nupi_ema < 1):
            raise ValueError(f"`nupi_kp` must be >= 0 and `nupi_ema` in [0, 1), got {self.nupi_kp}, {self.nupi_ema}.")

    def _check_numbers(self) -> None:
        """Every numeric field, before any work (a bad value used to fail after dense training)."""
        for name in ("batch_size", "width", "image_size", "buffer_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        for name in ("seed", "dense_epochs", "prune_epochs", "finetune_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an integer >= 0, got {value!r}.")
        if self.subset is not None and (isinstance(self.subset, bool) or not isinstance(self.subset, int)
                                        or self.subset < 4):  # fmt: skip
            raise ValueError(
                f"`subset` must be an integer >= 4 (a quarter of it is the test split), got {self.subset!r}."
            )
        for name in ("lr", "dense_lr", "dual_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
        check_non_negative_float(self.weight_decay, "weight_decay")

    def dense_key(self) -> str:
        """Hash of the fields that determine the dense model."""
        fields_ = {k: getattr(self, k) for k in _DENSE_FIELDS}
        if self.validation:  # only when on: keys of earlier runs stay valid
            fields_["validation"] = True
        if self.uses_heldout:  # trained without the held-out part (see `train_dense`)
            fields_["heldout_fraction"] = HELDOUT_FRACTION
        fields_["code"] = dense_code_fingerprint()  # a change to the code that trains it retrains it
        text = json.dumps(fields_, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def uses_heldout(self) -> bool:
        """Whether the method estimates its constraints on a held-out part of the training split."""
        return self.method.startswith("ceag_heldout")

    def run_name(self) -> str:
        """A file-name-safe name of the run, ending with a hash of every setting that matters."""
        groups = "x".join(self.protected)
        settings = {k: v for k, v in asdict(self).items() if k not in ("data_dir", "cache_dir", "output_dir")}
        if not self.validation:  # added later: left out when off, so earlier run names stay valid
            del settings["validation"]
        if self.uses_heldout:  # their dense model no longer sees the held-out part: new runs
            settings["dense_without_heldout"] = True
        for key, legacy in LEGACY_PROTOCOL.items():  # fields added later: left out at their old value
            if key != "finetune_epochs" and settings[key] == legacy:
                del settings[key]
        if not self.lr_milestones:  # the old constant-LR runs had no schedule fields at all
            del settings["lr_gamma"]
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:6]
        task = {"utkface": "utk"}.get(self.task, self.task)  # short: file names stay readable
        name = f"{task}-{self.target}-by-{groups}-s{round(100 * self.sparsity)}-{self.method}-seed{self.seed}"
        name = f"{name}-validation" if self.validation else name
        return f"{name}-{digest}"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        """Build from a dict, ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class Task:
    """Data of one experiment: splits restricted to the protected attributes, and their groups."""

    train: GroupDataset
    test: GroupDataset
    spec: GroupSpec
    input_shape: tuple[int, ...] = field(default_factory=tuple)


def load_task(config: ExperimentConfig) -> Task:
    """Load the train and test splits of ``config.task`` and the group specification."""
    if config.task == "utkface":
        kwargs = {"target": config.target, "protected": config.protected, "size": config.image_size}
        kwargs.update(data_dir=config.data_dir, cache_dir=config.cache_dir)
        train, test = load_utkface(split="train", **kwargs), load_utkface(split="test", progress=False, **kwargs)
    elif config.task == "adult":
        train, test = load_adult(config.data_dir, protected=config.protected)
    elif config.task == "omniglot":
        train, test = load_omniglot(config.data_dir, size=config.image_size, groups=config.protected[0])
    elif config.task == "synthetic":
        task = make_group_imbalanced_task(4000, seed=config.seed)
        names = (("majority", "minority", "rare"),)
        common = {"attribute_names": ("group",), "value_names": names, "class_names": ("0", "1")}
        split = 3200
        train = GroupDataset(
            task.inputs[:split], task.targets[:split], task.attributes[:split], name="synthetic-train", **common
        )
        test = GroupDataset(
            task.inputs[split:], task.targets[split:], task.attributes[split:], name="synthetic-test", **common
        )
    else:
        raise ValueError(f"unknown task {config.task!r}; choose among utkface, adult, omniglot, synthetic.")
    if config.subset is not None:
        gen = torch.Generator().manual_seed(0)
        train = train.subset(torch.randperm(len(train), generator=gen)[: config.subset])
        test = test.subset(torch.randperm(len(test), generator=gen)[: max(1, config.subset // 4)])
    if config.validation:  # the held-out 20% plays the test split; the real test split is not used
        train, test = train.split_by_group(HELDOUT_FRACTION, seed=VALIDATION_SEED)
    spec = train.group_spec(mode=config.group_mode)  # type: ignore[arg-type]
    return Task(train=train, test=test, spec=spec, input_shape=tuple(train.inputs.shape[1:]))


@functools.cache
def dense_code_fingerprint() -> str:
    """A hash of the source that determines a dense model.

    The models, the data loaders, and the functions of this module that build, augment and train
    it. Part of :meth:`ExperimentConfig.dense_key`, so a cached dense model is reused across commits
    only while that code is unchanged.
    """
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted([*(package / "models").glob("*.py"), *(package / "data").glob("*.py")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for function in (build_model, _augment, train_dense):
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()[:12]


def data_fingerprint(task: Task) -> str:
    """Which data a run used: a hash of both splits' contents (see ``GroupDataset.fingerprint``)."""
    return hashlib.sha256(f"{task.train.fingerprint()}{task.test.fingerprint()}".encode()).hexdigest()[:16]


def build_model(config: ExperimentConfig, task: Task) -> torch.nn.Module:
    """The model named by ``config.model`` for the task's inputs and classes."""
    classes = task.train.num_classes
    if config.model == "small_cnn":
        return SmallCNN(classes, width=config.width, in_channels=task.input_shape[0])
    if config.model.startswith("resnet"):
        return cifar_resnet(int(config.model[6:]), classes, width=config.width // 2, in_channels=task.input_shape[0])
    if config.model == "mlp":
        return MLP(int(np.prod(task.input_shape)), classes, hidden=(config.width * 4, config.width * 4))
    if config.model in ("mobilenet_v2", "resnet18"):  # the paper's UTKFace model, and a classic
        try:
            import torchvision
        except ImportError as error:
            raise ValueError(
                f"model {config.model!r} needs torchvision: pip install 'ceag-cooper[vision]' "
                "(torch==2.14.1 torchvision==0.29.1 on these machines)."
            ) from error
        return getattr(torchvision.models, config.model)(num_classes=classes)
    raise ValueError(
        f"unknown model {config.model!r}; choose among small_cnn, resnet20, resnet56, mlp, mobilenet_v2, resnet18."
    )


def _augment(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips of image batches."""
    if inputs.dim() != 4:
        return inputs
    flip = torch.rand(inputs.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), inputs.flip(3), inputs)


def heldout_split(config: ExperimentConfig, task: Task) -> tuple[GroupDataset, GroupDataset]:
    """``(fit, held_out)``: the group-stratified split of the training data used by held-out methods."""
    return task.train.split_by_group(HELDOUT_FRACTION, seed=config.seed)


def train_dense(config: ExperimentConfig, task: Task, *, progress: bool = True) -> tuple[torch.nn.Module, Path, bool]:
    """Train the dense model, or load it if a checkpoint for the same dense settings exists.

    Returns:
        ``(model, checkpoint_path, reused)``.
    """
    path = Path(config.output_dir) / "dense" / f"{config.task}-{config.model}-seed{config.seed}-{config.dense_key()}.pt"
    if config.uses_heldout:
        # The held-out part must be unseen by the dense model too: its reference accuracies on data
        # it was trained on are inflated, most for small groups, which then look violated forever.
        task = replace(task, train=heldout_split(config, task)[0])
    torch.manual_seed(config.seed)
    model = build_model(config, task)
    dense_config = {k: getattr(config, k) for k in _DENSE_FIELDS}
    data = task.train.fingerprint()
    if path.exists():
        model.load_state_dict(_load_dense(path, dense_config, data))
        return model, path, True
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.dense_lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )
    steps = max(1, config.dense_epochs * task.train.num_batches(config.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.dense_lr, total_steps=steps)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    epochs = range(config.dense_epochs)
    for epoch in progress_bar(epochs, description="dense training") if progress else epochs:
        for x, y, _ in task.train.batches(config.batch_size, seed=config.seed * 1000 + epoch):
            x = _augment(x, generator) if config.augment else x
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    payload = {"model": model.state_dict(), "dense_config": dense_config, "data": data, "code": code_version()}
    atomic_write(path, lambda handle: torch.save(payload, handle))
    return model, path, False


def _load_dense(path: Path, dense_config: dict[str, Any], data: str) -> dict[str, torch.Tensor]:
    """The weights of a cached dense model, after checking it is intact and was trained as asked."""
    try:
        payload = torch.load(path, weights_only=True)
        state, saved = payload["model"], payload.get("dense_config")
        saved_data = payload.get("data")  # absent in files written before it was recorded
    except Exception as error:  # truncated file, foreign pickle, another layout
        raise CheckpointError(
            f"{path} is not a readable dense checkpoint ({type(error).__name__}: {error}); delete it and it is "
            "trained again."
        ) from error
    if saved is not None and json.dumps(saved, sort_keys=True, default=list) != json.dumps(
        dense_config, sort_keys=True, default=list
    ):
        raise CheckpointError(
            f"{path} holds a dense model trained with {saved}, not {dense_config}; delete it or choose another "
            "output_dir."
        )
    if saved_data is not None and saved_data != data:
        raise CheckpointError(
            f"{path} holds a dense model trained on other data (fingerprint {saved_data}, this training split "
            f"{data}): the data set changed since. Delete it (it is trained again) or choose another output_dir."
        )
    return state


def make_problem(
    config: ExperimentConfig, reference: GroupMetrics, start_step: int, heldout: tuple[Any, GroupMetrics] | None = None
) -> GroupFairnessProblem:
    """The Cooper problem of ``config.method`` (``heldout``: batches and dense reference)."""
    estimate = {"constraint_estimate": config.constraint_estimate}
    ceag = {"reference": reference, "tolerance": config.tolerance, "margin": config.margin, "start_step": start_step}
    if config.method == "ceag_two_sided":
        return TwoSidedCEAG(**ceag, buffer_size=config.buffer_size, **estimate)
    if config.method.startswith("ceag_heldout"):
        batches, heldout_reference = heldout
        kind = TwoSidedCEAG if config.method == "ceag_heldout_two_sided" else CEAG
        return kind(**ceag, buffer_size=config.buffer_size, heldout=batches, heldout_reference=heldout_reference)
    if config.method in ("nft", "nft_es"):
        return Unconstrained(num_groups=reference.num_groups)
    if config.method in ("el", "el_rb"):
        buffer = config.buffer_size if config.method == "el_rb" else None
        return EqualizedLoss(reference=reference, buffer_size=buffer, start_step=start_step, form=config.el_form,
                             **estimate)  # fmt: skip
    buffer = config.buffer_size if config.method in ("ceag", "ceag_detach_overall") else None
    return CEAG(**ceag, buffer_size=buffer, detach_overall=config.method == "ceag_detach_overall", **estimate)


def primal_lr(config: ExperimentConfig, epoch: int) -> float:
    """The primal learning rate of ``epoch`` (0-based, pruning epochs included).

    Example:
        >>> config = ExperimentConfig(prune_epochs=4, finetune_epochs=8, lr=0.01, lr_milestones=(0.6, 0.8, 0.9))
        >>> [round(primal_lr(config, e), 7) for e in (0, 6, 7, 9, 10, 11)]
        [0.01, 0.01, 0.001, 0.0001, 1e-05, 1e-05]
    """
    total = config.prune_epochs + config.finetune_epochs
    decays = sum(epoch >= int(m * total) for m in config.lr_milestones)
    return config.lr * config.lr_gamma**decays


_ALL_GROUPS_LOGGED = 20
"""Up to this many constraints the epoch log lists every multiplier and violation; beyond, summaries."""


def _constraint_log(problem: GroupFairnessProblem, names: list[str], violation: torch.Tensor | None) -> dict[str, Any]:
    """Multipliers and the last step's multiplier-side violations (psi-hat minus the enforced target)."""
    values = problem.multiplier_values
    if values is None:
        return {}
    labels = [names[i % len(names)] + ("" if i < len(names) else " (lower)") for i in range(values.numel())]
    entry: dict[str, Any] = {"top_multipliers": _top_multipliers(problem, names)}
    if values.numel() <= _ALL_GROUPS_LOGGED:
        entry["multipliers"] = {n: round(float(v), 5) for n, v in zip(labels, values.tolist(), strict=True)}
        if violation is not None:
            entry["violations"] = {n: round(float(v), 5) for n, v in zip(labels, violation.tolist(), strict=True)}
        return entry
    order = values.argsort(descending=True)[:5].tolist()
    entry["multiplier_summary"] = {
        "sum": round(float(values.sum()), 5),
        "max": round(float(values.max()), 5),
        "positive": int((values > 0).sum()),
        "top": [[labels[i], round(float(values[i]), 5)] for i in order],
    }
    if violation is not None:
        entry["violation_summary"] = {"max": round(float(violation.max()), 5), "positive": int((violation > 0).sum())}
    return entry


def _top_multipliers(problem: GroupFairnessProblem, names: list[str], count: int = 3) -> list[list[Any]]:
    values = problem.multiplier_values
    if values is None:
        return []
    order = values.abs().argsort(descending=True)[:count].tolist()
    return [[names[i % len(names)], round(float(values[i]), 4)] for i in order]


def _selects_iterate(config: ExperimentConfig, problem: GroupFairnessProblem) -> bool:
    """Whether the run returns the feasibility-first iterate instead of the last one."""
    constrained = problem.constraint_type is not None
    return config.method == "ceag_heldout_select" or (constrained and config.final_iterate == "feasible_best")


def finetune(
    config: ExperimentConfig,
    task: Task,
    dense: torch.nn.Module,
    reference: GroupMetrics,
    *,
    progress: bool = True,
    resume: bool = False,
    dense_test: GroupMetrics | None = None,
) -> tuple[torch.nn.Module, MagnitudePruner, list[dict[str, Any]]]:
    """Prune gradually and fine-tune with ``config.method``; returns model, pruner and epoch log.

    A checkpoint is written after every epoch (``output_dir/checkpoints/<run>.pt``); with
    ``resume=True`` the run continues from it, bit-identically on CPU. The last log entry says
    which iterate was returned (``"final_iterate"``) when the run selects one.
    """
    torch.manual_seed(config.seed + 1)
    model = copy.deepcopy(dense)
    if dense_test is None:  # the dense model's test metrics, for the epoch log (run_experiment passes them)
        dense_test = evaluate_groups(dense, task.test.batches(512), groups=task.spec)
    train, heldout = task.train, None
    if config.uses_heldout:
        # Constraints estimated on a held-out, group-stratified 20% of the training set.
        train, held = heldout_split(config, task)
        reference = evaluate_groups(dense, train.batches(512), groups=task.spec)
        held_reference = evaluate_groups(dense, held.batches(512), groups=task.spec)
        # A list of batches: the problem indexes it by position, so checkpoints resume it exactly.
        heldout = (list(held.batches(config.batch_size, seed=config.seed)), held_reference, held)
    steps_per_epoch = train.num_batches(config.batch_size)
    schedule = GradualSchedule(config.sparsity, num_updates=config.prune_epochs)
    pruner = MagnitudePruner(model, schedule=schedule, prune_last_linear=config.model == "mlp")
    # Pruning updates at the start of epochs 0 .. prune_epochs - 1; the last one starts mitigation.
    start = 0 if config.mitigate_during_pruning else (config.prune_epochs - 1) * steps_per_epoch
    problem = make_problem(config, reference, start, heldout[:2] if heldout is not None else None)
    if heldout is not None:
        problem.heldout_spec = task.spec
    primal = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    pruner.attach(primal)
    optimizer = build_optimizer(problem, primal, dual_lr=config.dual_lr, **_dual_settings(config))
    names = task.spec.group_names
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    selector = IterateSelector(tolerance=config.tolerance) if _selects_iterate(config, problem) else None
    monitor = FeasibilityMonitor(names=task.spec.group_names) if problem.constraint_type is not None else None
    log: list[dict[str, Any]] = []
    generator = torch.Generator().manual_seed(config.seed + 2)
    checkpoint = Path(config.output_dir) / "checkpoints" / f"{config.run_name()}.pt"
    objects = {"model": model, "problem": problem, "optimizer": optimizer, "pruner": pruner, "generator": generator}
    first = 0
    identity = {"config": asdict(config), "data": data_fingerprint(task)}
    if resume and checkpoint.exists():
        state = load_checkpoint(checkpoint, **objects)
        _check_same_run(checkpoint, state["extra"].get("identity"), identity)
        first, log = state["epoch"] + 1, state["extra"]["log"]
        if "best_accuracy" in state["extra"]:
            best = (state["extra"]["best_accuracy"], state["extra"]["best_state"])
        if selector is not None and "selector" in state["extra"]:
            selector.load_state_dict(state["extra"]["selector"])
        if monitor is not None and "monitor" in state["extra"]:  # so never_feasible resumes exactly
            monitor.load_state_dict(state["extra"]["monitor"])
    epochs = range(first, config.prune_epochs + config.finetune_epochs)
    for epoch in progress_bar(epochs, description=f"{config.method}") if progress else epochs:
        lr = primal_lr(config, epoch)
        for group in primal.param_groups:
            group["lr"] = lr
        sparsity = pruner.step(epoch + 1)
        running = GroupMetricsAccumulator(reference.num_groups)
        model.train()
        started = time.perf_counter()
        for x, y, a in train.batches(config.batch_size, seed=config.seed * 1000 + 500 + epoch):
            clean = x
            x = _augment(x, generator) if config.augment else x
            kwargs = {"model": model, "inputs": x, "targets": y, "group_ids": task.spec.group_ids(a)}
            if problem.constraint_estimate == "eval":
                kwargs["estimate_inputs"] = clean
            rollout = optimizer.roll(compute_cmp_state_kwargs=kwargs)
            stats = rollout.cmp_state.misc["stats"]
            running.update_from_values(stats.per_sample_loss.detach(), stats.per_sample_correct, stats.group_ids)
        seconds = time.perf_counter() - started
        violation = rollout.cmp_state.misc.get("strict_violation")
        if monitor is not None and violation is not None:  # warns if a multiplier grows in vain
            monitor.update(problem.multiplier_values, violation)
        # Running BatchNorm statistics lag behind weights that pruning moves fast: recompute them
        # (one forward pass, no weight change) so that eval-mode numbers describe this model.
        recalibrate_batchnorm(model, task.train.batches(512))
        train_running = DisparityReport.from_metrics(reference, running.compute())
        final_sparsity = epoch >= config.prune_epochs - 1
        # The eval-mode train numbers cost a pass over the training data: measured where they are
        # used (selection, the constrained methods' diagnosis at final sparsity) and at the end.
        measure_train = (problem.constraint_type is not None and final_sparsity) or epoch == epochs[-1]
        train_eval = (
            DisparityReport.from_metrics(reference, evaluate_groups(model, train.batches(512), groups=task.spec))
            if measure_train
            else None
        )
        test_metrics = evaluate_groups(model, task.test.batches(512), groups=task.spec)
        test_report = DisparityReport.from_metrics(dense_test, test_metrics)
        entry = {
            "epoch": epoch,
            "sparsity": round(sparsity, 4),
            "lr": lr,
            "mitigation": problem.constraint_type is not None and problem.num_steps > problem.start_step,
            "train_loss_running": round(float(running.compute().loss), 4),
            "train_accuracy_running": round(train_running.sparse_overall, 4),
            "train_max_psi_running": round(train_running.max_psi, 4),
            **(
                {"train_accuracy": round(train_eval.sparse_overall, 4), "train_max_psi": round(train_eval.max_psi, 4)}
                if train_eval is not None
                else {}
            ),
            "test_accuracy": round(float(test_metrics.accuracy), 4),
            "test_max_psi": round(test_report.max_psi, 4),
            **_constraint_log(problem, names, violation),
            "seconds": round(seconds, 2),
        }
        log.append(entry)
        if config.method == "nft_es" and final_sparsity:
            accuracy = float(test_metrics.accuracy)
            if best is None or accuracy > best[0]:
                best = (accuracy, {k: v.clone() for k, v in model.state_dict().items()})
        if selector is not None and final_sparsity:
            if heldout is not None:  # judged on the data the constraints were estimated on
                judged = DisparityReport.from_metrics(
                    heldout[1], evaluate_groups(model, heldout[2].batches(512), groups=task.spec)
                )
                entry["heldout_accuracy"], entry["heldout_max_psi"] = judged.sparse_overall, judged.max_psi
            else:
                judged = train_eval
            selector.consider(f"epoch {epoch}", judged.sparse_overall, judged.max_psi, model.state_dict())
        extra: dict[str, Any] = {"log": log, "identity": identity}
        if selector is not None:
            extra["selector"] = selector.state_dict()
        if monitor is not None:
            extra["monitor"] = monitor.state_dict()
        if best is not None:
            extra.update(best_accuracy=best[0], best_state=best[1])
        save_checkpoint(checkpoint, **objects, counters={"epoch": epoch}, extra=extra)
    if best is not None:  # NFT+ES: the best iterate at final sparsity, by test accuracy (as the paper)
        model.load_state_dict(best[1])
    if monitor is not None and log:
        log[-1]["never_feasible"] = monitor.never_feasible()
    if selector is not None and selector.best_state is not None:  # feasibility first, on the constraint data
        model.load_state_dict(selector.best_state)
        log[-1]["selected_iterate"] = selector.best_name
        log[-1]["final_iterate"] = selector.reason()
    return model, pruner, log


def _check_same_run(path: Path, saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint of another configuration or other data (was resumed silently)."""
    if saved is None:  # written before identities were recorded
        return
    if saved["data"] != current["data"]:
        raise CheckpointError(
            f"{path} was written for other data (fingerprint {saved['data']}, now {current['data']}); "
            "resume needs the same data set: delete the checkpoint to start afresh."
        )
    ignored = {"data_dir", "cache_dir", "output_dir"}  # where things live, not what runs
    changed = sorted(
        k for k in current["config"] if k not in ignored and json.dumps(saved["config"].get(k), default=list)
        != json.dumps(current["config"][k], default=list)
    )  # fmt: skip
    if changed:
        raise CheckpointError(
            f"{path} was written by a run with other settings ({', '.join(changed)}); delete it to start afresh."
        )


def _dual_settings(config: ExperimentConfig) -> dict[str, Any]:
    """``build_optimizer``'s dual-optimizer arguments of ``config``."""
    if config.dual_optimizer == "nupi":
        return {"dual_optimizer": "nupi", "proportional_gain": config.nupi_kp, "ema_nu": config.nupi_ema}
    return {}


def run_experiment(
    config: ExperimentConfig, *, task: Task | None = None, progress: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Run one (task, sparsity, method, seed) cell end to end and write its results JSON.

    With ``resume=True`` an interrupted fine-tuning continues from its last epoch checkpoint.

    Returns:
        The results: config, versions, timings, dense and sparse metrics, disparity reports on
        train and test, the epoch log, and where the JSON was written (``"results_path"``).
    """
    started = time.perf_counter()
    code_version()  # recorded now, before anything can change the checkout under a long run
    task = task or load_task(config)
    dense, checkpoint, reused = train_dense(config, task, progress=progress)
    dense_seconds = time.perf_counter() - started
    reference = evaluate_groups(dense, task.train.batches(512), groups=task.spec)
    dense_test = evaluate_groups(dense, task.test.batches(512), groups=task.spec)
    model, pruner, log = finetune(
        config, task, dense, reference, progress=progress, resume=resume, dense_test=dense_test
    )
    names = task.spec.group_names
    reports = {
        "train": DisparityReport.from_metrics(
            reference,
            evaluate_groups(model, task.train.batches(512), groups=task.spec),
            group_names=names,
            tolerance=config.tolerance,
            never_feasible=log[-1].get("never_feasible") if log else None,  # constraints are on train
        ),
        "test": DisparityReport.from_metrics(
            dense_test,
            evaluate_groups(model, task.test.batches(512), groups=task.spec),
            group_names=names,
            tolerance=config.tolerance,
        ),
    }
    results = {
        "config": {**asdict(config), "output_dir": _portable(config.output_dir)},
        "run": config.run_name(),
        "versions": {
            "ceag_cooper": __version__,
            "torch": torch.__version__,
            "cooper": cooper.__version__,
            "python": platform.python_version(),
            "code": code_version(),
        },
        "final_iterate": log[-1].get("final_iterate", "last") if log else "last",
        "data_fingerprint": data_fingerprint(task),
        "dense_checkpoint": _portable(checkpoint),
        "dense_reused": reused,
        "timings_s": {"dense": round(dense_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "sparsity": round(pruner.measured_sparsity(), 4),
        "groups": names,
        "reports": {split: report.to_dict() for split, report in reports.items()},
        "log": log,
    }
    path = Path(config.output_dir) / "results" / f"{config.run_name()}.json"
    text = (json.dumps(results, indent=2) + "\n").encode()
    atomic_write(path, lambda handle: handle.write(text))  # readers never see half a results file
    results["results_path"] = str(path)
    return results


def _portable(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (committed results hold no machine paths)."""
    root = Path(__file__).resolve().parent.parent
    resolved = Path(path).resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


@functools.cache
def code_version() -> str:
    """The git commit of the code that runs (``+dirty`` with uncommitted changes), or ``"unknown"``.

    Read once per process (the first run calls it when it starts): later commits to the checkout do
    not change what the loaded code is.
    """
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "ceag_cooper"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def with_overrides(config: ExperimentConfig, **overrides: Any) -> ExperimentConfig:
    """A copy of ``config`` with some fields replaced (validated again)."""
    return replace(config, **overrides)
