"""Integrations with training frameworks (optional extras): :mod:`ceag_cooper.integrations.lightning`."""

__all__: list[str] = []
