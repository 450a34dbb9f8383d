"""Root pytest configuration: the package's docstring examples run too (``testpaths`` in setup.cfg)."""

import importlib.util

# Optional integrations import their framework at module level: without it, skip their doctests.
collect_ignore_glob = [] if importlib.util.find_spec("lightning") else ["ceag_cooper/integrations/lightning.py"]
