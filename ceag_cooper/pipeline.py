"""The reference experiment: dense training, gradual pruning, mitigation, evaluation.

``train dense -> (save) -> gradual magnitude pruning -> fine-tune with NFT | NFT+ES | EL | EL+RB |
CEAG (no RB) | CEAG -> evaluate on train and test -> DisparityReport``. The dense checkpoint is
keyed by everything that determines it, so it is trained once per seed and reused by every
method and sparsity. Used by the CLI, the examples and the benchmarks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import cooper
import numpy as np
import torch
import torch.nn.functional as F

from ceag_cooper import __version__
from ceag_cooper._validation import check_non_negative_float
from ceag_cooper.checkpoint import load_checkpoint, save_checkpoint
from ceag_cooper.data import GroupDataset, load_adult, load_omniglot, load_utkface, make_group_imbalanced_task
from ceag_cooper.groups import GroupSpec
from ceag_cooper.models import MLP, SmallCNN, cifar_resnet
from ceag_cooper.optim import build_optimizer
from ceag_cooper.problems import CEAG, EqualizedLoss, GroupFairnessProblem, TwoSidedCEAG, Unconstrained
from ceag_cooper.progress import progress_bar
from ceag_cooper.pruning import GradualSchedule, MagnitudePruner, check_sparsity, recalibrate_batchnorm
from ceag_cooper.report import DisparityReport
from ceag_cooper.selection import Candidate, FeasibilityMonitor, select_iterate
from ceag_cooper.stats import GroupMetrics, GroupMetricsAccumulator, evaluate_groups

__all__ = ["METHODS", "ExperimentConfig", "load_task", "run_experiment", "train_dense"]

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

_DENSE_FIELDS = (
    "task", "target", "image_size", "model", "width", "seed", "batch_size",
    "dense_epochs", "dense_lr", "weight_decay", "augment", "subset",
)  # fmt: skip


@dataclass
class ExperimentConfig:
    """Everything that defines one (task, sparsity, method, seed) run. Defaults: the demo's."""

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
    method: str = "ceag"
    tolerance: float = 0.01
    buffer_size: int = 40
    dual_lr: float = 0.01
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
        check_sparsity(self.sparsity)
        check_non_negative_float(self.tolerance, "tolerance")
        if self.group_mode not in ("intersectional", "marginal"):
            raise ValueError(f"`group_mode` must be 'intersectional' or 'marginal', got {self.group_mode!r}.")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose among {list(METHODS)}.")
        if self.prune_epochs < 1 or self.finetune_epochs < 0 or self.dense_epochs < 0:
            raise ValueError("`prune_epochs` must be >= 1, `finetune_epochs` and `dense_epochs` >= 0.")

    def dense_key(self) -> str:
        """Hash of the fields that determine the dense model."""
        fields_ = {k: getattr(self, k) for k in _DENSE_FIELDS}
        if self.validation:  # only when on: keys of earlier runs stay valid
            fields_["validation"] = True
        if self.uses_heldout:  # trained without the held-out part (see `train_dense`)
            fields_["heldout_fraction"] = HELDOUT_FRACTION
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
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True)["model"])
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
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "dense_config": {k: getattr(config, k) for k in _DENSE_FIELDS}}, temporary)
    temporary.replace(path)
    return model, path, False


def make_problem(
    config: ExperimentConfig, reference: GroupMetrics, start_step: int, heldout: tuple[Any, GroupMetrics] | None = None
) -> GroupFairnessProblem:
    """The Cooper problem of ``config.method`` (``heldout``: batches and dense reference)."""
    if config.method == "ceag_two_sided":
        return TwoSidedCEAG(reference=reference, tolerance=config.tolerance, buffer_size=config.buffer_size,
                            start_step=start_step)  # fmt: skip
    if config.method.startswith("ceag_heldout"):
        batches, heldout_reference = heldout
        kind = TwoSidedCEAG if config.method == "ceag_heldout_two_sided" else CEAG
        return kind(reference=reference, tolerance=config.tolerance, buffer_size=config.buffer_size,
                    start_step=start_step, heldout=batches, heldout_reference=heldout_reference)  # fmt: skip
    if config.method in ("nft", "nft_es"):
        return Unconstrained(num_groups=reference.num_groups)
    if config.method in ("el", "el_rb"):
        buffer = config.buffer_size if config.method == "el_rb" else None
        return EqualizedLoss(reference=reference, buffer_size=buffer, start_step=start_step)
    buffer = config.buffer_size if config.method in ("ceag", "ceag_detach_overall") else None
    return CEAG(reference=reference, tolerance=config.tolerance, buffer_size=buffer, start_step=start_step,
                detach_overall=config.method == "ceag_detach_overall")  # fmt: skip


def _top_multipliers(problem: GroupFairnessProblem, names: list[str], count: int = 3) -> list[list[Any]]:
    values = problem.multiplier_values
    if values is None:
        return []
    order = values.abs().argsort(descending=True)[:count].tolist()
    return [[names[i % len(names)], round(float(values[i]), 4)] for i in order]


