"""model.explain: the formulas with this batch's shapes, and the real numbers."""

from __future__ import annotations

import code

import numpy as np
import pytest

import gpubackprop as gb


def _model() -> gb.Sequential:
    return gb.Sequential(
        [gb.Dense(7, 5, "sigmoid"), gb.Activation("relu"), gb.Dense(5, 3)], device="cpu", seed=0
    )


def test_explain_forward_lists_each_layer_with_shapes() -> None:
    model = _model()
    x = np.random.default_rng(0).random((4, 7))
    text = str(model.explain(x))
    assert "z_1 = x Wᵀ + b      (4, 7) · (7, 5) -> (4, 5)" in text
    assert "δ_1 = ∂L/∂a_1 ⊙ a_1 ⊙ (1 − a_1)" in text
    assert "dW = δ_3ᵀ a_2      (3, 4) · (4, 5) -> (3, 5)" in text
    assert "∂L/∂a_2 = δ_3 W      (4, 3) · (3, 5) -> (4, 5)" in text
    assert "the first layer skips δ W" in text
    assert "layer 1: Activation relu" in text
    assert "loss" not in text.split("\n")[-1]


def test_explain_backward_reports_the_real_gradient_norms() -> None:
    model = _model()
    rng = np.random.default_rng(1)
    x, y = rng.random((6, 7)), rng.integers(0, 3, 6)
    before = model.flat_params.copy()
    text = str(model.explain(x, y, "cross_entropy"))
    np.testing.assert_array_equal(model.flat_params, before)  # nothing was updated
    expected_loss = model.loss_and_grad(x, y, "cross_entropy")
    assert f"= {expected_loss:.6g}" in text
    norm = float(np.linalg.norm(model.gradients()["2.weight"]))
    assert f"|dW| = {norm:.4g}" in text
    assert "(softmax(a_3) − onehot(y)) / B" in text


def test_explain_returns_a_display_object_and_prints_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = _model()
    x = np.random.default_rng(0).random((4, 7))
    shown = model.explain(x)
    assert capsys.readouterr().out == ""  # printed only when asked
    assert isinstance(shown, gb.Explanation)
    assert repr(shown) == str(shown) == shown.text == "\n".join(shown.lines)
    assert shown.lines[0].startswith("Sequential on cpu, float32, batch B = 4")
    html = shown._repr_html_()
    assert html.startswith("<pre>") and html.endswith("</pre>")
    assert "-&gt; (4, 5)" in html and "-> (4, 5)" not in html
    print(shown)
    assert capsys.readouterr().out == shown.text + "\n"


def test_explain_at_a_repl_is_shown_once_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    """The interactive prompt echoes the result's repr: the text once, not escaped."""
    console = code.InteractiveConsole({"model": _model(), "x": np.ones((2, 7))})
    console.push("model.explain(x)")
    out = capsys.readouterr().out
    assert out.count("Sequential on cpu") == 1
    assert "\\n" not in out and "layer 2: Dense" in out


def test_explain_needs_a_target_with_a_loss() -> None:
    with pytest.raises(gb.ConfigError, match="target"):
        _model().explain(np.zeros((2, 7)), loss="mse")


@pytest.mark.parametrize("name", sorted(gb.ACTIVATIONS))
def test_every_activation_has_formula_texts_that_explain_prints(name: str) -> None:
    spec = gb.ACTIVATIONS[name]
    assert spec.forward_text.strip() and spec.derivative_text.strip()
    model = gb.Sequential([gb.Dense(3, 4, name), gb.Activation(name)], device="cpu", seed=0)
    text = str(model.explain(np.zeros((2, 3))))
    if name != "identity":  # a linear Dense layer prints "(linear)" instead
        forward, derivative = spec.formula_texts("a_1", "z_1")
        assert f"a_1 = {name}(z_1) = {forward}" in text
        assert f"δ_1 = ∂L/∂a_1 ⊙ {derivative}" in text
    forward, derivative = spec.formula_texts("a_2", "a_1")
    assert f"a_2 = {name}(a_1) = {forward}" in text
    assert f"(f′ = {derivative})" in text


def test_formula_texts_rename_a_and_z_only_as_names() -> None:
    assert gb.ACTIVATIONS["sigmoid"].formula_texts("a_1", "z_1") == (
        "1 / (1 + e^(−z_1))", "a_1 ⊙ (1 − a_1)"
    )
    assert gb.ACTIVATIONS["tanh"].formula_texts("a_3", "x") == ("tanh(x)", "(1 − a_3²)")
    assert gb.ACTIVATIONS["relu"].formula_texts("h", "u") == ("max(u, 0)", "[h > 0]")
