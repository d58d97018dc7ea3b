"""Every ```python block of README.md runs as pasted, each in a fresh interpreter.

A block may carry one marker, an HTML comment on the line before it:

* ``<!-- needs a GPU -->``: run only where gpubackprop sees a CUDA device;
* ``<!-- the file examples/NAME.py -->``: the block is that file without its
  docstring (checked here; tests/test_examples.py runs the file).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gpubackprop as gb

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(?:<!-- (?P<marker>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.DOTALL)
FILE_MARKER = re.compile(r"the file (examples/\w+\.py)")
TIMEOUT_S = 300


def readme_blocks() -> list[tuple[int, str, str]]:
    """(line, marker or "", code) for each ```python block of README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start("code")), m.group("marker") or "", m.group("code"))
            for m in BLOCK.finditer(text)]


def without_docstring(path: Path) -> str:
    """The source of ``path`` after its module docstring, blank lines around it dropped."""
    source = path.read_text(encoding="utf-8")
    end = ast.parse(source).body[0].end_lineno
    return "\n".join(source.splitlines()[end:]).strip("\n") + "\n"


def test_the_readme_has_python_blocks_with_known_markers() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 4
    for line, marker, _ in blocks:
        assert marker in ("", "needs a GPU") or FILE_MARKER.fullmatch(marker), (
            f"README.md line {line}: unknown marker {marker!r}")


def test_the_tour_is_examples_quickstart() -> None:
    files = [(FILE_MARKER.fullmatch(m), code) for _, m, code in readme_blocks()]
    pairs = [(ROOT / match.group(1), code) for match, code in files if match]
    assert [path.name for path, _ in pairs] == ["quickstart.py"]
    for path, code in pairs:
        assert code == without_docstring(path), f"README.md's block differs from {path}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("marker", "code"),
    [pytest.param(m, c, id=f"line{line}") for line, m, c in readme_blocks()
     if not FILE_MARKER.fullmatch(m)],
)
def test_readme_block_runs_as_pasted(marker: str, code: str, tmp_path: Path) -> None:
    if marker == "needs a GPU" and len(gb.available_devices()) == 1:
        pytest.skip("needs a CUDA device")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"README block failed:\n{code}\n{done.stderr[-3000:]}"
