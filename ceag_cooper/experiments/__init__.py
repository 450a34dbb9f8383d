"""The experiment harness: the paper's pipeline on real data, built on the core library.

``train dense -> (cache) -> gradual pruning (magnitude or channels) -> fine-tune with a registered method ->
evaluate on train and test -> DisparityReport -> results JSON``. Used by the CLI, the examples
and the benchmarks. The core (:mod:`ceag_cooper.problems`, :mod:`~ceag_cooper.metrics`, ...)
never imports this package (a test checks it).

Modules: :mod:`~ceag_cooper.experiments.config` (:class:`ExperimentConfig`),
:mod:`~ceag_cooper.experiments.registry` (the methods), :mod:`~ceag_cooper.experiments.tasks`
(data), :mod:`~ceag_cooper.experiments.dense`, :mod:`~ceag_cooper.experiments.finetuning`,
:mod:`~ceag_cooper.experiments.run`, :mod:`~ceag_cooper.experiments.naming` (run names),
:mod:`~ceag_cooper.experiments.provenance`, :mod:`~ceag_cooper.experiments.results` (results files,
their tables and settings files), :mod:`~ceag_cooper.experiments.cli`.
"""

from ceag_cooper.experiments.config import (
    DENSE_FIELDS,
    HELDOUT_FRACTION,
    LEGACY_PROTOCOL,
    VALIDATION_SEED,
    ExperimentConfig,
)
from ceag_cooper.experiments.dense import build_model, dense_code_fingerprint, dense_key, train_dense
from ceag_cooper.experiments.finetuning import finetune, iterate_policy, make_problem, primal_lr
from ceag_cooper.experiments.provenance import code_version, machine, portable_path, weights_digest
from ceag_cooper.experiments.registry import METHODS, Method, get_method, register_method
from ceag_cooper.experiments.run import run_experiment
from ceag_cooper.experiments.tasks import TASKS, Task, data_fingerprint, heldout_split, load_task

__all__ = [
    "DENSE_FIELDS",
    "HELDOUT_FRACTION",
    "LEGACY_PROTOCOL",
    "METHODS",
    "TASKS",
    "VALIDATION_SEED",
    "ExperimentConfig",
    "Method",
    "Task",
    "build_model",
    "code_version",
    "data_fingerprint",
    "dense_code_fingerprint",
    "dense_key",
    "finetune",
    "get_method",
    "heldout_split",
    "iterate_policy",
    "load_task",
    "machine",
    "make_problem",
    "portable_path",
    "primal_lr",
    "register_method",
    "run_experiment",
    "train_dense",
    "weights_digest",
]
