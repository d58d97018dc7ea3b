"""Griffe extension for the API reference: gpubackprop's reST docstring markup as Markdown.

The docstrings are written for ``help()`` and Sphinx habits: cross-references as
roles (``:class:`Sequential```, ``:meth:`~Sequential.step```, ``:func:`.get_backend```),
literal blocks after ``::``, doctest lines (``>>>``). mkdocstrings reads Markdown, so
before rendering this extension rewrites each docstring:

* a role whose target resolves to a public gpubackprop object becomes an autorefs
  link ``[`name`][gpubackprop.full.path]``, checked by ``mkdocs build --strict``;
* a role that resolves to an underscore name, or names another library (NumPy,
  CuPy, ...), becomes plain code: there is no page to link to;
* a role that resolves to nothing becomes a link to the name as written, which
  autorefs cannot find: ``mkdocs build --strict`` fails on it, naming it;
* ``text::`` before an indented block becomes ``text:`` (the block stays code);
* a paragraph of formulas, one per line and aligned with spaces, becomes code;
* runs of ``>>>`` / ``...`` lines become a fenced ``pycon`` block.

Used by mkdocs.yml (``extensions: [docs/sphinx_roles.py]``); not part of the package.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj):`([^`]+)`")
EXTERNAL = ("numpy.", "np.", "cupy.", "cupyx.", "torch.", "scipy.", "safetensors.",
            "sklearn.", "tqdm.", "matplotlib.")
PACKAGE = "gpubackprop"

Node = griffe.Object | griffe.Alias
#: a role's target as written -> (the full path it names, whether that is public), or None
Resolver = Callable[[str], "tuple[str, bool] | None"]


def convert(text: str, resolve: Resolver) -> str:
    """The docstring ``text`` in Markdown: roles as links or code, ``::`` and ``>>>`` blocks."""
    text = ROLE.sub(lambda m: _role(m.group(1), resolve), text)
    text = re.sub(r"(\S)::$", r"\1:", text, flags=re.MULTILINE)
    return _fence_doctests("\n\n".join(map(_fence_aligned, text.split("\n\n"))))


def _fence_aligned(paragraph: str) -> str:
    """Lines of formulas aligned with spaces, as code: Markdown would join them into one line."""
    lines = paragraph.splitlines()
    formulas = all("=" in line and not line.startswith((" ", ">>>")) for line in lines)
    aligned = any(re.search(r"\S {2,}\S", line) for line in lines)
    return f"```text\n{paragraph}\n```" if len(lines) > 1 and formulas and aligned else paragraph


def _role(content: str, resolve: Resolver) -> str:
    title, _, explicit = content.partition(" <")
    target = explicit.rstrip(">") if explicit else title
    short = target.startswith("~")
    target = target.lstrip("~")
    shown = target.lstrip(".").rsplit(".", 1)[-1] if short else target.lstrip(".")
    if explicit:
        shown = title
    if target.startswith(EXTERNAL):
        return f"`{shown}`"
    found = resolve(target)
    if found is None:
        return f"[`{shown}`][{target.lstrip('.')}]"  # unresolved: --strict names it
    path, public = found
    return f"[`{shown}`][{path}]" if public else f"`{shown}`"


def _fence_doctests(text: str) -> str:
    out: list[str] = []
    in_block = False
    for line in text.splitlines():
        stripped = line.lstrip()
        is_doctest = stripped.startswith(">>>") or (in_block and stripped.startswith("..."))
        if is_doctest and not in_block:
            out.append("```pycon")
        elif not is_doctest and in_block:
            out.append("```")
        in_block = is_doctest
        out.append(line)
    if in_block:
        out.append("```")
    return "\n".join(out)


def _lookup(scope: Node, dotted: str) -> Node | None:
    """The member ``dotted`` of ``scope`` (through aliases), or None."""
    node = scope
    for part in dotted.split("."):
        try:
            node = node.all_members[part]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return node


def resolver(obj: Node, package: griffe.Module) -> Resolver:
    """Sphinx's lookup for a role in ``obj``'s docstring: ``obj``, its parents, the package.

    A target with a leading dot matches any object whose path ends with it.
    """

    def resolve(target: str) -> tuple[str, bool] | None:
        name = target.lstrip(".")
        if name.startswith(PACKAGE + "."):
            found = _lookup(package, name.removeprefix(PACKAGE + "."))
        else:
            found = None
            scope: Node | None = obj
            while found is None and scope is not None:
                found = _lookup(scope, name)
                scope = scope.parent
            if found is None and target.startswith("."):
                found = _by_suffix(package, "." + name)
        if found is None:
            return None
        path = found.final_target.path if found.is_alias else found.path  # type: ignore[union-attr]
        public = not any(p.startswith("_") and not p.startswith("__") for p in path.split("."))
        return path, public

    return resolve


def _by_suffix(package: griffe.Module, suffix: str) -> Node | None:
    """The first object defined in ``package`` (not imported) whose path ends with ``suffix``."""
    return next((o for o in _defined(package) if o.path.endswith(suffix)), None)


def _defined(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined under it, depth first (aliases skipped)."""
    yield obj
    for member in obj.members.values():
        if isinstance(member, griffe.Object):
            yield from _defined(member)


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of the loaded package with :func:`convert`."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        """Called by griffe once the package is loaded: all names can be resolved now."""
        for obj in _defined(pkg):
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, resolver(obj, pkg))
