"""State that manages itself: estimators registered once are saved, loaded, moved and broadcast."""

from __future__ import annotations

from typing import Any

import torch

from ceag_cooper._validation import is_compiling
from ceag_cooper.metrics.group_metrics import GroupMetrics

__all__ = ["RegisteredState"]


class RegisteredState:
    """The state half of :class:`~ceag_cooper.problems.GroupFairnessProblem` (a mixin of it).

    Holds the registered estimators (``self._estimators``) and turns them, with the multipliers,
    the references and the counters the problem keeps, into one ``state_dict`` / ``to`` /
    ``load_state_dict``. Subclasses of the problem only call :meth:`register_state`.
    """

    def register_state(self, name: str, module: torch.nn.Module | None) -> Any:
        """Declare a stateful estimator (its tensors registered buffers); returns ``module``.

        Registered state is saved and restored by :meth:`state_dict` / :meth:`load_state_dict`,
        moved (and cast) by :meth:`to`, and broadcast from rank 0 under ``torch.distributed``; a
        ``None`` placeholder keeps the name (e.g. CEAG without buffers). Call it in ``__init__``
        after ``super().__init__()``, with tensors on :attr:`device`.

        Example:
            >>> import torch
            >>> from ceag_cooper.problems import GroupFairnessProblem, TensorState
            >>> class Counting(GroupFairnessProblem):
            ...     constraint_type = None
            ...     def __init__(self, **options):
            ...         super().__init__(**options)
            ...         self.seen = self.register_state("seen", TensorState(torch.zeros(self.num_groups)))
            ...     def update_estimates(self, stats):
            ...         self.seen.value += stats.group_count
            >>> problem = Counting(num_groups=2)
            >>> _ = problem.compute_cmp_state(logits=torch.randn(3, 2), targets=torch.tensor([0, 1, 1]),
            ...                               group_ids=torch.tensor([0, 1, 1]))
            >>> problem.state_dict()["extra"]["seen"]["value"].tolist()
            [1.0, 2.0]
        """
        if name in self._estimators:
            raise ValueError(f"state {name!r} is registered already.")
        if module is not None and not isinstance(module, torch.nn.Module):
            raise TypeError(f"state {name!r} must be a torch.nn.Module (or None), got {type(module).__name__}.")
        self._estimators[name] = module
        return module

    # ------------------------------------------------------------------- device & state
    def step_label(self, offset: int = 0) -> str:
        """``"step <num_steps + offset>"``, for messages; ``"a compiled step"`` under ``torch.compile``.

        The count may be symbolic there, and formatting it would break the graph.
        """
        if is_compiling():
            return "a compiled step"
        return f"step {self.num_steps + offset}"

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """Move (or cast) multipliers, references and registered state (``problem.to("cuda")``)."""
        super().to(*args, **kwargs)
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        device = self.device if device is None else torch.empty(0, device=device).device
        self.device = device
        if self.reference is not None:
            self.reference = self.reference.to(device)
        if self.heldout_reference is not None:
            self.heldout_reference = self.heldout_reference.to(device)
        if self.constraint_type is not None:
            self._indices = self._indices.to(device)
        for module in self._estimators.values():
            if module is not None:
                module.to(*args, **kwargs)  # floating state follows a dtype cast (e.g. float64)
        self._forget_derived()
        return self

    def _forget_derived(self) -> None:
        """Drop values cached from the references, device or dtype (a subclass's): after ``to`` and loading."""

    def state_dict(self) -> dict[str, Any]:
        """Multipliers, reference statistics, registered state, step count and config."""
        state = super().state_dict()
        state.update(
            config=self.config(),
            num_steps=self.num_steps,
            skipped_steps=self.skipped_steps,
            heldout_position=self._heldout.position if self._heldout is not None else 0,
            reference=self.reference.state_dict() if self.reference is not None else None,
            extra={name: m.state_dict() if m is not None else None for name, m in self._estimators.items()},
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the config must match this problem's."""
        # every class's added keys (a subclass's own dict does not hide its bases')
        added = {k: v for cls in reversed(type(self).__mro__) for k, v in vars(cls).get("config_added", {}).items()}
        saved, mine = {**added, **state_dict["config"]}, self.config()
        if saved != mine:
            raise ValueError(f"checkpoint was saved by a problem with config {saved}, this problem has {mine}.")
        extra = state_dict["extra"]
        missing = [name for name, m in self._estimators.items() if m is not None and extra.get(name) is None]
        if missing:
            raise ValueError(f"the checkpoint has no state for {missing}: it was saved by another kind of problem.")
        super().load_state_dict(state_dict)
        self.num_steps = int(state_dict["num_steps"])
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        if self._heldout is not None:
            self._heldout.position = int(state_dict.get("heldout_position", 0))
        if state_dict["reference"] is not None:
            self.reference = GroupMetrics.from_state_dict(state_dict["reference"]).to(self.device)
        for name, module in self._estimators.items():
            if module is not None:
                module.load_state_dict(extra[name])
        self._forget_derived()
        self.broadcast_state()
