"""Fine-tuning one cell: gradual pruning, the method's problem, epoch logs, checkpoints, the returned iterate."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ceag_cooper.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ceag_cooper.experiments.config import ExperimentConfig
from ceag_cooper.experiments.dense import augment
from ceag_cooper.experiments.naming import ADDED_FIELDS, PLACEMENT_FIELDS
from ceag_cooper.experiments.registry import get_method
from ceag_cooper.experiments.tasks import Task, data_fingerprint, heldout_split
from ceag_cooper.groups import GroupSpec
from ceag_cooper.metrics import DisparityReport, GroupMetrics, GroupMetricsAccumulator, evaluate_groups
from ceag_cooper.optim import build_optimizer
from ceag_cooper.problems import Distillation, GroupFairnessProblem
from ceag_cooper.progress import progress_bar
from ceag_cooper.pruning import ChannelPruner, GradualSchedule, MagnitudePruner, MaskEngine, recalibrate_batchnorm
from ceag_cooper.selection import FeasibilityMonitor, IterateSelector

__all__ = ["finetune", "iterate_policy", "make_problem", "primal_lr"]


def make_problem(
    config: ExperimentConfig,
    reference: GroupMetrics,
    start_step: int,
    heldout: tuple[Any, GroupMetrics] | None = None,
    *,
    spec: GroupSpec | None = None,
    teacher: torch.nn.Module | None = None,
) -> GroupFairnessProblem:
    """The Cooper problem of ``config.method``, built by its registry entry.

    ``heldout``: the held-out batches and their dense reference; ``spec`` turns the held-out
    batches' attributes into group ids (checked against the references by the problem);
    ``teacher``: the dense model, on the run's device (needed when ``config.distill_weight > 0``).
    """
    options: dict[str, Any] = {}
    if heldout is not None:
        options = {"heldout": heldout[0], "heldout_reference": heldout[1], "heldout_spec": spec}
    if config.distill_weight > 0:
        if teacher is None:
            raise ValueError("`distill_weight > 0` distills the dense model: pass make_problem(..., teacher=dense).")
        options["distillation"] = Distillation(
            teacher, weight=config.distill_weight, temperature=config.distill_temperature
        )
    return get_method(config.method).make_problem(config, reference, start_step, options)


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


def iterate_policy(config: ExperimentConfig, problem: GroupFairnessProblem) -> str:
    """Which model the run returns: ``"last"``, ``"best_test"`` or ``"feasible_first"`` (see :class:`Method`)."""
    policy = get_method(config.method).iterate
    if policy != "config":
        return policy
    constrained = problem.constraint_type is not None
    return "feasible_first" if constrained and config.final_iterate == "feasible_best" else "last"


def finetune(
    config: ExperimentConfig,
    task: Task,
    dense: torch.nn.Module,
    reference: GroupMetrics,
    *,
    progress: bool = True,
    resume: bool = False,
    dense_test: GroupMetrics | None = None,
) -> tuple[torch.nn.Module, MaskEngine, list[dict[str, Any]]]:
    """Prune gradually and fine-tune with ``config.method``; returns model, pruner and epoch log.

    A checkpoint is written after every epoch (``output_dir/checkpoints/<run>.pt``); with
    ``resume=True`` the run continues from it, bit-identically on CPU. The last log entry says
    which iterate was returned (``"final_iterate"``) when the run selects one.
    """
    torch.manual_seed(config.seed + 1)
    device = torch.device(config.device)
    model = copy.deepcopy(dense).to(device)
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
    if config.pruning == "channel":  # whole channels via torch-pruning; sparsity is the fraction of channels
        pruner: MaskEngine = ChannelPruner(model, train.inputs[:2].to(device), schedule=schedule)
    else:
        pruner = MagnitudePruner(model, schedule=schedule, prune_last_linear=config.model == "mlp")
    # Pruning updates at the start of epochs 0 .. prune_epochs - 1; the last one starts mitigation.
    start = 0 if config.mitigate_during_pruning else (config.prune_epochs - 1) * steps_per_epoch
    teacher = copy.deepcopy(dense).to(device).eval() if config.distill_weight > 0 else None
    held = heldout[:2] if heldout is not None else None
    problem = make_problem(config, reference, start, held, spec=task.spec, teacher=teacher)
    policy = iterate_policy(config, problem)
    primal = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    pruner.attach(primal)
    optimizer = build_optimizer(problem, primal, dual_lr=config.dual_lr, **_dual_settings(config))
    names = task.spec.group_names
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    selector = IterateSelector(tolerance=config.tolerance) if policy == "feasible_first" else None
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
        running = GroupMetricsAccumulator(reference.num_groups, device=device)  # no host copy per step
        model.train()
        started = time.perf_counter()
        for x, y, a in train.batches(config.batch_size, seed=config.seed * 1000 + 500 + epoch):
            clean = x.to(device)
            x = augment(x, generator).to(device) if config.augment else clean  # augmented on the CPU generator
            ids = task.spec.group_ids(a)
            kwargs = {"model": model, "inputs": x, "targets": y.to(device), "group_ids": ids.to(device)}
            if problem.constraint_estimate == "eval":
                kwargs["estimate_inputs"] = clean
            rollout = optimizer.roll(compute_cmp_state_kwargs=kwargs)
            stats = rollout.cmp_state.misc["stats"]
            loss = stats.per_sample_loss.detach()
            if problem.distillation is not None:  # the log's training loss stays cross-entropy, comparable
                loss = torch.nn.functional.cross_entropy(stats.logits.detach(), kwargs["targets"], reduction="none")
            running.update_from_values(loss, stats.per_sample_correct, stats.group_ids)
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
            **_judged_entry(train_eval, config.iterate_min_count),
            "test_accuracy": round(float(test_metrics.accuracy), 4),
            "test_max_psi": round(test_report.max_psi, 4),
            **_constraint_log(problem, names, violation),
            "seconds": round(seconds, 2),
        }
        log.append(entry)
        if policy == "best_test" and final_sparsity:
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
            psi = judged.max_psi
            if config.iterate_min_count:  # over the groups large enough to judge (all of them if none is)
                among = judged.max_psi_among(min_count=config.iterate_min_count)
                psi = psi if math.isnan(among) else among
            selector.consider(f"epoch {epoch}", judged.sparse_overall, psi, model.state_dict())
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


def _judged_entry(train_eval: DisparityReport | None, min_count: int) -> dict[str, Any]:
    """The log's ``train_max_psi_judged``: max ψ over the groups the iterate choice judges (None if none is)."""
    if train_eval is None or not min_count:
        return {}
    value = train_eval.max_psi_among(min_count=min_count)
    return {"train_max_psi_judged": None if math.isnan(value) else round(value, 4)}


def _check_same_run(path: Path, saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint of another configuration or other data (was resumed silently)."""
    if saved is None:  # written before identities were recorded
        return
    if saved["data"] != current["data"]:
        raise CheckpointError(
            f"{path} was written for other data (fingerprint {saved['data']}, now {current['data']}); "
            "resume needs the same data set: delete the checkpoint to start afresh."
        )
    # A field added since the checkpoint was written is unchanged if it holds the value runs had before it.
    saved_config = {**ADDED_FIELDS, **saved["config"]}
    changed = sorted(
        k for k in current["config"] if k not in PLACEMENT_FIELDS and json.dumps(saved_config.get(k), default=list)
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
