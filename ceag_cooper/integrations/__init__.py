"""Integrations with training frameworks (optional extras).

:mod:`~ceag_cooper.integrations.lightning` (Lightning) and
:mod:`~ceag_cooper.integrations.huggingface` (Hugging Face ``Trainer``).
"""

__all__: list[str] = []
