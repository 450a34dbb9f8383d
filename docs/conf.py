"""Sphinx configuration: the hand-written pages (MyST Markdown) plus the API reference from the docstrings.

Build with ``make docs`` (``sphinx-build -W``: any warning fails). Nothing is downloaded, neither at
build time nor when a page is viewed: MathJax comes from the ``sphinx-mathjax-offline`` package and
is copied into the site.
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]

import ceag_cooper  # noqa: E402 - after the path set-up, for the version

project = "ceag-cooper"
author = "ceag-cooper authors"
release = version = ceag_cooper.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx-mathjax-offline",
    "ceag_api",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]

# Markdown: $...$ / $$...$$ math, and GitHub-style heading anchors so that `page.md#heading` links
# resolve (and a broken one is a warning).
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 4

# Docstrings: Google style (Args/Returns/Raises/Example), members in source order.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autosummary_generate = False
python_maximum_signature_line_length = 100

html_theme = "alabaster"
html_title = f"ceag-cooper {release}"
html_static_path: list[str] = []
html_theme_options = {"description": "Constrain the disparate impact of pruning", "page_width": "1100px"}
