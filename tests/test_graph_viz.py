"""Pictures of graphs: DOT text parsed back, rendering through Graphviz, the error without it,
and the graph tour example."""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import viz

NODE = re.compile(r'^\s*(t\d+)\s*\[label="((?:[^"\\]|\\.)*)"', re.MULTILINE)
EDGE = re.compile(r"^\s*(t\d+)\s*->\s*(t\d+)", re.MULTILINE)
HAS_DOT = shutil.which("dot") is not None


def _parse(dot: str) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Node id -> label lines, and the edges, from DOT text."""
    assert dot.lstrip().startswith("digraph") and dot.rstrip().endswith("}")
    nodes = {m.group(1): m.group(2).split("\\n") for m in NODE.finditer(dot)}
    return nodes, EDGE.findall(dot)


def _two_layer(device: str) -> tuple[gb.Tensor, dict[str, gb.Tensor]]:
    """The seed notes' f = W2 max(0, W1 x) with the loss Σ f²."""
    backend = gb.get_backend(device)
    rng = np.random.default_rng(0)
    x = gb.Tensor(backend.asarray(rng.standard_normal(3)), name="x")
    w1 = gb.Tensor(backend.asarray(rng.standard_normal((4, 3))), requires_grad=True, name="W1")
    w2 = gb.Tensor(backend.asarray(rng.standard_normal((2, 4))), requires_grad=True, name="W2")
    s = w2 @ gb.maximum(w1 @ x, 0.0)
    return (s * s).sum(), {"x": x, "W1": w1, "W2": w2, "s": s}


def test_to_dot_has_one_node_per_tensor_and_one_edge_per_gate_input(device: str) -> None:
    loss, _ = _two_layer(device)
    nodes, edges = _parse(gb.to_dot(loss))
    # W1, x, matmul, const 0, max, W2, matmul, mul, sum
    assert len(nodes) == 9
    # matmul 2 + max 2 + matmul 2 + mul 2 (s twice) + sum 1
    assert len(edges) == 9
    titles = {lines[0]: node for node, lines in nodes.items()}
    assert {"x", "W1", "W2", "const", "max", "mul", "sum"} <= set(titles)
    assert sorted(lines[0] for lines in nodes.values()).count("matmul") == 2
    assert edges.count((titles["mul"], titles["sum"])) == 1
    s_node = [n for n, lines in nodes.items() if lines[0] == "matmul" and "(2,)" in lines[1]]
    assert edges.count((s_node[0], titles["mul"])) == 2  # s * s reads s twice
    assert nodes[titles["W1"]][1] == "(4, 3) float64"
    assert nodes[titles["sum"]][1] == "scalar float64"
    assert not any(line.startswith("grad") for lines in nodes.values() for line in lines)
    # the output is the last node; every edge goes forward in the numbering
    assert titles["sum"] == f"t{len(nodes) - 1}"
    assert all(int(a[1:]) < int(b[1:]) for a, b in edges)


def test_to_dot_shows_small_values_and_gradients_after_backward(device: str) -> None:
    loss, t = _two_layer(device)
    loss.backward()
    nodes, _ = _parse(gb.to_dot(loss, max_values=4, precision=3))
    by_title = {lines[0]: lines for lines in nodes.values()}
    x_values = np.array(ast.literal_eval(by_title["x"][2].removeprefix("value ")))
    np.testing.assert_allclose(x_values, t["x"].numpy(), atol=5e-4)
    s_lines = next(lines for lines in nodes.values() if lines[1] == "(2,) float64")
    s_grad = np.array(ast.literal_eval(s_lines[3].removeprefix("grad ")))
    np.testing.assert_allclose(s_grad, 2 * t["s"].numpy(), atol=5e-3)  # ∂Σs²/∂s = 2s
    assert by_title["sum"][3] == "grad 1."
    assert len(by_title["W1"]) == 2  # 12 elements > max_values: no value, no grad shown


def test_to_dot_escapes_names_and_numbers_the_inputs_of_binary_gates() -> None:
    a = gb.Tensor(np.ones(2), requires_grad=True, name='say "hi"')
    dot = gb.to_dot(1.0 - a)
    assert 'say \\"hi\\"' in dot
    nodes, edges = _parse(dot)
    assert len(nodes) == 3 and len(edges) == 2
    assert re.search(r't0 -> t2 \[label="0"\]', dot) and re.search(r't1 -> t2 \[label="1"\]', dot)


def test_unnamed_leaves_are_params_or_consts_and_named_ones_keep_their_name() -> None:
    w = gb.Tensor(np.ones((2, 3)), requires_grad=True)
    b = gb.Tensor(np.ones(3), requires_grad=True, name="b")
    c = gb.Tensor(np.ones(3))
    nodes, _ = _parse(gb.to_dot((w[[0, 0]] * c + b).max(axis=1)))
    titles = [lines[0] for lines in nodes.values()]
    assert "input" not in titles
    assert titles.count("param") == 1 and titles.count("const") == 1 and "b" in titles
    assert "[int[2]]" in titles and titles[-1] == "max(axis=1)"


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` is not installed")
def test_render_draws_svg_and_png(tmp_path: Path) -> None:
    loss, _ = _two_layer("cpu")
    loss.backward()
    svg = gb.render(loss, tmp_path / "graph.svg")
    text = svg.read_text()
    assert "<svg" in text
    assert text.count('class="node"') == 9 and text.count('class="edge"') == 9
    png = gb.render(loss, tmp_path / "graph.PNG")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_without_graphviz_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    loss, _ = _two_layer("cpu")
    with pytest.raises(gb.GraphvizError) as info:
        gb.render(loss, tmp_path / "graph.png")
    message = str(info.value)
    for hint in ("`dot`", "apt-get install graphviz", "brew install graphviz", "conda"):
        assert hint in message
    assert isinstance(info.value, RuntimeError) and not (tmp_path / "graph.png").exists()


def test_render_rejects_an_unknown_format(tmp_path: Path) -> None:
    loss, _ = _two_layer("cpu")
    with pytest.raises(gb.ConfigError, match=r"graph\.gif"):
        gb.render(loss, tmp_path / "graph.gif")


def test_graph_tour_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parent.parent / "examples" / "graph_tour.py"
    spec = importlib.util.spec_from_file_location("graph_tour", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--device", "cpu"])
    out = capsys.readouterr().out
    assert "df/dx = -4, df/dy = -4" in out and "df/dz = 3" in out
    assert "same gradients: True" in out
    assert result["last_loss"] < 0.5 * result["first_loss"]
    assert result["indexed_xent"] == pytest.approx(result["fused_xent"], rel=1e-12)
    assert "d/dtable rows = [3. 0. 1.]" in out and "d/dv = [0.  0.5 0.5]" in out
    assert "NumpyOnTensorError" in out and "t.exp()" in out
