"""The structure rules of the design: no module uses another module's underscore names.

What one module needs from another is public and documented; a leading underscore
means "this module's own business". Checked on the source with ``ast``:

* importing an underscore name or module (``from .x import _y``, ``import a._b``);
* ``name._y`` where ``name`` was imported (a module or an imported class);
* ``obj._y`` on anything but ``self`` / ``cls`` where ``_y`` is not defined in the
  module itself (not a function, class or attribute it assigns): the underscore
  name then belongs to another module's object (e.g. ``model._forward`` in train).

The floors themselves (which module may import which) are import-linter's
contracts in pyproject.toml, run by ``lint-imports`` in ``.ci/run``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("gpubackprop/**/*.py"), *ROOT.glob("bench/**/*.py")])

#: (file, name): uses that wait for another change of issue 9, each with its reason.
#: Remove an entry when its use goes; the test fails for a stale entry too.
PENDING = {
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(tree: ast.Module) -> set[str]:
    """Names the module defines: functions, classes, and attributes it assigns."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def foreign_underscore_uses(path: Path) -> list[tuple[int, str, str]]:
    """(line, name, what) for each use in ``path`` of another module's underscore name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    own = _own_names(tree)
    imported: set[str] = set()
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            found += [(node.lineno, p, "import from a private module")
                      for p in parts if _private(p)]
            for alias in node.names:
                if _private(alias.name):
                    found.append((node.lineno, alias.name, "import of a private name"))
                imported.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found += [(node.lineno, p, "import of a private module")
                          for p in parts if _private(p)]
                imported.add(alias.asname or parts[0])
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in imported:
            found.append((node.lineno, node.attr, f"{base.id}.{node.attr} of an imported name"))
        elif isinstance(base, ast.Name) and base.id in ("self", "cls"):
            continue
        elif node.attr not in own:
            found.append((node.lineno, node.attr, "attribute defined in another module"))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_uses_another_modules_underscore_names(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    uses = [u for u in foreign_underscore_uses(path) if (rel, u[1]) not in PENDING]
    assert not uses, "\n".join(f"{rel}:{line}: {name} ({what})" for line, name, what in uses)


def test_every_pending_entry_is_still_needed() -> None:
    for rel, name in sorted(PENDING):
        names = {u[1] for u in foreign_underscore_uses(ROOT / rel)}
        assert name in names, f"{rel} no longer uses {name}: remove it from PENDING"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("from .model import _forward\n", "_forward"),
        ("from .backend._compat import x\n", "_compat"),
        ("import gpubackprop._private\n", "_private"),
        ("from . import optim\noptim._helper()\n", "_helper"),
        ("def f(model):\n    return model._loss_and_grad()\n", "_loss_and_grad"),
    ],
)
def test_the_check_catches(tmp_path: Path, source: str, name: str) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert name in {u[1] for u in foreign_underscore_uses(path)}


def test_the_check_allows_a_modules_own_names(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "class A:\n    def __init__(self):\n        self._x = 1\n"
        "def f(a: A):\n    return a._x, a.__class__\n"
    )
    assert foreign_underscore_uses(path) == []