def finetune(
    config: ExperimentConfig,
    task: Task,
    dense: torch.nn.Module,
    reference: GroupMetrics,
    *,
    progress: bool = True,
    resume: bool = False,
) -> tuple[torch.nn.Module, MagnitudePruner, list[dict[str, Any]]]:
    """Prune gradually and fine-tune with ``config.method``; returns model, pruner and epoch log.

    A checkpoint is written after every epoch (``output_dir/checkpoints/<run>.pt``); with
    ``resume=True`` the run continues from it, bit-identically on CPU.
    """
    torch.manual_seed(config.seed + 1)
    model = copy.deepcopy(dense)
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
    optimizer = build_optimizer(problem, primal, dual_lr=config.dual_lr)
    names = task.spec.group_names
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    candidates: list[Candidate] = []
    monitor = FeasibilityMonitor(names=task.spec.group_names) if problem.constraint_type is not None else None
    states: list[dict[str, torch.Tensor]] = []
    log: list[dict[str, Any]] = []
    generator = torch.Generator().manual_seed(config.seed + 2)
    checkpoint = Path(config.output_dir) / "checkpoints" / f"{config.run_name()}.pt"
    objects = {"model": model, "problem": problem, "optimizer": optimizer, "pruner": pruner, "generator": generator}
    first = 0
    if resume and checkpoint.exists():
        state = load_checkpoint(checkpoint, **objects)
        first, log = state["epoch"] + 1, state["extra"]["log"]
        if "best_accuracy" in state["extra"]:
            best = (state["extra"]["best_accuracy"], state["extra"]["best_state"])
        candidates = [Candidate(*c) for c in state["extra"].get("candidates", [])]
        states = state["extra"].get("candidate_states", [])
    epochs = range(first, config.prune_epochs + config.finetune_epochs)
    for epoch in progress_bar(epochs, description=f"{config.method}") if progress else epochs:
        sparsity = pruner.step(epoch + 1)
        running = GroupMetricsAccumulator(reference.num_groups)
        model.train()
        started = time.perf_counter()
        for x, y, a in train.batches(config.batch_size, seed=config.seed * 1000 + 500 + epoch):
            x = _augment(x, generator) if config.augment else x
            rollout = optimizer.roll(
                compute_cmp_state_kwargs={
                    "model": model,
                    "inputs": x,
                    "targets": y,
                    "group_ids": task.spec.group_ids(a),
                }
            )
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
        test_metrics = evaluate_groups(model, task.test.batches(512), groups=task.spec)
        entry = {
            "epoch": epoch,
            "sparsity": round(sparsity, 4),
            "mitigation": problem.constraint_type is not None and problem.num_steps > problem.start_step,
            "train_loss_running": round(float(running.compute().loss), 4),
            "train_accuracy_running": round(train_running.sparse_overall, 4),
            "train_max_psi_running": round(train_running.max_psi, 4),
            "test_accuracy": round(float(test_metrics.accuracy), 4),
            "top_multipliers": _top_multipliers(problem, names),
            "seconds": round(seconds, 2),
        }
        log.append(entry)
        if config.method == "nft_es" and epoch >= config.prune_epochs - 1:
            accuracy = float(test_metrics.accuracy)
            if best is None or accuracy > best[0]:
                best = (accuracy, {k: v.clone() for k, v in model.state_dict().items()})
        if config.method == "ceag_heldout_select" and epoch >= config.prune_epochs - 1:
            held_report = DisparityReport.from_metrics(
                heldout[1], evaluate_groups(model, heldout[2].batches(512), groups=task.spec)
            )
            entry["heldout_accuracy"], entry["heldout_max_psi"] = held_report.sparse_overall, held_report.max_psi
            candidates.append(Candidate(f"epoch {epoch}", held_report.sparse_overall, held_report.max_psi))
            states.append({k: v.clone() for k, v in model.state_dict().items()})
        extra: dict[str, Any] = {"log": log}
        if candidates:
            extra.update(candidates=[[c.name, c.accuracy, c.max_psi] for c in candidates], candidate_states=states)
        if best is not None:
            extra.update(best_accuracy=best[0], best_state=best[1])
        save_checkpoint(checkpoint, **objects, counters={"epoch": epoch}, extra=extra)
    if best is not None:  # NFT+ES: the best iterate at final sparsity, by test accuracy (as the paper)
        model.load_state_dict(best[1])
    if monitor is not None and log:
        log[-1]["never_feasible"] = monitor.never_feasible()
    if candidates:  # constrained model selection on the held-out split
        chosen = select_iterate(candidates, tolerance=config.tolerance)
        model.load_state_dict(states[chosen])
        log[-1]["selected_iterate"] = candidates[chosen].name
    return model, pruner, log


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
    task = task or load_task(config)
    dense, checkpoint, reused = train_dense(config, task, progress=progress)
    dense_seconds = time.perf_counter() - started
    reference = evaluate_groups(dense, task.train.batches(512), groups=task.spec)
    dense_test = evaluate_groups(dense, task.test.batches(512), groups=task.spec)
    model, pruner, log = finetune(config, task, dense, reference, progress=progress, resume=resume)
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
        "config": asdict(config),
        "run": config.run_name(),
        "versions": {
            "ceag_cooper": __version__,
            "torch": torch.__version__,
            "cooper": cooper.__version__,
            "python": platform.python_version(),
        },
        "dense_checkpoint": str(checkpoint),
        "dense_reused": reused,
        "timings_s": {"dense": round(dense_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "sparsity": round(pruner.measured_sparsity(), 4),
        "groups": names,
        "reports": {split: report.to_dict() for split, report in reports.items()},
        "log": log,
    }
    path = Path(config.output_dir) / "results" / f"{config.run_name()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    results["results_path"] = str(path)
    return results


def with_overrides(config: ExperimentConfig, **overrides: Any) -> ExperimentConfig:
    """A copy of ``config`` with some fields replaced (validated again)."""
    return replace(config, **overrides)
