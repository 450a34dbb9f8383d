"""Build the Cooper optimizer that drives a problem: the whole integration in one call."""

from __future__ import annotations

import math
from typing import Literal

import cooper
import torch

from ceag_cooper.problems.base import GroupFairnessProblem

__all__ = ["DualOptimizerName", "StepOrder", "auto_dual_lr", "build_optimizer"]

StepOrder = Literal["dual_primal", "simultaneous"]
DualOptimizerName = Literal["sgd", "nupi"]


def build_optimizer(
    problem: GroupFairnessProblem,
    primal_optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer],
    *,
    dual_lr: float | Literal["auto"] = 1e-2,
    order: StepOrder = "dual_primal",
    dual_optimizer: DualOptimizerName = "sgd",
    proportional_gain: float = 0.0,
    ema_nu: float = 0.0,
    dual_weight_decay: float = 0.0,
) -> cooper.optim.CooperOptimizer:
    r"""The Cooper optimizer for ``problem``, as the paper runs it (or with a nuPI dual).

    With ``dual_optimizer="sgd"`` (default, as the paper) the multipliers are updated by plain
    projected gradient ascent (``torch.optim.SGD`` with ``maximize=True``, no momentum), so that
    one step is exactly ``lambda <- relu(lambda + dual_lr * strict_violation)`` for observed
    constraints (times the problem's :meth:`~ceag_cooper.problems.base.GroupFairnessProblem.dual_step_weights`
    where it has them, e.g. ``CEAG(dual_step_scale="share")``) and leaves unobserved ones unchanged.

    ``dual_optimizer="nupi"`` uses Cooper's :class:`cooper.optim.nuPI`, the PI controller of
    Sohrabi et al. (ICML 2024): with :math:`K_I = 1`, ``proportional_gain`` :math:`= K_P` and
    ``ema_nu`` :math:`= \nu`, a step is
    :math:`\lambda_{t+1} = [\lambda_t + \eta(e_t + K_P(\xi_t - \xi_{t-1}))]_+` with
    :math:`\xi_t = \nu\xi_{t-1} + (1-\nu)e_t` the smoothed violation. Summed over steps
    (and before the projection), the multiplier is :math:`\eta\sum_s e_s + \eta K_P \xi_t`: the
    integral term of SGD plus a term proportional to the current (smoothed) violation, which makes
    the multiplier fall as soon as the constraint is satisfied instead of after the surplus has
    been integrated away (less overshoot and oscillation). ``K_P = 0`` is SGD exactly. Guidance:
    keep ``dual_lr`` as for SGD and pick ``K_P`` so that ``dual_lr * K_P * violation`` is a
    meaningful multiplier change; with noisy per-step estimates (small replay buffers) smooth them
    (``ema_nu`` of 0.9-0.99), or the proportional term turns estimation noise into multiplier noise.
    With nuPI a constraint a step marks unobserved counts as a violation of 0 (the proportional
    term then moves its multiplier towards the integral term); CEAG's replay buffers observe
    every group once they are full.

    ``dual_weight_decay`` (either optimizer; with ``"sgd"`` it runs as nuPI with :math:`K_P = 0`, which
    is SGD, since torch's SGD cannot decay a maximized parameter) pulls every observed multiplier
    towards 0 by ``dual_lr * dual_weight_decay * lambda`` per step: a
    multiplier then stays bounded by ``max_violation / dual_weight_decay`` (times its step weight where
    the problem scales its steps; a "resilient"
    constraint; a group whose estimate is pure noise cannot accumulate an ever-growing multiplier).

    With plain SGD (no decay) the problem's multiplier is switched to a dense gradient (the same
    update, cheaper with many constraints; see :mod:`ceag_cooper.problems.multiplier`); with nuPI
    it keeps Cooper's sparse one. The setting belongs to the problem, so the last
    ``build_optimizer`` call for a problem decides it.

    ``order="dual_primal"`` (default, as the paper) updates the
    multipliers first and then the model with the new multipliers, from one forward pass;
    ``"simultaneous"`` uses the old multipliers for the model step. An unconstrained problem
    gets a :class:`cooper.optim.UnconstrainedOptimizer`.

    Args:
        problem: a :class:`GroupFairnessProblem` (``CEAG``, ``EqualizedLoss``, ``Unconstrained``...).
        primal_optimizer: the model's optimizer(s), built as usual.
        dual_lr: multiplier step size (> 0), or ``"auto"``: :func:`auto_dual_lr`, ten times the
            primal learning rate divided by the number of constraints (Cooper's FAQ), which keeps
            the multipliers' sum from outgrowing the objective's weight with hundreds of groups.
        order: ``"dual_primal"`` or ``"simultaneous"``.
        dual_optimizer: ``"sgd"`` (projected gradient ascent) or ``"nupi"`` (see above).
        proportional_gain: nuPI's :math:`K_P \ge 0` (nuPI only; 0 is SGD).
        ema_nu: nuPI's smoothing :math:`\nu \in [0, 1)` of the violation (nuPI only).
        dual_weight_decay: multiplier decay (>= 0); 0 (default) is the plain Lagrangian.

    Returns:
        A Cooper optimizer; call ``optimizer.roll(compute_cmp_state_kwargs=...)`` once per batch.

    Example:
        >>> import torch
        >>> from ceag_cooper import EqualizedLoss
        >>> model = torch.nn.Linear(4, 2)
        >>> problem = EqualizedLoss(num_groups=3)
        >>> optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), dual_lr=1e-2)
        >>> type(optimizer).__name__
        'AlternatingDualPrimalOptimizer'
        >>> optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), dual_lr=1e-2,
        ...                             dual_optimizer="nupi", proportional_gain=10.0, ema_nu=0.9)
        >>> type(optimizer.dual_optimizers[0]).__name__
        'nuPI'
    """
    if not isinstance(problem, GroupFairnessProblem):
        raise TypeError(f"`problem` must be a GroupFairnessProblem, got {type(problem).__name__}.")
    if dual_lr == "auto":
        dual_lr = auto_dual_lr(problem, primal_optimizer)
    if isinstance(dual_lr, bool) or not isinstance(dual_lr, (int, float)) or not (0 < dual_lr < math.inf):
        raise ValueError(f"`dual_lr` must be a finite float > 0 or 'auto', got {dual_lr!r}.")
    classes = {
        "dual_primal": cooper.optim.AlternatingDualPrimalOptimizer,
        "simultaneous": cooper.optim.SimultaneousOptimizer,
    }
    if order not in classes:
        raise ValueError(f"`order` must be 'dual_primal' or 'simultaneous', got {order!r}.")
    if dual_optimizer not in ("sgd", "nupi"):
        raise ValueError(f"`dual_optimizer` must be 'sgd' or 'nupi', got {dual_optimizer!r}.")
    gain = _finite_float(proportional_gain, "proportional_gain", minimum=0.0)
    nu = _finite_float(ema_nu, "ema_nu", minimum=0.0)
    decay = _finite_float(dual_weight_decay, "dual_weight_decay", minimum=0.0)
    if not nu < 1.0:
        raise ValueError(f"`ema_nu` must be in [0, 1), got {ema_nu!r}.")
    if dual_optimizer == "sgd" and (gain != 0.0 or nu != 0.0):
        raise ValueError("`proportional_gain` and `ema_nu` are nuPI settings: pass dual_optimizer='nupi' to use them.")
    if problem.constraint_type is None:
        return cooper.optim.UnconstrainedOptimizer(cmp=problem, primal_optimizers=primal_optimizer)
    multiplier = problem.fairness.multiplier
    stateless = dual_optimizer == "sgd" and decay == 0
    if hasattr(multiplier, "dense_gradient"):  # plain SGD: the same update from a dense gradient, cheaper
        multiplier.dense_gradient = stateless  # (see ceag_cooper.problems.multiplier)
    if not stateless:  # nuPI with K_P = 0 is SGD; it decays the observed entries
        dual: torch.optim.Optimizer = cooper.optim.nuPI(
            problem.dual_parameters(), lr=float(dual_lr), Kp=gain, Ki=1.0, ema_nu=nu, weight_decay=decay,
            maximize=True,
        )  # fmt: skip
    else:
        dual = torch.optim.SGD(problem.dual_parameters(), lr=float(dual_lr), maximize=True)
    return classes[order](cmp=problem, primal_optimizers=primal_optimizer, dual_optimizers=dual)


