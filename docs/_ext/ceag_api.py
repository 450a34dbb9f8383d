"""Sphinx extension behind the generated API reference: each public name documented once, at its namespace.

``.. ceag-module:: ceag_cooper.problems`` renders the module's docstring and, through autodoc, every
name of its ``__all__`` whose *home* it is. A name's home is the shallowest public module that
lists it in ``__all__`` (``CEAG``: ``ceag_cooper.problems``, not ``ceag_cooper.problems.ceag``), the
top-level ``ceag_cooper`` only for names nothing else exports (``NonFiniteError``); the top level
instead gets a table of its curated names linking to their homes (``:summary:``). Module constants
get the attribute docstring written under them in the module that defines them (autodoc only reads
the module it documents). A public module that no page documents is a build warning, so a new module
cannot go missing from the reference. A cross-reference by another public path
(``ceag_cooper.build_optimizer``, or ``GroupMetrics`` in a docstring of another package) links to the
home. The ids of documented objects are link targets for the Markdown pages
(``api/optim.md#ceag_cooper.optim.build_optimizer``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import sys
from types import ModuleType
from typing import ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

PACKAGE = "ceag_cooper"
logger = logging.getLogger(__name__)


@functools.cache
def public_modules() -> tuple[str, ...]:
    """Every importable module of the package without an underscore in its dotted name."""
    root = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(root.__path__, f"{PACKAGE}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return tuple(sorted(names))


def _exports(module: ModuleType) -> list[str]:
    return list(getattr(module, "__all__", ()))


@functools.cache
def home_of(module_name: str, name: str) -> str:
    """The module whose page documents ``module_name.name``."""
    obj = getattr(importlib.import_module(module_name), name)
    if inspect.ismodule(obj):
        return obj.__name__
    exporters = []
    for candidate in public_modules():
        module = importlib.import_module(candidate)
        if name in _exports(module) and getattr(module, name, None) is obj:
            exporters.append(candidate)
    below_top = [m for m in exporters if m != PACKAGE] or exporters
    return min(below_top, key=lambda m: (m.count("."), m))


def _directive_for(obj: object) -> str:
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    return "autofunction" if inspect.isroutine(obj) else "autodata"


class CeagModule(SphinxDirective):
    """``.. ceag-module:: NAME`` (option ``:summary:``): the docstring and the names NAME is home to."""

    required_arguments = 1
    option_spec: ClassVar[dict[str, object]] = {"summary": directives.flag}

    def run(self) -> list[nodes.Node]:
        """The autodoc directives for the module, parsed in place."""
        name = self.arguments[0]
        module = importlib.import_module(name)
        documented = getattr(self.env, "ceag_api_documented", {})
        documented.setdefault(self.env.docname, set()).add(name)
        self.env.ceag_api_documented = documented
        for module_name, loaded in list(sys.modules.items()):  # rebuild the page when its code changes
            if (module_name == name or module_name.startswith(f"{name}.")) and getattr(loaded, "__file__", None):
                self.env.note_dependency(loaded.__file__)
        exports = _exports(module)
        members = [n for n in exports if not inspect.ismodule(getattr(module, n)) and home_of(name, n) == name]
        lines = [f".. automodule:: {name}", ""]
        if "summary" in self.options:
            rows = [n for n in exports if n not in members]
            lines += [".. rubric:: Names re-exported here, documented in their namespace", ""]
            lines += [".. autosummary::", "   :nosignatures:", ""]
            for n in rows:
                obj = getattr(module, n)
                target = obj.__name__ if inspect.ismodule(obj) else f"{home_of(name, n)}.{n}"
                lines.append(f"   ~{target.removeprefix(name + '.')}")  # relative to the current module
            lines.append("")
        for n in members:  # one directive each: autodoc's automodule skips constants imported from a submodule
            lines += [f".. {_directive_for(getattr(module, n))}:: {name}.{n}"]
            if inspect.isclass(getattr(module, n)):
                lines += ["   :members:", "   :show-inheritance:"]
            lines.append("")
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=f"<ceag-module {name}>"), container)
        return container.children


def _attribute_docstring(app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    """A constant documented at its namespace gets the docstring written under it where it is defined."""
    if what != "data" or not name.startswith(f"{PACKAGE}."):
        return
    attr = name.rpartition(".")[2]
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith(PACKAGE) or getattr(module, attr, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        except PycodeError:  # a module without source has no attribute docs
            continue
        if ("", attr) in docs:
            lines[:] = list(docs[("", attr)])
            return
    type_doc = inspect.cleandoc(type(obj).__doc__ or "").splitlines()
    if type_doc and lines and lines[0].strip() == type_doc[0].strip():
        lines[:] = []  # the docstring of the value's type (``str``, ``tuple``) says nothing about the name


_COLON = "\ue000"  # stands in for ":" on a first line while napoleon reads it


def _hide_inline_type(app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    """Before napoleon: a first line ``Whole-split numbers: ...`` is prose, not Google's ``type: text``.

    The types of attributes and properties come from their annotations here; napoleon would
    otherwise render the words before the colon as the type.
    """
    if what in ("attribute", "data", "property") and lines:
        lines[0] = lines[0].replace(":", _COLON)


def _restore_colons(app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    lines[:] = [line.replace(_COLON, ":") for line in lines]


def _object_anchors(app: Sphinx, doctree: nodes.document) -> None:
    """Each documented Python object's id becomes a link target for Markdown links between pages.

    ``[build_optimizer](api/optim.md#ceag_cooper.optim.build_optimizer)`` then resolves (MyST checks
    the anchor: a wrong one is a warning), as heading anchors do.
    """
    std = app.env.get_domain("std")
    for desc in doctree.findall(addnodes.desc):
        if desc.get("domain") != "py":
            continue
        for signature in desc.findall(addnodes.desc_signature):
            for node_id in signature["ids"]:
                std.anonlabels.setdefault(node_id, (app.env.docname, node_id))


def _public_alias(app: Sphinx, env: object, node: addnodes.pending_xref, contnode: nodes.Element) -> nodes.Node | None:
    """A reference by another public path links to the name's home, where it is documented.

    ``ceag_cooper.build_optimizer``, or ``GroupMetrics`` in a docstring of another package.
    """
    if node.get("refdomain") != "py":
        return None
    parts = node["reftarget"].lstrip(".~").split(".")
    homes = set()
    if parts[0] == PACKAGE:  # ceag_cooper.<module...>.<Name>[.<member>]
        for cut in range(len(parts) - 1, 0, -1):
            module = sys.modules.get(".".join(parts[:cut]))
            if module is not None:
                if parts[cut] in _exports(module):
                    homes.add(".".join([home_of(module.__name__, parts[cut]), *parts[cut:]]))
                break
    else:  # <Name>[.<member>], exported by some namespace
        for module_name in public_modules():
            if parts[0] in _exports(sys.modules[module_name]):
                homes.add(".".join([home_of(module_name, parts[0]), *parts]))
    if len(homes) != 1:
        return None
    return app.env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], homes.pop(), node, contnode
    )


def _purge(app: Sphinx, env: object, docname: str) -> None:
    getattr(env, "ceag_api_documented", {}).pop(docname, None)


def _check_coverage(app: Sphinx, env: object) -> None:
    documented = set().union(*getattr(env, "ceag_api_documented", {}).values())
    for name in public_modules():
        if name not in documented:
            logger.warning("public module %s is documented by no `ceag-module` directive in docs/api/", name)


def setup(app: Sphinx) -> dict[str, object]:
    """Register the directive and the hooks."""
    app.add_directive("ceag-module", CeagModule)
    app.connect("autodoc-process-docstring", _attribute_docstring, priority=400)  # before napoleon (500)
    app.connect("autodoc-process-docstring", _hide_inline_type, priority=450)
    app.connect("autodoc-process-docstring", _restore_colons, priority=600)
    app.connect("doctree-read", _object_anchors)
    app.connect("missing-reference", _public_alias)
    app.connect("env-purge-doc", _purge)
    app.connect("env-check-consistency", _check_coverage)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
