"""Run names: readable, file-name safe, and stable for the result files of earlier protocols.

Every committed grid cell is found again by its name, so a field added to
:class:`~ceag_cooper.experiments.ExperimentConfig` must not rename the cells that ran before it
existed. The rules for that live here, not in the config: a field added later is left out of the
hash while it holds the value the old runs had (:data:`LEGACY_PROTOCOL`); a test keeps every
committed cell's name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ceag_cooper.experiments.config import ExperimentConfig

__all__ = ["ADDED_FIELDS", "LEGACY_PROTOCOL", "PLACEMENT_FIELDS", "run_name"]

PLACEMENT_FIELDS = ("data_dir", "cache_dir", "output_dir", "device")
"""Fields that say where a run's files live and where it runs, not what it is: left out of run names,
of the resume check, and of settings read back from another machine's results."""

ADDED_FIELDS: dict[str, Any] = {
    "lr_milestones": (),
    "constraint_estimate": "train",
    "margin": 0.0,
    "dual_optimizer": "sgd",
    "nupi_kp": 0.0,
    "nupi_ema": 0.0,
    "final_iterate": "last",
    "el_form": "signed",
    "resolution_z": 0.0,
    "fit_buffers_to_groups": False,
    "pruning": "unstructured",
    "iterate_min_count": 0,
    "dual_step_scale": "uniform",
    "distill_weight": 0.0,
    "distill_temperature": 2.0,
}
"""Config fields added after runs were committed, with the value those runs had: at that value a
field is left out of :func:`run_name` (their names and result files stay valid), and a checkpoint
written before the field existed is read as holding it (resume)."""
LEGACY_PROTOCOL: dict[str, Any] = {"finetune_epochs": 4, **ADDED_FIELDS}
"""The fine-tuning protocol before issue #13 (constant primal LR for 4 epochs, training-mode
estimates, no margin, SGD dual, last iterate, signed EL): the grids that ran with it set these values."""


def run_name(config: ExperimentConfig) -> str:
    """``<task>-<target>-by-<groups>-s<sparsity>-<method>-seed<seed>[-validation]-<hash of the settings>``."""
    groups = "x".join(config.protected)
    settings = {k: v for k, v in asdict(config).items() if k not in PLACEMENT_FIELDS}
    if not config.validation:  # added later: left out when off, so earlier run names stay valid
        del settings["validation"]
    if config.uses_heldout:  # their dense model no longer sees the held-out part: new runs
        settings["dense_without_heldout"] = True
    if not config.distill_weight:  # without distillation its temperature changes nothing
        settings["distill_temperature"] = ADDED_FIELDS["distill_temperature"]
    for key, old in ADDED_FIELDS.items():  # fields added later: left out at their old value
        if settings[key] == old:
            del settings[key]
    if not config.lr_milestones:  # the old constant-LR runs had no schedule fields at all
        del settings["lr_gamma"]
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:6]
    task = {"utkface": "utk"}.get(config.task, config.task)  # short: file names stay readable
    name = f"{task}-{config.target}-by-{groups}-s{round(100 * config.sparsity)}-{config.method}-seed{config.seed}"
    name = f"{name}-validation" if config.validation else name
    return f"{name}-{digest}"