def auto_dual_lr(
    problem: GroupFairnessProblem, primal_optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer]
) -> float:
    """``10 * primal_lr / C``: a dual step size that scales with the number of constraints ``C``.

    Cooper's FAQ suggests it as a starting point: every observed multiplier moves by about
    ``dual_lr * violation`` per step, so their sum, which weighs the constraints against the
    objective in the model step, grows ``C`` times faster with ``C`` constraints at a fixed step
    size (with the paper's 0.01 and 90 groups the sum passed 1 within two epochs and the
    objective's weight turned negative). ``primal_lr`` is the first parameter group's initial
    learning rate (``initial_lr`` when a scheduler set it, else ``lr``).

    Example:
        >>> import torch
        >>> from ceag_cooper import CEAG, GroupMetrics
        >>> ref = GroupMetrics(torch.full((90,), 0.8), torch.ones(90), torch.full((90,), 10.0),
        ...                    torch.tensor(0.8), torch.tensor(1.0), torch.tensor(900.0))
        >>> primal = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.01)
        >>> round(auto_dual_lr(CEAG(reference=ref, buffer_size=None), primal), 6)
        0.001111
    """
    first = primal_optimizer[0] if isinstance(primal_optimizer, (list, tuple)) else primal_optimizer
    group = first.param_groups[0]
    constraints = problem.num_constraints() if problem.constraint_type is not None else 1
    return 10.0 * float(group.get("initial_lr", group["lr"])) / constraints


def _finite_float(value: float, name: str, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"`{name}` must be a finite float >= {minimum:g}, got {value!r}.")
    return float(value)
