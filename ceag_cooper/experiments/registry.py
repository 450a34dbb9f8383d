"""The fine-tuning methods of the pipeline: one registry entry each (name -> problem and policies).

A method is what :class:`Method` says: how to build its Cooper problem from the run's config,
whether its constraints are estimated on a held-out part of the training split, and which iterate
the run returns. The run loop reads these fields; it never tests a method's name. Adding a method
is one :func:`register_method` call (see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ceag_cooper.problems import CEAG, EqualizedLoss, GroupFairnessProblem, TwoSidedCEAG, Unconstrained

if TYPE_CHECKING:
    from ceag_cooper.experiments.config import ExperimentConfig
    from ceag_cooper.metrics import GroupMetrics

__all__ = ["METHODS", "Method", "ProblemFactory", "get_method", "register_method"]

ProblemFactory = Callable[["ExperimentConfig", "GroupMetrics", int, dict[str, Any]], GroupFairnessProblem]
"""``factory(config, reference, start_step, options) -> problem``; ``options`` are the
:class:`~ceag_cooper.problems.ProblemOptions` the run adds (held-out batches and reference, the
dense model's `distillation`): every factory passes on the ones its problem can use."""


@dataclass(frozen=True)
class Method:
    """One fine-tuning method of the pipeline.

    Attributes:
        name: the ``ExperimentConfig.method`` value.
        description: one line for ``--help`` and the docs.
        make_problem: builds the Cooper problem (see :data:`ProblemFactory`).
        uses_heldout: constraints estimated on a held-out 20% of the training split, which the
            dense model does not see either.
        iterate: which model the run returns. ``"last"``; ``"best_test"`` (the paper's NFT+ES:
            the most accurate epoch end at final sparsity, by *test* accuracy); ``"feasible_first"``
            (the most accurate epoch end with max ψ ≤ ε on the constraint data, else the least
            infeasible); ``"config"``: ``"feasible_first"`` when ``config.final_iterate ==
            "feasible_best"`` and the method is constrained, else ``"last"``.
    """

    name: str
    description: str
    make_problem: ProblemFactory
    uses_heldout: bool = False
    iterate: Literal["last", "best_test", "feasible_first", "config"] = "config"


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (a name can be registered once); returns it."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered already.")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is an error that lists the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose among {list(_REGISTRY)}.") from None


def _ceag_options(config: ExperimentConfig, reference: GroupMetrics, start: int) -> dict[str, Any]:
    return {
        "reference": reference, "tolerance": config.tolerance, "margin": config.margin, "start_step": start,
        "resolution_z": config.resolution_z, "fit_buffers_to_groups": config.fit_buffers_to_groups,
        "dual_step_scale": config.dual_step_scale,
    }  # fmt: skip


def _nft(config: ExperimentConfig, reference: GroupMetrics, start: int, options: dict[str, Any]) -> Unconstrained:
    return Unconstrained(num_groups=reference.num_groups, distillation=options.get("distillation"))


def _el(buffered: bool) -> ProblemFactory:
    def factory(config: ExperimentConfig, reference: GroupMetrics, start: int, options: dict[str, Any]) -> Any:
        buffer = config.buffer_size if buffered else None
        return EqualizedLoss(
            reference=reference, buffer_size=buffer, start_step=start, form=config.el_form,
            constraint_estimate=config.constraint_estimate, distillation=options.get("distillation"),
        )  # fmt: skip

    return factory


def _ceag(*, buffered: bool = True, two_sided: bool = False, detach_overall: bool = False) -> ProblemFactory:
    kind = TwoSidedCEAG if two_sided else CEAG

    def factory(config: ExperimentConfig, reference: GroupMetrics, start: int, options: dict[str, Any]) -> Any:
        settings = {**_ceag_options(config, reference, start), **options}
        if "heldout" not in options:  # held-out estimation is eval mode by construction
            settings["constraint_estimate"] = config.constraint_estimate
        if detach_overall:
            settings["detach_overall"] = True
        return kind(**settings, buffer_size=config.buffer_size if buffered else None)

    return factory


for _method in (
    Method("nft", "naive fine-tuning (the paper's NFT)", _nft, iterate="last"),
    Method("nft_es", "NFT with early stopping on test accuracy (the paper's NFT+ES)", _nft, iterate="best_test"),
    Method("el", "equalized loss, batch estimates", _el(False)),
    Method("el_rb", "equalized loss with replay buffers", _el(True)),
    Method("ceag_no_rb", "CEAG, batch estimates", _ceag(buffered=False)),
    Method("ceag", "CEAG with replay buffers", _ceag()),
    Method("ceag_two_sided", "CEAG with |psi_g| <= eps", _ceag(two_sided=True)),
    Method("ceag_heldout", "CEAG, constraints estimated on a held-out 20% of the training split", _ceag(),
           uses_heldout=True),
    Method("ceag_heldout_select", "ceag_heldout plus feasibility-first model selection on that held-out part",
           _ceag(), uses_heldout=True, iterate="feasible_first"),
    Method("ceag_heldout_two_sided", "two-sided CEAG on the held-out part", _ceag(two_sided=True), uses_heldout=True),
    Method("ceag_detach_overall", "CEAG whose model step treats the proxy's overall term as a constant (many groups)",
           _ceag(detach_overall=True)),
):  # fmt: skip
    register_method(_method)


METHODS: tuple[str, ...] = tuple(_REGISTRY)
"""The names of the methods the library registers, in table order (methods registered later are
found by :func:`get_method`, not listed here)."""
