"""Structured (channel) pruning with torch-pruning, masked while fine-tuning, removed at the end.

torch-pruning chooses coupled channels, the mask engine masks them during fine-tuning, and
:meth:`ChannelPruner.finalize` removes them physically.

torch-pruning's ``DependencyGraph`` couples channels across BatchNorm, residual additions,
concatenations and flattening, so a pruned channel is removed from every layer that produces or
consumes it. While fine-tuning, the channels are only *masked* (rows of the producing weights
and BatchNorm affine parameters, columns of the consuming weights): the model keeps its shapes,
so the optimizer, Cooper's optimizer state and the replay buffers need no rebuild.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import nn

from ceag_cooper._modes import preserved_modes
from ceag_cooper.pruning._channel_checks import (
    FINALIZE_TOLERANCE,  # noqa: F401  (importable from here, as before the split)
    MASKABLE,
    channel_importance,
    check_maskable,
    check_same_outputs,
    eval_outputs,
)
from ceag_cooper.pruning.engine import MaskEngine
from ceag_cooper.pruning.schedules import SparsitySchedule, check_sparsity

__all__ = ["ChannelImportance", "ChannelPruner"]

ChannelImportance = Literal["magnitude", "taylor", "bn_scale"]


class ChannelPruner(MaskEngine):
    """Prune whole channels, chosen by torch-pruning, masked during fine-tuning, removed at the end.

    ``sparsity`` here is the fraction of *channels* removed from each prunable layer (or
    globally, with ``global_pruning=True``), not the fraction of weights.

    Args:
        model: the model (masked in place; :meth:`finalize` shrinks it in place).
        example_inputs: a batch that ``model`` accepts, used to trace the dependency graph.
        schedule: a :class:`SparsitySchedule` over channel fractions.
        importance: ``"magnitude"`` (L2 of the coupled weights), ``"taylor"`` (needs gradients:
            call ``loss.backward()`` before :meth:`step`) or ``"bn_scale"``.
        ignored_layers: module names whose output channels are never pruned (default: the last
            linear layer, i.e. the classifier's outputs).
        global_pruning: rank channels across layers instead of within each layer.
        max_layer_sparsity: with ``global_pruning``, the largest channel fraction removed from
            any one layer.
        pruning_options: more keyword arguments for torch-pruning's ``MetaPruner`` (e.g.
            ``num_heads``, ``unwrapped_parameters``, ``round_to``, ``customized_pruners``), for
            architectures its defaults do not cover; :meth:`finalize` still checks the result.

    Example:
        >>> from ceag_cooper.pruning import OneShotSchedule
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
        >>> x = torch.randn(2, 3, 6, 6)
        >>> pruner = ChannelPruner(net, x, schedule=OneShotSchedule(0.5))
        >>> _ = pruner.step(0)
        >>> masked = net.eval()(x)
        >>> small = pruner.finalize()
        >>> small[0].out_channels, torch.allclose(small(x), masked, atol=1e-5)
        (4, True)
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        schedule: SparsitySchedule,
        importance: ChannelImportance = "magnitude",
        ignored_layers: Sequence[str] | None = None,
        global_pruning: bool = False,
        max_layer_sparsity: float = 0.95,
        pruning_options: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(schedule, SparsitySchedule):
            raise TypeError(f"`schedule` must be a SparsitySchedule, got {type(schedule).__name__}.")
        check_sparsity(max_layer_sparsity, "max_layer_sparsity")
        self._importance = channel_importance(importance)
        modules = dict(model.named_modules())
        if ignored_layers is None:
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            ignored_layers = linears[-1:]
        for name in ignored_layers:
            if name not in modules:
                raise ValueError(f"`ignored_layers` names {name!r}, which is not a module of the model.")
        names = [
            f"{module_name}.{param_name}" if module_name else param_name
            for module_name, module in modules.items()
            if isinstance(module, MASKABLE)
            for param_name, param in module.named_parameters(recurse=False)
            if param.requires_grad
        ]
        super().__init__(model, names)
        self.example_inputs = example_inputs
        self.schedule = schedule
        self.importance = importance
        self.ignored_layers = list(ignored_layers)
        self.global_pruning = global_pruning
        self.max_layer_sparsity = max_layer_sparsity
        self.pruning_options = dict(pruning_options or {})
        reserved = {"importance", "pruning_ratio", "global_pruning", "max_pruning_ratio", "ignored_layers"}
        if reserved & set(self.pruning_options):
            raise ValueError(
                f"`pruning_options` may not set {sorted(reserved & set(self.pruning_options))}: they are this "
                "pruner's own arguments (importance, schedule, global_pruning, max_layer_sparsity, ignored_layers)."
            )
        self.current_step: int | None = None
        self.sparsity = 0.0
        self._applied_target = 0.0
        self.finalized = False
        self._pruned: dict[str, set[int]] = {}  # root module name -> pruned output channels
        self._module_names = {m: n for n, m in modules.items()}
        self.dense_macs, self.dense_params = self._count()

    def _count(self) -> tuple[int, int]:
        try:
            with preserved_modes(self.model):  # torch-pruning switches the model to eval mode
                macs, params = tp.utils.count_ops_and_params(self.model, self.example_inputs)
        except Exception as error:
            raise self._untraceable(error) from error
        return int(macs), int(params)

    def _untraceable(self, error: Exception) -> ValueError:
        return ValueError(
            f"torch-pruning could not trace {type(self.model).__name__} with the given example inputs ({error}); "
            "check that `example_inputs` is a batch the model accepts, or use unstructured MagnitudePruner."
        )

    def _meta_pruner(self, sparsity: float) -> tp.pruner.MetaPruner:
        modules = dict(self.model.named_modules())
        try:
            return tp.pruner.MetaPruner(
                self.model,
                self.example_inputs,
                importance=self._importance,
                pruning_ratio=sparsity,
                global_pruning=self.global_pruning,
                max_pruning_ratio=self.max_layer_sparsity,
                ignored_layers=[modules[n] for n in self.ignored_layers],
                **self.pruning_options,
            )
        except Exception as error:
            raise self._untraceable(error) from error

    def _check_item(self, module: nn.Module) -> bool:
        """Whether ``module`` has weights to mask; raises for a layer that masking cannot prune exactly."""
        return check_maskable(module, self._module_names.get(module, type(module).__name__))

    def _mask_item(self, module: nn.Module, handler: Any, idxs: list[int], graph: tp.DependencyGraph) -> None:
        if not self._check_item(module):
            return
        name = self._module_names.get(module, type(module).__name__)
        out = graph.is_out_channel_pruning_fn(handler)
        depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{name}.{param_name}" if name else param_name
            if full not in self.masks:
                continue
            keep = torch.ones_like(param, dtype=torch.bool)
            if out or depthwise:
                keep[idxs] = False  # rows of the producer (weight, bias, norm scale and shift)
            elif param.dim() > 1:
                keep[:, idxs] = False  # columns of the consumer; its bias is untouched
            else:
                continue
            self.restrict(full, keep)

    def prune_to(self, sparsity: float) -> float:
        """Mask the least important channels so that ``sparsity`` of them are pruned.

        Returns:
            The fraction of prunable output channels masked afterwards.
        """
        if self.finalized:
            raise RuntimeError("the model was finalized: its channels are already removed.")
        check_sparsity(sparsity)
        pruner = self._meta_pruner(sparsity)
        try:  # every group first, then the checks, then the masks: a refusal leaves the masks as they were
            groups = [
                [(dep.target.module, dep.handler, tp._helpers.to_plain_idxs(idxs)) for dep, idxs in group]
                for group in pruner.step(interactive=True)
            ]
        except Exception as error:  # torch-pruning could not group this model's channels
            raise ValueError(
                f"torch-pruning could not choose channels in {type(self.model).__name__} ({type(error).__name__}: "
                f"{error}); layers that reshape their channels (attention heads, typically) need `ignored_layers` "
                "or torch-pruning's settings through `pruning_options`; or prune with unstructured MagnitudePruner."
            ) from error
        for items in groups:
            for module, _, _ in items:
                self._check_item(module)
        for items in groups:
            root, _, root_idxs = items[0]
            self._pruned.setdefault(self._module_names[root], set()).update(int(i) for i in root_idxs)
            for module, handler, idxs in items:
                self._mask_item(module, handler, idxs, pruner.DG)
        self.apply_masks()
        self.sparsity = self.channel_sparsity()
        return self.sparsity

    def channel_sparsity(self) -> float:
        """Fraction of output channels masked, over the layers that had channels pruned."""
        modules = dict(self.model.named_modules())
        total = sum(getattr(modules[n], "out_channels", getattr(modules[n], "out_features", 0)) for n in self._pruned)
        pruned = sum(len(v) for v in self._pruned.values())
        return pruned / total if total else 0.0

    def finalize(self) -> nn.Module:
        """Remove the masked channels physically (in place) and return the smaller model.

        Its outputs equal the masked model's. The pruner's hooks are removed; attached
        optimizers hold the old parameters, so build a new optimizer to keep training.
        """
        if self.finalized:
            return self.model
        self.apply_masks()
        masked = eval_outputs(self.model, self.example_inputs)
        trial = copy.deepcopy(self.model)  # removed on a copy first: a mismatch leaves the model as it was
        try:
            self._remove_channels(trial)
            shrunk = eval_outputs(trial, self.example_inputs)
        except Exception as error:  # e.g. attention that reshapes q/k/v into heads of a fixed size
            raise ValueError(
                f"removing the masked channels breaks the model's forward pass ({type(error).__name__}: {error}): a "
                "layer reshapes them into a fixed shape (attention heads, typically). The model is left masked and "
                "unchanged; add the attention projections to `ignored_layers`, pass torch-pruning's head settings "
                "through `pruning_options` (e.g. {'num_heads': {...}}), or prune with unstructured MagnitudePruner."
            ) from error
        check_same_outputs(masked, shrunk)
        self.remove()
        self._remove_channels(self.model)
        self.finalized = True
        self.masks = {}
        self._multipliers = {}
        self._params = {}
        return self.model

    def _remove_channels(self, model: nn.Module) -> None:
        """Remove this pruner's channels from ``model`` (the pruned one or a copy), by module name."""
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=self.example_inputs)
        modules = dict(model.named_modules())
        for name, idxs in self._pruned.items():
            module = modules[name]
            handler = graph.get_pruner_of_module(module).prune_out_channels
            graph.get_pruning_group(module, handler, idxs=sorted(idxs)).prune()

    def report(self) -> dict[str, Any]:
        """Channels kept per pruned layer, and parameters / MACs of the dense vs current model."""
        modules = dict(self.model.named_modules())
        macs, params = self._count()
        layers = {}
        for name, idxs in sorted(self._pruned.items()):
            module = modules[name]
            channels = getattr(module, "out_channels", getattr(module, "out_features", 0))
            original = channels + (len(idxs) if self.finalized else 0)
            layers[name] = {"channels": original, "kept": original - len(idxs)}
        return {
            "layers": layers,
            "channel_sparsity": self.channel_sparsity() if not self.finalized else self.sparsity,
            "dense_params": self.dense_params,
            "params": params if self.finalized else params - sum(int((~m).sum()) for m in self.masks.values()),
            "dense_macs": self.dense_macs,
            "macs": macs,
            "finalized": self.finalized,
        }

    def state_dict(self) -> dict[str, Any]:
        """Masks, pruned channels and schedule position."""
        if self.finalized:
            raise RuntimeError("a finalized pruner has no masks; save the finalized model instead.")
        return {
            **super().state_dict(),
            "pruned_channels": {n: sorted(v) for n, v in self._pruned.items()},
            "current_step": self.current_step,
            "applied_target": self._applied_target,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore masks, pruned channels and schedule position."""
        super().load_state_dict(state)
        self._pruned = {n: set(v) for n, v in state["pruned_channels"].items()}
        self.current_step = state["current_step"]
        self._applied_target = float(state.get("applied_target", 0.0))
        self.sparsity = self.channel_sparsity()
