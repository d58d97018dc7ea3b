"""gb.gradcheck: every activation, layer kind, shape and loss passes; a broken backward fails."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.backend.numpy_ops import NumpyOps
from gpubackprop.gradcheck import central_difference
from gpubackprop.layers import Dense

NAMES = sorted(gb.ACTIVATIONS)


def _targets(loss: str | None, batch: int, out: int, rng: np.random.Generator):
    if loss is None:
        return None
    if loss == "mse":
        return rng.standard_normal((batch, out))
    if loss == "cross_entropy":
        return rng.integers(0, out, batch)
    if loss == "bce_with_logits":
        return rng.uniform(0.0, 1.0, (batch, out))
    raise AssertionError(loss)


def _model(layers, seed: int = 0) -> gb.Sequential:
    return gb.Sequential(layers, device="cpu", dtype="float64", seed=seed)


def _shift_biases(model: gb.Sequential, rng: np.random.Generator) -> None:
    """Non-zero biases, so the bias path is exercised (init sets them to zero)."""
    for name, view in model.parameters().items():
        if name.endswith("bias"):
            view[...] = 0.3 * rng.standard_normal(view.shape)


# --- passing checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("act", NAMES)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_activation_dense(act: str, bias: bool, rng: np.random.Generator) -> None:
    model = _model([gb.Dense(4, 3, act, bias=bias)])
    _shift_biases(model, rng)
    x = rng.standard_normal((5, 4))
    report = gb.gradcheck(model, x)
    assert report.ok and bool(report)
    names = [e.name for e in report.entries]
    assert names == (["0.weight", "0.bias", "input"] if bias else ["0.weight", "input"])
    assert [e.checked for e in report.entries] == ([12, 3, 20] if bias else [12, 20])


@pytest.mark.parametrize("act", NAMES)
def test_standalone_activation_in_model(act: str, rng: np.random.Generator) -> None:
    model = _model([gb.Dense(3, 5), gb.Activation(act), gb.Dense(5, 2)])
    _shift_biases(model, rng)
    x = rng.standard_normal((4, 3))
    report = gb.gradcheck(model, x, rng.standard_normal((4, 2)), "mse")
    assert report.ok
    assert [e.name for e in report.entries] == [
        "0.weight", "0.bias", "2.weight", "2.bias", "input",
    ]


@pytest.mark.parametrize("loss", [None, "mse"])
def test_standalone_activation_layer_directly(loss: str | None, rng: np.random.Generator) -> None:
    """gradcheck takes a bare Layer: an Activation has no width of its own."""
    x = rng.uniform(-2.0, 2.0, (3, 4))
    x[np.abs(x) < 0.05] = 0.5  # off the relu kinks
    y = rng.standard_normal((3, 4)) if loss else None
    for act in NAMES:
        report = gb.gradcheck(gb.Activation(act), x, y, loss)
        assert report.ok, act
        assert [e.name for e in report.entries] == ["input"]


def test_bare_dense_layer(rng: np.random.Generator) -> None:
    layer = gb.Dense(3, 2, "silu")
    report = gb.gradcheck(layer, rng.standard_normal((4, 3)))
    assert report.ok
    assert [e.name for e in report.entries] == ["0.weight", "0.bias", "input"]


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 5, 3), (2, 1, 4), (7, 3, 1), (3, 6, 6)])
@pytest.mark.parametrize("loss", [None, "mse", "cross_entropy", "bce_with_logits"])
def test_shapes_and_losses(shape: tuple, loss: str | None, rng: np.random.Generator) -> None:
    batch, d_in, d_out = shape
    if loss == "cross_entropy" and d_out == 1:
        d_out = 2
    model = _model([gb.Dense(d_in, 4, "tanh"), gb.Dense(4, d_out)])
    _shift_biases(model, rng)
    x = rng.standard_normal((batch, d_in))
    report = gb.gradcheck(model, x, _targets(loss, batch, d_out, rng), loss)
    assert report.ok


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "bce_with_logits"])
def test_loss_objects_and_soft_targets(loss: str, rng: np.random.Generator) -> None:
    model = _model([gb.Dense(3, 4, "sigmoid"), gb.Dense(4, 3)])
    x = rng.standard_normal((5, 3))
    y = _targets(loss, 5, 3, rng)
    if loss == "cross_entropy":  # probability rows
        y = rng.uniform(0, 1, (5, 3))
        y /= y.sum(axis=1, keepdims=True)
    obj = gb.losses.get_loss(loss)
    assert gb.gradcheck(model, x, y, obj).ok
    if loss == "mse":
        assert gb.gradcheck(model, x, y, gb.losses.MSE("sum")).ok


@pytest.mark.parametrize("seed", [0, 1])
def test_deep_mixed_models(seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = _model(
        [
            gb.Dense(5, 6, "gelu"),
            gb.Dense(6, 6, "sigmoid", bias=False),
            gb.Activation("silu"),
            gb.Dense(6, 5, "elu"),
            gb.Dense(5, 4, "softplus"),
            gb.Dense(4, 4, "gelu_tanh"),
            gb.Dense(4, 3, "tanh"),
            gb.Dense(3, 3),
        ],
        seed=seed,
    )
    _shift_biases(model, rng)
    x = rng.standard_normal((6, 5))
    labels = rng.integers(0, 3, 6)
    report = gb.gradcheck(model, x, labels, "cross_entropy")
    assert report.ok
    assert len(report.entries) == 14  # 7 weights, 6 biases, input


def test_relu_family_deep_model(rng: np.random.Generator) -> None:
    model = _model(
        [gb.Dense(4, 8, "relu"), gb.Dense(8, 8, "leaky_relu"), gb.Dense(8, 2, "elu")], seed=4
    )
    _shift_biases(model, rng)
    x = rng.standard_normal((5, 4))
    assert gb.gradcheck(model, x, rng.standard_normal((5, 2)), "mse").ok


def test_max_checks_per_tensor_subsamples(rng: np.random.Generator) -> None:
    model = _model([gb.Dense(10, 8, "tanh"), gb.Dense(8, 3)])
    report = gb.gradcheck(model, rng.standard_normal((4, 10)), max_checks_per_tensor=5)
    assert report.ok
    assert [e.checked for e in report.entries] == [5, 5, 5, 3, 5]


def test_check_input_false_skips_input(rng: np.random.Generator) -> None:
    model = _model([gb.Dense(3, 2)])
    report = gb.gradcheck(model, rng.standard_normal((2, 3)), check_input=False)
    assert [e.name for e in report.entries] == ["0.weight", "0.bias"]


def test_gradcheck_of_losses(rng: np.random.Generator) -> None:
    z = rng.standard_normal((4, 3))
    assert gb.gradcheck(gb.losses.MSE(), z, rng.standard_normal((4, 3))).ok
    assert gb.gradcheck(gb.losses.SoftmaxCrossEntropy(), z, np.array([0, 2, 1, 1])).ok
    assert gb.gradcheck(gb.losses.BCEWithLogits(), z, rng.uniform(0, 1, (4, 3))).ok


def test_gradcheck_does_not_change_parameters(rng: np.random.Generator) -> None:
    model = _model([gb.Dense(3, 4, "tanh"), gb.Dense(4, 2)])
    before = model.flat_params.copy()
    gb.gradcheck(model, rng.standard_normal((3, 3)))
    np.testing.assert_array_equal(model.flat_params, before)


# --- the report -------------------------------------------------------------------------------
def test_report_table_names_tensors(rng: np.random.Generator) -> None:
    model = _model([gb.Dense(3, 4, "tanh"), gb.Dense(4, 2, bias=False)])
    report = gb.gradcheck(model, rng.standard_normal((2, 3)))
    assert isinstance(report, gb.GradcheckReport)
    table = str(report)
    lines = table.splitlines()
    assert "tensor" in lines[0] and "max abs err" in lines[0]
    assert len(lines) == 1 + 4
    for name, line in zip(["0.weight", "0.bias", "1.weight", "input"], lines[1:], strict=True):
        assert line.startswith(name) and line.rstrip().endswith("ok")
    for e in report.entries:
        assert e.max_abs_error <= 1e-6 and e.ok


# --- checks that must fail --------------------------------------------------------------------
def _broken_activation(monkeypatch: pytest.MonkeyPatch, name: str, factor: float) -> None:
    spec = gb.ACTIVATIONS[name]

    def backward(xp, delta, saved, out):
        spec.backward(xp, delta, saved, out)
        out *= factor
        return out

    monkeypatch.setitem(gb.ACTIVATIONS, name, dataclasses.replace(spec, backward=backward))


@pytest.mark.parametrize("act", ["tanh", "gelu", "relu"])
def test_fails_on_broken_activation_backward(
    act: str, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    _broken_activation(monkeypatch, act, 1.01)
    model = _model([gb.Dense(3, 4, act), gb.Dense(4, 2)])
    x = rng.standard_normal((5, 3))
    with pytest.raises(gb.GradcheckError) as info:
        gb.gradcheck(model, x)
    msg = str(info.value)
    assert "FAIL" in msg and "0.weight" in msg and "input" in msg
    assert isinstance(info.value, AssertionError)
    report = gb.gradcheck(model, x, raise_exception=False)
    assert not report.ok and not bool(report)
    verdict = {e.name: e.ok for e in report.entries}
    # the layer after the broken one is still right, the ones before it are not
    assert verdict == {"0.weight": False, "0.bias": False, "1.weight": True, "1.bias": True,
                       "input": False}


def test_fails_on_broken_standalone_activation(
    monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    _broken_activation(monkeypatch, "sigmoid", 0.98)
    model = _model([gb.Dense(3, 4), gb.Activation("sigmoid"), gb.Dense(4, 2)])
    with pytest.raises(gb.GradcheckError):
        gb.gradcheck(model, rng.standard_normal((3, 3)))


def test_fails_on_broken_bias_gradient(
    monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    original = NumpyOps.column_sum

    def column_sum(self, x, out):
        original(self, x, out)
        out += 1e-3
        return out

    monkeypatch.setattr(NumpyOps, "column_sum", column_sum)
    model = _model([gb.Dense(3, 2, "tanh")])
    report = gb.gradcheck(model, rng.standard_normal((4, 3)), raise_exception=False)
    assert {e.name: e.ok for e in report.entries} == {
        "0.weight": True, "0.bias": False, "input": True,
    }
    assert "FAIL" in str(report).splitlines()[2]


def test_fails_on_broken_weight_gradient(
    monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    original = Dense.backward

    def backward(self, delta, need_input_grad):
        result = original(self, delta, need_input_grad)
        if self.index == 1:
            self.grads["weight"][0, 0] *= 1.5
        return result

    monkeypatch.setattr(Dense, "backward", backward)
    model = _model([gb.Dense(3, 2, "sigmoid"), gb.Dense(2, 2)])
    x = rng.standard_normal((4, 3))
    with pytest.raises(gb.GradcheckError, match=r"1\.weight .*FAIL at \(0, 0\)"):
        gb.gradcheck(model, x)
    report = gb.gradcheck(model, x, raise_exception=False)
    assert [e.name for e in report.entries if not e.ok] == ["1.weight"]
    assert report.entries[2].worst_index == (0, 0)


def test_fails_on_broken_loss_gradient(
    monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    original = NumpyOps.mse

    def mse(self, pred, target, grad, *, mean):
        value = original(self, pred, target, grad, mean=mean)
        grad *= 2.0
        return value

    monkeypatch.setattr(NumpyOps, "mse", mse)
    z, y = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    with pytest.raises(gb.GradcheckError, match="MSE"):
        gb.gradcheck(gb.losses.MSE(), z, y)
    model = _model([gb.Dense(2, 2)])
    with pytest.raises(gb.GradcheckError):
        gb.gradcheck(model, z, y, "mse")


# --- argument errors --------------------------------------------------------------------------
def test_float32_model_rejected(rng: np.random.Generator) -> None:
    model = gb.Sequential([gb.Dense(3, 2)], device="cpu", dtype="float32", seed=0)
    with pytest.raises(gb.DTypeError, match="float64") as info:
        gb.gradcheck(model, rng.standard_normal((2, 3)))
    assert isinstance(info.value, TypeError)


def test_float32_loss_prediction_rejected() -> None:
    with pytest.raises(gb.DTypeError, match="float64"):
        gb.gradcheck(gb.losses.MSE(), np.zeros((2, 2), np.float32), np.zeros((2, 2)))


def test_layer_of_a_model_rejected() -> None:
    model = _model([gb.Dense(3, 2)])
    with pytest.raises(gb.ConfigError, match="layer 0"):
        gb.gradcheck(model.layers[0], np.zeros((2, 3)))


def test_loss_without_target_rejected() -> None:
    with pytest.raises(gb.ConfigError, match="target"):
        gb.gradcheck(_model([gb.Dense(3, 2)]), np.zeros((2, 3)), None, "mse")
    with pytest.raises(gb.ConfigError, match="target"):
        gb.gradcheck(gb.losses.MSE(), np.zeros((2, 3)))


def test_bad_target_type_rejected() -> None:
    with pytest.raises(gb.ConfigError, match="Sequential, a Layer or a Loss"):
        gb.gradcheck("model", np.zeros((2, 3)))  # type: ignore[arg-type]


def test_gradcheck_routes_graph_functions() -> None:
    x = gb.Tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    report = gb.gradcheck(lambda t: (t.tanh() * t).sum(), x)
    assert report.ok

    def wrong(t):  # a sigmoid whose gradient is broken by a constant factor
        class Doubled(gb.Gate):
            def forward(self, a):
                return a * 2.0

            def backward(self, grad, needs):
                return (grad * 3.0,)

        return Doubled()(t).sum()

    with pytest.raises(gb.GradcheckError):
        gb.gradcheck(wrong, x)
    with pytest.raises(gb.ConfigError, match="no loss"):
        gb.gradcheck(lambda t: t.sum(), x, loss="mse")


def test_gradcheck_of_a_built_standalone_layer() -> None:
    layer = gb.Dense(4, 3, "tanh").build(dtype="float64", seed=0)
    assert gb.gradcheck(layer, np.random.default_rng(1).standard_normal((5, 4))).ok


def test_central_difference_perturbs_the_given_entries_and_restores_them() -> None:
    a = np.array([[0.5, -1.0], [2.0, 3.0]])
    before = a.copy()
    numeric = central_difference(lambda: float((a**3).sum()), a, [(0, 1), (1, 0)], 1e-6)
    np.testing.assert_allclose(numeric, [3.0, 12.0], rtol=1e-8)  # ∂Σa³/∂a = 3a²
    np.testing.assert_array_equal(a, before)
    assert central_difference(lambda: 0.0, a, [], 1e-6).shape == (0,)
