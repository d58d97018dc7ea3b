"""Every bad input raises the package's own error, naming the layer, what was expected and got."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.backend import has_gpu

LAYER0 = "layer 0 (Dense 3->4, relu)"
LAYER1 = "layer 1 (Dense 4->2)"


def _model(device: str = "cpu") -> gb.Sequential:
    return gb.Sequential([gb.Dense(3, 4, "relu"), gb.Dense(4, 2)], device=device, seed=0)


def _expect(
    fn: Callable[[], object], cls: type[Exception], base: type[Exception], *fragments: str
) -> str:
    """``fn()`` must raise ``cls`` (a GpuBackpropError and a ``base``) with every fragment."""
    with pytest.raises(cls) as info:
        fn()
    err = info.value
    assert isinstance(err, gb.GpuBackpropError)
    assert isinstance(err, base)
    msg = str(err)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


def _fit(model: gb.Sequential, x, y, **kwargs):
    kwargs.setdefault("loss", "mse")
    kwargs.setdefault("optimizer", gb.optim.SGD(0.1))
    kwargs.setdefault("verbose", False)
    return model.fit(x, y, **kwargs)


# --- input shapes ---------------------------------------------------------------------------
def test_wrong_input_width() -> None:
    _expect(lambda: _model().forward(np.zeros((5, 4))), gb.ShapeError, ValueError,
            LAYER0, "(batch, 3)", "(5, 4)")


# (1, 1, 3) became a valid (batch, time, features) input with issue 11: 4-D stays wrong
@pytest.mark.parametrize("shape", [(3,), (2, 3, 1), (1, 1, 1, 3), ()])
def test_wrong_input_rank(shape: tuple) -> None:
    _expect(lambda: _model().forward(np.zeros(shape)), gb.ShapeError, ValueError,
            LAYER0, "(batch, 3)", str(shape))


def test_one_dimensional_input_gets_a_hint() -> None:
    msg = _expect(lambda: _model().forward(np.zeros(3)), gb.ShapeError, ValueError, LAYER0)
    assert "x[None, :]" in msg


def test_empty_batch() -> None:
    _expect(lambda: _model().forward(np.zeros((0, 3))), gb.ShapeError, ValueError,
            LAYER0, "empty", "(0, 3)")


@pytest.mark.parametrize("method", ["loss_and_grad", "train_step"])
def test_mismatched_batch_sizes(method: str) -> None:
    model = _model()
    x, y = np.zeros((5, 3)), np.zeros((4, 2))
    args = (x, y, "mse") if method == "loss_and_grad" else (x, y, "mse", gb.optim.SGD(0.1))
    _expect(lambda: getattr(model, method)(*args), gb.ShapeError, ValueError, "MSE", "5", "4")
    labels = np.zeros(4, dtype=int)
    _expect(lambda: model.loss_and_grad(x, labels, "cross_entropy"), gb.ShapeError, ValueError,
            "SoftmaxCrossEntropy", "5", "4")


def test_mismatched_batch_sizes_in_fit_and_evaluate() -> None:
    x, y = np.zeros((5, 3)), np.zeros((4, 2))
    _expect(lambda: _fit(_model(), x, y), gb.ShapeError, ValueError, "5", "4")
    _expect(lambda: _model().evaluate(x, y, "mse"), gb.ShapeError, ValueError, "5", "4")


def test_target_width_mismatch() -> None:
    _expect(lambda: _model().loss_and_grad(np.zeros((2, 3)), np.zeros((2, 3)), "mse"),
            gb.ShapeError, ValueError, "MSE", "(2, 3)", "(2, 2)")


def test_fit_reports_the_real_input_shape() -> None:
    _expect(lambda: _fit(_model(), np.zeros((5, 4)), np.zeros((5, 2))), gb.ShapeError,
            ValueError, LAYER0, "(batch, 3)", "(5, 4)")


def test_fit_validation_data_of_wrong_width() -> None:
    val = (np.zeros((6, 4)), np.zeros((6, 2)))
    _expect(lambda: _fit(_model(), np.zeros((5, 3)), np.zeros((5, 2)), validation_data=val),
            gb.ShapeError, ValueError, LAYER0, "(batch, 3)", "(6, 4)")


def test_fit_and_predict_one_dimensional_input() -> None:
    _expect(lambda: _fit(_model(), np.zeros(5), np.zeros((5, 2))), gb.ShapeError, ValueError,
            LAYER0, "(5,)")
    _expect(lambda: _model().predict(np.zeros(3)), gb.ShapeError, ValueError, LAYER0, "(3,)")


def test_empty_dataset() -> None:
    _expect(lambda: _fit(_model(), np.zeros((0, 3)), np.zeros((0, 2))), gb.ShapeError,
            ValueError, "empty")
    _expect(lambda: _model().predict(np.zeros((0, 3))), gb.ShapeError, ValueError, "no rows")


# --- labels -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("labels", "fragment"),
    [([0, 1, 2, 1], "label 2 is out of range for 2 classes"),
     ([0, -3, 1, 1], "label -3"),
     ([0.0, 0.5, 1.0, 1.0], "whole numbers")],
)
def test_bad_labels_everywhere(labels: list, fragment: str) -> None:
    x, y = np.zeros((4, 3)), np.array(labels)
    model = _model()
    _expect(lambda: model.loss_and_grad(x, y, "cross_entropy"), gb.LabelError, ValueError,
            "SoftmaxCrossEntropy", fragment)
    _expect(lambda: model.train_step(x, y, "cross_entropy", gb.optim.SGD(0.1)), gb.LabelError,
            ValueError, fragment)
    _expect(lambda: _fit(model, x, y, loss="cross_entropy"), gb.LabelError, ValueError, fragment)
    _expect(lambda: model.evaluate(x, y, "cross_entropy"), gb.LabelError, ValueError, fragment)
    good = np.array([0, 1, 0, 1])
    _expect(lambda: _fit(model, x, good, loss="cross_entropy", validation_data=(x, y)),
            gb.LabelError, ValueError, fragment)


def test_bad_labels_do_not_touch_the_model() -> None:
    model = _model()
    before = model.flat_params.copy()
    with pytest.raises(gb.LabelError):
        model.train_step(np.ones((2, 3)), np.array([0, 9]), "cross_entropy", gb.optim.SGD(1.0))
    np.testing.assert_array_equal(model.flat_params, before)


# --- dtypes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x", "dtype_text"),
    [
        (np.array([["a", "b", "c"]]), "<U1"),
        (np.zeros((2, 3), dtype=complex), "complex128"),
        (np.zeros((2, 3), dtype=object), "object"),
        (np.zeros((2, 3), dtype="datetime64[s]"), "datetime64"),
    ],
)
def test_non_numeric_input(x: np.ndarray, dtype_text: str) -> None:
    _expect(lambda: _model().forward(x), gb.DTypeError, TypeError, LAYER0, dtype_text)
    _expect(lambda: _fit(_model(), np.repeat(x, 2, axis=0), np.zeros((2 * len(x), 2))),
            gb.DTypeError, TypeError, LAYER0, dtype_text)


@pytest.mark.parametrize("dtype", ["float16", "int32", np.float16, "complex64", "banana"])
def test_unsupported_model_dtype(dtype: object) -> None:
    msg = _expect(lambda: gb.Sequential([gb.Dense(3, 4)], device="cpu", dtype=dtype),
                  gb.DTypeError, TypeError, "float32", "float64")
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    assert name in msg


def test_non_numeric_target() -> None:
    _expect(lambda: _model().loss_and_grad(np.zeros((2, 3)), np.array([["a", "b"]] * 2), "mse"),
            gb.DTypeError, TypeError, "MSE", "<U1")


# --- backward misuse --------------------------------------------------------------------------
def test_backward_before_forward() -> None:
    _expect(lambda: _model().backward(np.zeros((2, 2))), gb.ShapeError, ValueError, "forward")
    model = _model()
    _expect(lambda: model.layers[1].backward(np.zeros((2, 2)), True), gb.ShapeError, ValueError,
            LAYER1, "before forward")
    act = gb.Sequential([gb.Activation("tanh")], device="cpu")
    _expect(lambda: act.layers[0].backward(np.zeros((2, 2)), True), gb.ShapeError, ValueError,
            "layer 0 (Activation tanh)", "before forward")


@pytest.mark.parametrize("shape", [(2, 3), (3, 2), (2,), (2, 2, 1)])
def test_backward_with_wrong_gradient_shape(shape: tuple) -> None:
    model = _model()
    model.forward(np.zeros((2, 3)))
    _expect(lambda: model.backward(np.zeros(shape)), gb.ShapeError, ValueError,
            LAYER1, str(shape), "(2, 2)")


# --- construction -----------------------------------------------------------------------------
def test_mismatched_layer_widths() -> None:
    _expect(lambda: gb.Sequential([gb.Dense(3, 4, "relu"), gb.Dense(5, 2)], device="cpu"),
            gb.ShapeError, ValueError, "layer 1 (Dense 5->2)", LAYER0, "5", "4")
    _expect(
        lambda: gb.Sequential(
            [gb.Dense(3, 4), gb.Activation("tanh"), gb.Dense(6, 2, "relu")], device="cpu"
        ),
        gb.ShapeError, ValueError, "layer 2 (Dense 6->2, relu)", "layer 1 (Activation tanh)",
        "6", "4",
    )


def test_layer_reused_in_two_models() -> None:
    layer = gb.Dense(3, 4)
    gb.Sequential([layer], device="cpu")
    _expect(lambda: gb.Sequential([gb.Dense(2, 3), layer], device="cpu"), gb.ConfigError,
            ValueError, "Dense 3->4", "another model")


def test_same_layer_twice_in_one_model() -> None:
    layer = gb.Dense(3, 3)
    _expect(lambda: gb.Sequential([layer, layer], device="cpu"), gb.ConfigError, ValueError,
            "twice")


def test_failed_reuse_leaves_the_first_model_intact() -> None:
    layer = gb.Dense(3, 4)
    first = gb.Sequential([layer], device="cpu")
    with pytest.raises(gb.ConfigError):
        gb.Sequential([gb.Dense(2, 3), layer], device="cpu")
    # the first model still calls its layer "layer 0"
    _expect(lambda: first.forward(np.zeros((2, 5))), gb.ShapeError, ValueError,
            "layer 0 (Dense 3->4)")


def test_failed_construction_does_not_claim_fresh_layers() -> None:
    used = gb.Dense(3, 4)
    gb.Sequential([used], device="cpu")
    fresh = gb.Dense(2, 3)
    with pytest.raises(gb.ConfigError):
        gb.Sequential([fresh, used], device="cpu")
    model = gb.Sequential([fresh, gb.Dense(3, 4)], device="cpu")  # no model owns `fresh`
    assert model.layers[0] is fresh


def test_bad_layer_lists() -> None:
    _expect(lambda: gb.Sequential([], device="cpu"), gb.ConfigError, ValueError, "at least one")
    _expect(lambda: gb.Sequential([gb.Dense(3, 4), "relu"], device="cpu"), gb.ConfigError,
            ValueError, "item 1", "str")


def test_unknown_names() -> None:
    _expect(lambda: gb.Dense(3, 4, "swish"), gb.ConfigError, ValueError, "'swish'", "'relu'")
    _expect(lambda: gb.Activation("softmax"), gb.ConfigError, ValueError, "'softmax'")
    _expect(lambda: _model().loss_and_grad(np.zeros((2, 3)), np.zeros((2, 2)), "hinge"),
            gb.ConfigError, ValueError, "'hinge'", "'mse'")
    _expect(lambda: _fit(_model(), np.zeros((2, 3)), np.zeros((2, 2)), loss="l1"),
            gb.ConfigError, ValueError, "'l1'")
    for device in ("tpu", "gpu", "cuda:x", "cuda:-1", "cpu:0", ""):
        _expect(lambda d=device: gb.Sequential([gb.Dense(3, 4)], device=d), gb.DeviceError,
                ValueError, repr(device), "'cpu'", "'cuda:N'")
    _expect(lambda: gb.get_backend(0), gb.DeviceError, ValueError, "0")  # type: ignore[arg-type]
    _expect(lambda: _model().evaluate(np.zeros((2, 3)), np.zeros((2, 2)), "mse", metrics=["f1"]),
            gb.ConfigError, ValueError, "'f1'", "accuracy")


@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_gpu(device: str) -> None:
    _expect(lambda: gb.get_backend(device), gb.DeviceError, ValueError, repr(device), "CuPy")
    _expect(lambda: gb.Sequential([gb.Dense(3, 4)], device=device), gb.DeviceError, ValueError,
            "CuPy")


# --- fit arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True, "8", None])
def test_fit_bad_batch_size(batch_size: object) -> None:
    _expect(lambda: _fit(_model(), np.zeros((4, 3)), np.zeros((4, 2)), batch_size=batch_size),
            gb.ConfigError, ValueError, "batch_size", repr(batch_size))


@pytest.mark.parametrize("epochs", [-1, 2.5, "3", None])
def test_fit_bad_epochs(epochs: object) -> None:
    _expect(lambda: _fit(_model(), np.zeros((4, 3)), np.zeros((4, 2)), epochs=epochs),
            gb.ConfigError, ValueError, "epochs", repr(epochs))


@pytest.mark.parametrize(
    "validation_data",
    [np.zeros((4, 3)), (np.zeros((4, 3)),), (np.zeros((4, 3)), np.zeros((4, 2)), None), "xy"],
)
def test_fit_validation_data_not_a_pair(validation_data: object) -> None:
    _expect(lambda: _fit(_model(), np.zeros((4, 3)), np.zeros((4, 2)),
                         validation_data=validation_data),
            gb.ConfigError, ValueError, "validation_data", "pair")


def test_fit_bad_optimizer() -> None:
    model = _model()
    before = model.flat_params.copy()
    _expect(lambda: _fit(model, np.zeros((4, 3)), np.zeros((4, 2)), optimizer=None),
            gb.ConfigError, ValueError, "optimizer")
    np.testing.assert_array_equal(model.flat_params, before)


def test_fit_bad_data_types() -> None:
    _expect(lambda: _fit(_model(), {"x": 1}, np.zeros((4, 2))), gb.GpuBackpropError,
            Exception, "dict")
    _expect(lambda: _model().predict(np.zeros((4, 3)), batch_size=0), gb.ConfigError,
            ValueError, "batch_size")


# --- devices ----------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cupy_array_into_cpu_model() -> None:
    cp = pytest.importorskip("cupy")
    model = _model("cpu")
    x = cp.zeros((2, 3), dtype=cp.float32)
    msg = _expect(lambda: model.forward(x), gb.DeviceError, ValueError, "cuda:0", "cpu")
    assert re.search(r"asnumpy|to the host", msg)
    model.forward(np.zeros((2, 3)))
    _expect(lambda: model.backward(cp.zeros((2, 2), dtype=cp.float32)), gb.DeviceError,
            ValueError, "cuda:0", "cpu")
    _expect(lambda: model.loss_and_grad(np.zeros((2, 3)), cp.zeros((2, 2)), "mse"),
            gb.DeviceError, ValueError, "cuda:0")


@pytest.mark.gpu
def test_numpy_array_into_gpu_model() -> None:
    pytest.importorskip("cupy")
    model = _model("cuda")
    msg = _expect(lambda: model.forward(np.zeros((2, 3), dtype=np.float32)), gb.DeviceError,
                  ValueError, "cpu", "cuda:0")
    assert "to_device" in msg
    xd = model.to_device(np.zeros((2, 3)))
    model.forward(xd)
    _expect(lambda: model.backward(np.zeros((2, 2), dtype=np.float32)), gb.DeviceError,
            ValueError, "cpu", "cuda:0")
    _expect(lambda: model.loss_and_grad(xd, np.zeros((2, 2)), "mse"), gb.DeviceError,
            ValueError, "cpu")
    _expect(lambda: model.train_step(np.zeros((2, 3)), np.zeros((2, 2)), "mse",
                                     gb.optim.SGD(0.1)), gb.DeviceError, ValueError, "cpu")
