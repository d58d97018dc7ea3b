"""The API reference's sources: every public name has an entry; the docstring rewriting
of docs/sphinx_roles.py and the link rewriting of docs/repo_links.py (both run by
``mkdocs build --strict`` in .ci/run)."""

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


def _docs_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def roles() -> ModuleType:
    pytest.importorskip("griffe")
    return _docs_module("sphinx_roles")


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


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("[tour](../examples/quickstart.py)", '<a href="../examples/quickstart.py">tour</a>'),
        ("[b](../bench/README.md#timing)", '<a href="../bench/README.md#timing">b</a>'),
        ("[graph](graph.md)", "[graph](graph.md)"),  # a docs page: MkDocs checks it
        ("[gone](../examples/gone.py)", "[gone](../examples/gone.py)"),  # --strict fails
        ("![pic](../examples/quickstart.py)", "![pic](../examples/quickstart.py)"),
        ("[w](https://example.org/x.py)", "[w](https://example.org/x.py)"),
        ("```\n[t](../examples/quickstart.py)\n```", "```\n[t](../examples/quickstart.py)\n```"),
    ],
)
def test_links_outside_docs_become_html(markdown: str, expected: str) -> None:
    docs = ROOT / "docs"
    assert _docs_module("repo_links").outside_links(markdown, docs, docs) == expected
