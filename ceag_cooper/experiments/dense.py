"""The dense model: built from the config, trained once per seed, cached under a key of what determines it."""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ceag_cooper._atomic import atomic_write
from ceag_cooper.checkpoint import CheckpointError
from ceag_cooper.experiments.config import DENSE_FIELDS, HELDOUT_FRACTION, ExperimentConfig
from ceag_cooper.experiments.provenance import code_version
from ceag_cooper.experiments.tasks import Task, heldout_split
from ceag_cooper.models import MLP, SmallCNN, cifar_resnet
from ceag_cooper.progress import progress_bar

__all__ = ["augment", "build_model", "dense_code_fingerprint", "dense_key", "train_dense"]


def dense_key(config: ExperimentConfig) -> str:
    """Hash of the fields that determine the dense model, and of the code that trains it."""
    fields_ = {k: getattr(config, k) for k in DENSE_FIELDS}
    if config.validation:  # only when on: keys of earlier runs stay valid
        fields_["validation"] = True
    if config.uses_heldout:  # trained without the held-out part (see `train_dense`)
        fields_["heldout_fraction"] = HELDOUT_FRACTION
    fields_["code"] = dense_code_fingerprint()  # a change to the code that trains it retrains it
    text = json.dumps(fields_, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@functools.cache
def dense_code_fingerprint() -> str:
    """A hash of the source that determines a dense model.

    The models, the data loaders, and the functions of this module that build, augment and train
    it. Part of :func:`dense_key`, so a cached dense model is reused across commits only while that
    code is unchanged (the functions' source text is hashed).
    """
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted([*(package / "models").glob("*.py"), *(package / "data").glob("*.py")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for function in (build_model, _user_model, augment, train_dense):
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()[:12]


def build_model(config: ExperimentConfig, task: Task) -> torch.nn.Module:
    """The model named by ``config.model`` for the task's inputs and classes.

    Names: ``small_cnn``, ``resnet20`` / ``resnet56`` (CIFAR ResNets, depth 6n + 2), ``mlp``,
    ``mobilenet_v2`` / ``resnet18`` (torchvision), or ``package.module:factory`` for a model of
    your own: ``factory(num_classes=..., input_shape=...)`` must return an ``nn.Module`` (the
    module is imported, so it must be importable from where the run starts).
    """
    classes = task.train.num_classes
    if ":" in config.model:
        return _user_model(config.model, classes, task.input_shape)
    if config.model in ("mobilenet_v2", "resnet18"):  # the paper's UTKFace model, and a classic
        try:
            import torchvision
        except ImportError as error:
            raise ValueError(
                f"model {config.model!r} needs torchvision: pip install 'ceag-cooper[vision]' "
                "(torch==2.14.1 torchvision==0.29.1 on these machines)."
            ) from error
        return getattr(torchvision.models, config.model)(num_classes=classes)
    if config.model == "small_cnn":
        return SmallCNN(classes, width=config.width, in_channels=task.input_shape[0])
    if config.model.startswith("resnet"):
        return cifar_resnet(int(config.model[6:]), classes, width=config.width // 2, in_channels=task.input_shape[0])
    if config.model == "mlp":
        return MLP(int(np.prod(task.input_shape)), classes, hidden=(config.width * 4, config.width * 4))
    raise ValueError(
        f"unknown model {config.model!r}; choose among small_cnn, resnet20, resnet56, mlp, mobilenet_v2, resnet18, "
        "or package.module:factory for your own."
    )


def _user_model(spec: str, classes: int, input_shape: tuple[int, ...]) -> torch.nn.Module:
    """``factory(num_classes=..., input_shape=...)`` named by ``"package.module:factory"``."""
    module_name, _, attribute = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"model {spec!r}: cannot import {attribute!r} from {module_name!r} ({type(error).__name__}: {error}); "
            "give package.module:factory of an importable module."
        ) from error
    model = factory(num_classes=classes, input_shape=tuple(input_shape))
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model {spec!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


def augment(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips of image batches."""
    if inputs.dim() != 4:
        return inputs
    flip = torch.rand(inputs.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), inputs.flip(3), inputs)


def train_dense(config: ExperimentConfig, task: Task, *, progress: bool = True) -> tuple[torch.nn.Module, Path, bool]:
    """Train the dense model, or load it if a checkpoint for the same dense settings exists.

    Returns:
        ``(model, checkpoint_path, reused)``.
    """
    path = Path(config.output_dir) / "dense" / f"{config.task}-{config.model}-seed{config.seed}-{dense_key(config)}.pt"
    if config.uses_heldout:
        # The held-out part must be unseen by the dense model too: its reference accuracies on data
        # it was trained on are inflated, most for small groups, which then look violated forever.
        task = replace(task, train=heldout_split(config, task)[0])
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = build_model(config, task)
    dense_config = {k: getattr(config, k) for k in DENSE_FIELDS}
    data = task.train.fingerprint()
    if path.exists():
        model.load_state_dict(_load_dense(path, dense_config, data))
        return model.to(device), path, True
    model.to(device)
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
            x = augment(x, generator) if config.augment else x  # on the CPU: the generator's device
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
            optimizer.step()
            scheduler.step()
    weights = {k: v.cpu() for k, v in model.state_dict().items()}  # loads on any device
    payload = {"model": weights, "dense_config": dense_config, "data": data, "code": code_version()}
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
