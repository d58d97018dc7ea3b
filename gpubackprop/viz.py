"""Pictures of computational graphs: Graphviz DOT text (:func:`to_dot`), and PNG/SVG/PDF
through Graphviz's ``dot`` program (:func:`render`; Graphviz is not a Python package)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, GraphvizError
from .graph import Tensor, topological_order

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
_INSTALL_HINT = (
    "install Graphviz: `apt-get install graphviz` (Debian/Ubuntu), "
    "`brew install graphviz` (macOS) or `conda install -c conda-forge graphviz`; "
    "or write gb.to_dot(tensor) to a .dot file and render it elsewhere"
)
_FILL = {"param": "#cfe2ff", "const": "#eeeeee", "gate": "#ffffff", "root": "#ffe08a"}


def _escape(text: str) -> str:
    """Text for a double-quoted DOT string: backslashes and quotes escaped, newlines as \\n."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _values(t: Tensor, array: Any, precision: int) -> str:
    """A small array as text, e.g. ``[0.5, -1.25]``."""
    host = np.asarray(t.backend.to_numpy(array))
    return np.array2string(host, precision=precision, separator=", ", suppress_small=True)


def _label(t: Tensor, max_values: int, precision: int) -> str:
    """The lines of a node: what made it, shape and dtype, value and grad when small."""
    if t.gate is not None:
        title = t.gate.describe() if t.name is None else f"{t.name} = {t.gate.describe()}"
    else:
        title = t.name if t.name is not None else ("param" if t.requires_grad else "const")
    shape = "scalar" if t.ndim == 0 else str(t.shape)
    lines = [title, f"{shape} {t.dtype.name}"]
    if t.size <= max_values:
        lines.append("value " + _values(t, t.data, precision))
        if t.grad is not None:
            lines.append("grad " + _values(t, t.grad, precision))
    return "\n".join(lines)


def to_dot(tensor: Tensor, *, max_values: int = 6, precision: int = 4) -> str:
    """Graphviz DOT text of the graph that produced ``tensor``, drawn left to right.

    One node per tensor (``t0``, ``t1``, … in topological order, ``tensor`` last)
    labelled with its gate (a leaf with its name, else "param" if it requires grad,
    "const" if not), shape and dtype, plus its value and
    gradient where it has at most ``max_values`` elements (``precision`` digits);
    one edge ``input -> output`` per gate input, so #edges = Σ_gates #inputs, numbered
    0, 1, … in argument order where a gate has several (a − b, A @ B). Leaves that
    require grad are blue, constants grey, the output gold.
    """
    order = topological_order(tensor)
    ids = {id(t): f"t{i}" for i, t in enumerate(order)}
    lines = [
        "digraph graph_of_tensor {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
    ]
    for t in order:
        if t is tensor:
            kind = "root"
        elif t.gate is not None:
            kind = "gate"
        else:
            kind = "param" if t.requires_grad else "const"
        label = _escape(_label(t, max_values, precision))
        lines.append(f'  {ids[id(t)]} [label="{label}", fillcolor="{_FILL[kind]}"];')
    for t in order:
        numbered = len(t.parents) > 1
        for i, parent in enumerate(t.parents):
            attrs = f' [label="{i}"]' if numbered else ""
            lines.append(f"  {ids[id(parent)]} -> {ids[id(t)]}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(tensor: Tensor, path: str | Path, **dot_options: Any) -> Path:
    """Draw the graph of ``tensor`` into ``path`` (.png, .svg or .pdf) with Graphviz.

    Runs ``dot -T<format> -o path`` on :func:`to_dot`'s text (``dot_options`` go
    to :func:`to_dot`). Raises :class:`GraphvizError` with install instructions
    when the ``dot`` program is not on PATH. Returns the path written.
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"render: cannot tell the picture format from {path.name!r}; "
            f"use one of {', '.join(_FORMATS)}"
        )
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizError(
            f"render: the Graphviz program `dot` was not found on PATH; {_INSTALL_HINT}"
        )
    result = subprocess.run(
        [dot, f"-T{fmt}", "-o", str(path)],
        input=to_dot(tensor, **dot_options),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise GraphvizError(f"render: dot failed ({result.returncode}): {result.stderr.strip()}")
    return path


__all__ = ["render", "to_dot"]
