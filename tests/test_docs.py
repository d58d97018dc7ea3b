"""The API reference's sources: every public name has an entry, and the docstring
rewriting of docs/sphinx_roles.py (run by ``mkdocs build --strict`` in .ci/run)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

import gpubackprop as gb

ROOT = Path(__file__).resolve().parent.parent


def test_the_reference_index_links_every_public_name() -> None:
    index = (ROOT / "docs" / "reference" / "index.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\[`(?:\w+\.)?(\w+)`\]\[gpubackprop[\w.]*\]", index))
    assert set(gb.__all__) - linked == set()


def test_every_module_has_a_reference_page() -> None:
    reference = ROOT / "docs" / "reference"
    pages = "".join(p.read_text(encoding="utf-8") for p in reference.glob("*.md"))
    documented = set(re.findall(r"^::: (gpubackprop[\w.]*)$", pages, flags=re.MULTILINE))
    package = ROOT / "gpubackprop"
    modules = {
        ".".join(("gpubackprop", *p.relative_to(package).with_suffix("").parts)).removesuffix(
            ".__init__")
        for p in package.rglob("*.py")
    }
    assert modules - documented == set()


@pytest.fixture(scope="module")
def roles() -> ModuleType:
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("sphinx_roles", ROOT / "docs" / "sphinx_roles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KNOWN = {
    "Sequential.step": ("gpubackprop.model.Sequential.step", True),
    "gpubackprop.get_backend": ("gpubackprop.backend.get_backend", True),
    "_dataset": ("gpubackprop.train._dataset", False),
}


@pytest.mark.parametrize(
    ("docstring", "markdown"),
    [
        (":meth:`Sequential.step`", "[`Sequential.step`][gpubackprop.model.Sequential.step]"),
        (":meth:`~Sequential.step`", "[`step`][gpubackprop.model.Sequential.step]"),
        (":func:`.get_backend <gpubackprop.get_backend>`",
         "[`.get_backend`][gpubackprop.backend.get_backend]"),
        (":func:`~gpubackprop.get_backend`", "[`get_backend`][gpubackprop.backend.get_backend]"),
        (":func:`_dataset`", "`_dataset`"),  # exists, but has no page
        (":class:`numpy.ndarray`", "`numpy.ndarray`"),  # another library
        (":class:`Sequentail`", "[`Sequentail`][Sequentail]"),  # broken: --strict fails on it
        ("is::\n\n    a = b", "is:\n\n    a = b"),
        (">>> a = 1\n... + 2\nafter", "```pycon\n>>> a = 1\n... + 2\n```\nafter"),
        ("a = b  for t < W\nc = d  else", "```text\na = b  for t < W\nc = d  else\n```"),
        ("a = b\nand more prose", "a = b\nand more prose"),
    ],
)
def test_convert(roles: ModuleType, docstring: str, markdown: str) -> None:
    assert roles.convert(docstring, KNOWN.get) == markdown
