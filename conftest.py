"""Root pytest configuration: the package's docstring examples run too (``testpaths`` in setup.cfg)."""

import importlib.util

# Optional integrations import their framework at module level: without it, skip their doctests.
collect_ignore_glob = [
    f"ceag_cooper/integrations/{module}.py"
    for module, needs in (("lightning", "lightning"), ("huggingface", "transformers"))
    if importlib.util.find_spec(needs) is None
]
