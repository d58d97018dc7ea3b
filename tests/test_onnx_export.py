"""gb.export_onnx: the exported inference graph, run by onnxruntime, gives
model.predict for every activation (1e-5 in float32), any batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.activations import ACTIVATIONS
from gpubackprop.onnx_export import ONNX_ACTIVATIONS, OPSET

onnx = pytest.importorskip("onnx", reason="the ONNX tests need gpubackprop[onnx]")
ort = pytest.importorskip("onnxruntime", reason="the ONNX tests need gpubackprop[onnx]")
from onnx.reference import ReferenceEvaluator  # noqa: E402

#: onnxruntime's CPU provider has no float64 kernel for these ops (Elu, Softplus, Erf)
NO_ORT_FLOAT64 = {"elu", "softplus", "gelu"}


def _model(activation: str, dtype: str = "float32") -> gb.Sequential:
    return gb.Sequential(
        [gb.Dense(6, 9, activation), gb.Dense(9, 7, activation, bias=False),
         gb.Activation(activation), gb.Dense(7, 3)],
        device="cpu", dtype=dtype, seed=4,
    )


def _x(rows: int, dtype: str = "float32", width: int = 6) -> np.ndarray:
    return (2 * np.random.default_rng(rows).standard_normal((rows, width))).astype(dtype)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def test_every_activation_is_exported() -> None:
    assert set(ONNX_ACTIVATIONS) == set(ACTIVATIONS)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_onnxruntime_gives_predict(activation: str, tmp_path: Path) -> None:
    model = _model(activation)
    path = tmp_path / "model.onnx"
    gb.export_onnx(model, path)
    for rows in (1, 37):
        x = _x(rows)
        y = _run(path, x)
        assert y.dtype == np.float32 and y.shape == (rows, 3)
        np.testing.assert_allclose(y, model.predict(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", sorted(set(ACTIVATIONS) - NO_ORT_FLOAT64))
def test_onnxruntime_gives_predict_in_float64(activation: str, tmp_path: Path) -> None:
    model = _model(activation, "float64")
    gb.export_onnx(model, tmp_path / "model.onnx")
    x = _x(37, "float64")
    np.testing.assert_allclose(_run(tmp_path / "model.onnx", x), model.predict(x), atol=1e-12)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_the_float64_graph_is_exact_in_the_reference_runtime(
    activation: str, tmp_path: Path
) -> None:
    model = _model(activation, "float64")
    gb.export_onnx(model, tmp_path / "model.onnx")
    x = _x(37, "float64")
    y = ReferenceEvaluator(str(tmp_path / "model.onnx")).run(None, {"x": x})[0]
    # onnx.reference computes Erf in float32 (np.vectorize(math.erf, otypes="f"))
    tol = 1e-6 if activation == "gelu" else 1e-12
    np.testing.assert_allclose(y, model.predict(x), atol=tol)


def test_a_deep_model(tmp_path: Path) -> None:
    names = list(ACTIVATIONS)
    layers = [gb.Dense(6 if i == 0 else 16, 16, name) for i, name in enumerate(names * 2)]
    model = gb.Sequential([*layers, gb.Dense(16, 4)], device="cpu", seed=0)
    gb.export_onnx(model, tmp_path / "deep.onnx")
    x = _x(37)
    np.testing.assert_allclose(_run(tmp_path / "deep.onnx", x), model.predict(x), atol=1e-5)


def test_the_graph(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    returned = gb.export_onnx(_model("gelu"), str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto == returned
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)] and OPSET >= 17
    (x,), (y,) = proto.graph.input, proto.graph.output
    assert (x.name, y.name) == ("x", "y")
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["batch", 6]
    assert [d.dim_param or d.dim_value for d in y.type.tensor_type.shape.dim] == ["batch", 3]
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Gemm") == 3 and ops.count("Erf") == 3 and "Gelu" not in ops
    gemms = [node for node in proto.graph.node if node.op_type == "Gemm"]
    assert all(onnx.helper.get_attribute_value(a) == 1 for n in gemms for a in n.attribute)
    assert [len(n.input) for n in gemms] == [3, 2, 3]  # the second Dense has no bias
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(weights["0.weight"], _model("gelu").parameters()["0.weight"])


def test_a_newer_opset_and_an_activation_only_model(tmp_path: Path) -> None:
    model = gb.Sequential([gb.Activation("silu")], device="cpu")
    gb.export_onnx(model, tmp_path / "act.onnx", opset=18)
    x = _x(5, width=11)
    np.testing.assert_allclose(_run(tmp_path / "act.onnx", x), model.predict(x), atol=1e-6)


def test_an_opset_below_17_is_refused(tmp_path: Path) -> None:
    with pytest.raises(gb.ConfigError, match=r"export_onnx: opset must be an int >= 17, got 13"):
        gb.export_onnx(_model("relu"), tmp_path / "m.onnx", opset=13)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("layers", "named"),
    [
        ([gb.Embedding(5, 3), gb.Dense(3, 2)], r"layer 0 \(Embedding 5x3\)"),
        ([gb.LSTM(3, 4), gb.Dense(4, 2)], r"layer 0 \(LSTM 3->4\)"),
        ([gb.Dense(3, 3), gb.GRU(3, 4)], r"layer 1 \(GRU 3->4\)"),
        ([gb.RNN(3, 4, device="cpu")], r"layer 0 \(RNN 3->4, tanh\)"),
        ([gb.Dense(3, 3), gb.LayerNorm(3)], r"layer 1 \(LayerNorm"),
        ([gb.Dense(3, 3), gb.Dropout(0.5)], r"layer 1 \(Dropout"),
    ],
)
def test_the_sequence_and_norm_layers_are_refused_by_name(
    layers: list, named: str, tmp_path: Path
) -> None:
    """No ONNX export of Embedding, LSTM, GRU, RNN, LayerNorm, Dropout: a ConfigError
    naming the layer and what is supported, and no file written."""
    model = gb.Sequential(layers, device="cpu")
    path = tmp_path / "m.onnx"
    with pytest.raises(gb.ConfigError, match=rf"export_onnx: {named}.* has no ONNX export; "
                       "supported: Dense, Activation"):
        gb.export_onnx(model, path)
    assert not path.exists()
