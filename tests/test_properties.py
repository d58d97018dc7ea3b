"""Property-based input validation: random shapes and dtypes thrown at the public
API either work or raise the package's own errors (GpuBackpropError), never a raw
NumPy/Python error."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpubackprop as gb
from gpubackprop.errors import GpuBackpropError

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
MAX_WIDTH = 1 << 12  # "huge" widths, capped so an example stays cheap

DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int8, np.int64, np.uint8,
                          np.bool_, np.complex64, object, "U3"])


@st.composite
def arrays(draw: st.DrawFn) -> Any:
    """An array of a random rank 0–3, shape (incl. empty and wide) and dtype, or a non-array."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from([None, 3, "x", [1.0, 2.0], [[1, 2, 3, 4]], [[]]]))
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.sampled_from([0, 1, 2, 3, 4, 5, MAX_WIDTH])) for _ in range(ndim))
    if np.prod(shape) > 1 << 16:
        shape = tuple(min(s, 4) for s in shape)
    dtype = draw(DTYPES)
    values = np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=shape) * 3
    if dtype == "U3":
        return values.astype("U3")
    if dtype is object:
        return values.astype(object)
    with np.errstate(invalid="ignore", over="ignore"):
        return values.astype(dtype)


def _model() -> gb.Sequential:
    return gb.Sequential([gb.Dense(4, 5, "relu"), gb.Dense(5, 3)], device="cpu", seed=0)


@contextlib.contextmanager
def _own_errors_only() -> Iterator[None]:
    """Success or a GpuBackpropError; anything else fails the example."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN inputs may warn; the error type matters here
        try:
            yield
        except GpuBackpropError:
            pass


CALLS: dict[str, Callable[[gb.Sequential, Any, Any], Any]] = {
    "forward": lambda m, x, y: m.forward(x),
    "backward": lambda m, x, y: (m.forward(np.zeros((2, 4), np.float32)), m.backward(x)),
    "loss_and_grad": lambda m, x, y: m.loss_and_grad(x, y, "cross_entropy"),
    "loss_and_grad_mse": lambda m, x, y: m.loss_and_grad(x, y, "mse"),
    "train_step": lambda m, x, y: m.train_step(x, y, "bce_with_logits", gb.optim.SGD(0.1)),
    "predict": lambda m, x, y: m.predict(x),
    "evaluate": lambda m, x, y: m.evaluate(x, y, "cross_entropy"),
    "fit": lambda m, x, y: m.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1),
                                 verbose=False, check_finite=True),
    "loss_ce": lambda m, x, y: gb.losses.SoftmaxCrossEntropy()(x, y),
    "loss_bce": lambda m, x, y: gb.losses.BCEWithLogits()(x, y),
    "loss_mse": lambda m, x, y: gb.losses.MSE()(x, y),
    "gradcheck": lambda m, x, y: gb.gradcheck(m, x, y, "mse", max_checks_per_tensor=2,
                                              raise_exception=False),
}


@SETTINGS
@given(call=st.sampled_from(sorted(CALLS)), x=arrays(), y=arrays())
def test_random_inputs_raise_only_package_errors(call: str, x: Any, y: Any) -> None:
    with _own_errors_only():
        CALLS[call](_model(), x, y)


@SETTINGS
@given(call=st.sampled_from(sorted(CALLS)), batch=st.integers(1, 6), y=arrays())
def test_valid_inputs_with_random_targets(call: str, batch: int, y: Any) -> None:
    x = np.random.default_rng(batch).normal(size=(batch, 4)).astype(np.float32)
    with _own_errors_only():
        CALLS[call](_model(), x, y)


@SETTINGS
@given(labels=st.lists(st.integers(-5, 8), min_size=1, max_size=6))
def test_labels_out_of_range_are_label_errors(labels: list[int]) -> None:
    x = np.ones((len(labels), 4), np.float32)
    y = np.array(labels)
    model = _model()
    if all(0 <= v < 3 for v in labels):
        model.loss_and_grad(x, y, "cross_entropy")
    else:
        try:
            model.loss_and_grad(x, y, "cross_entropy")
        except gb.LabelError:
            return
        raise AssertionError(f"labels {labels} were accepted")
