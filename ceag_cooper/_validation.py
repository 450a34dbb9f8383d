"""Input checks shared by the whole library.

Every check raises a :class:`ValueError` or :class:`TypeError` that names the argument, the
offending value and the fix. Metadata checks (dtype, shape, device) cost nothing. Value checks
(ranges, finiteness) read one scalar back to the host on CPU tensors, where that is free; on an
accelerator they are queued with ``torch._assert_async`` so that they never stall the step.
"""

from __future__ import annotations

import torch

__all__ = [
    "NonFiniteError",
    "check_finite",
    "check_group_ids",
    "check_hook_output",
    "check_non_negative_float",
    "check_positive_int",
    "check_same_device",
    "is_compiling",
]


class NonFiniteError(ValueError):
    """A batch loss or a constraint violation is NaN or infinite: training has diverged.

    A ``ValueError``, so code that catches those still does; catch this one to tell divergence
    apart from bad input (a benchmark grid records it as a result and goes on). Raised on CPU in
    eager mode; on an accelerator, and inside ``torch.compile`` on any device, the check is queued
    with ``torch._assert_async``, which fails with a ``RuntimeError`` carrying the same message (at
    the next synchronization on an accelerator) instead.

    Example:
        >>> import torch
        >>> from ceag_cooper import NonFiniteError
        >>> from ceag_cooper._validation import check_finite
        >>> try:
        ...     check_finite(torch.tensor(float("nan")), "the batch loss")
        ... except NonFiniteError as error:
        ...     print(str(error).split(".")[0])
        the batch loss is not finite (NaN or inf)
    """


def is_compiling() -> bool:
    """Whether this code is being traced by ``torch.compile`` (``torch.compiler.is_compiling``, torch >= 2.3)."""
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if check is None:  # torch 2.1 / 2.2
        check = torch._dynamo.is_compiling
    return bool(check())


def _assert_values(condition: torch.Tensor, message: str, error: type[ValueError] = ValueError) -> None:
    """Raise ``error(message)`` unless ``condition`` (a 0-d bool tensor) holds.

    Eager on CPU: a host read (free there) and a Python error. On an accelerator, and inside
    ``torch.compile`` (where a host read would break the graph), a queued ``torch._assert_async``.
    """
    if condition.device.type == "cpu" and not is_compiling():
        if not bool(condition):
            raise error(message)
    else:
        torch._assert_async(condition, message)


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an ``int`` after checking that it is an integer ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int >= 1, got {type(value).__name__} {value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1, got {value}.")
    return value


def check_non_negative_float(value: object, name: str) -> float:
    """Return ``value`` as a ``float`` after checking that it is finite and ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float >= 0, got {type(value).__name__} {value!r}.")
    value = float(value)
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a finite float >= 0, got {value}.")
    return value


def check_group_ids(group_ids: object, num_groups: int, *, name: str = "group_ids") -> torch.Tensor:
    """Check a tensor of flat group ids and return it.

    Args:
        group_ids: integer tensor of shape ``(N,)`` (one group per sample) or ``(N, M)`` (each
            sample in ``M`` groups, as produced by marginal groups).
        num_groups: number of groups ``G``; ids must lie in ``[0, G)``.
        name: argument name used in error messages.

    Raises:
        TypeError: not a tensor, or not an integer dtype.
        ValueError: wrong number of dimensions, no samples, or an id outside ``[0, G)``.
    """
    if not isinstance(group_ids, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of integer group ids, got {type(group_ids).__name__}.")
    if group_ids.dtype.is_floating_point or group_ids.dtype.is_complex or group_ids.dtype == torch.bool:
        raise TypeError(
            f"`{name}` must hold integer group ids (torch.long), got dtype {group_ids.dtype}; "
            "convert with `.long()` only if the values are whole numbers."
        )
    if group_ids.dim() not in (1, 2):
        raise ValueError(
            f"`{name}` must have shape (N,) or (N, M), got shape {tuple(group_ids.shape)}; "
            "use GroupSpec.group_ids(attributes) to build ids from protected attributes."
        )
    if group_ids.shape[0] == 0 or group_ids.numel() == 0:
        raise ValueError(f"`{name}` is empty: a batch needs at least one sample.")
    low, high = torch.aminmax(group_ids)
    _assert_values(
        (low >= 0) & (high < num_groups),
        f"`{name}` must lie in [0, {num_groups}) for {num_groups} groups; "
        "check the number of groups given to the problem or the reference statistics.",
    )
    if group_ids.dim() == 2 and group_ids.shape[1] > 1:
        ordered = group_ids.sort(dim=1).values
        _assert_values(
            ~(ordered[:, 1:] == ordered[:, :-1]).any(),
            f"a row of `{name}` names the same group twice: each sample would count twice in it. The M ids of a "
            "sample must be distinct groups (GroupSpec(..., mode='marginal').group_ids builds them so).",
        )
    return group_ids.long()


def check_same_device(tensor: torch.Tensor, device: torch.device, name: str) -> None:
    """Raise if ``tensor`` does not live on ``device`` (no silent copies on the hot path)."""
    if tensor.device != device:
        raise ValueError(
            f"`{name}` is on {tensor.device} but the problem lives on {device}; "
            f"move it with `{name}.to({str(device)!r})` or move the problem with `problem.to(device)`."
        )


def check_finite(value: torch.Tensor, what: str) -> None:
    """Raise if any entry of ``value`` is NaN or infinite, naming ``what`` it was."""
    _assert_values(
        torch.isfinite(value).all(),
        f"{what} is not finite (NaN or inf). Lower the learning rate, check the inputs for NaNs, "
        "or clip gradients; the multipliers were not updated.",
        NonFiniteError,
    )


def check_hook_output(
    output: tuple[torch.Tensor, torch.Tensor], count: int, hook: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A violation hook's ``(values, observed)``: shapes ``(count,)``, ``observed`` boolean (metadata only, free)."""
    values, observed = output
    if values.shape != (count,) or observed.shape != (count,) or observed.dtype != torch.bool:
        raise ValueError(
            f"{hook} must return (values, observed) of shape ({count},), observed of dtype bool; got shapes "
            f"{tuple(values.shape)}, {tuple(observed.shape)} and dtype {observed.dtype}."
        )
    return values, observed
