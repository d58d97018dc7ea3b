"""fit / evaluate check their data for NaN/Inf once, before training (``check_data``),
naming the row and column of the first; ``first_nonfinite`` finds it in blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import anomaly
from gpubackprop.errors import ConfigError, NumericalError

from .cupy_like import CUPY_LIKE
from .helpers import to_numpy


def _model(device: str = "cpu") -> gb.Sequential:
    return gb.Sequential([gb.Dense(5, 8, "tanh"), gb.Dense(8, 3)], device=device, seed=0)


def _data(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 5)).astype(np.float32), np.arange(n) % 3


def test_fit_names_the_first_bad_row_and_column_before_any_step(device: str) -> None:
    model, (x, y) = _model(device), _data()
    x[17, 3] = np.nan
    x[30, 0] = np.inf
    opt = gb.optim.SGD(0.1)
    before = to_numpy(model.flat_params).copy()
    with pytest.raises(NumericalError) as info:
        model.fit(x, y, loss="cross_entropy", optimizer=opt, verbose=False)
    message = str(info.value)
    assert message.startswith("fit: non-finite float32 value (NaN) in x at row 17, column 3")
    assert "2 non-finite values in all" in message and "check_data=False" in message
    assert info.value.pass_ == "input"
    assert opt.step_count == 0
    np.testing.assert_array_equal(to_numpy(model.flat_params), before)


def test_float_targets_and_validation_data_are_checked(device: str) -> None:
    model, (x, labels) = _model(device), _data()
    target = np.eye(3, dtype=np.float32)[labels]
    target[4, 2] = -np.inf
    opt = gb.optim.SGD(0.1)
    with pytest.raises(NumericalError, match=r"\(-inf\) in y at row 4, column 2;"):
        model.fit(x, target, loss="mse", optimizer=opt, verbose=False)
    bad_x = x.copy()
    bad_x[0, 4] = np.nan
    with pytest.raises(NumericalError, match="in validation x at row 0, column 4"):
        model.fit(x, labels, loss="cross_entropy", optimizer=opt,
                  validation_data=(bad_x, labels), verbose=False)
    with pytest.raises(NumericalError, match="in validation y at row 4, column 2"):
        model.fit(x, labels, loss="cross_entropy", optimizer=opt,
                  validation_data=(x, target), verbose=False)
    assert opt.step_count == 0
    # a single output's 1-D target is checked as a column
    binary = gb.Sequential([gb.Dense(5, 1)], device=device, seed=0)
    y = (labels == 0).astype(np.float32)
    y[9] = np.nan
    with pytest.raises(NumericalError, match="in y at row 9, column 0"):
        binary.fit(x, y, loss="bce_with_logits", optimizer=opt, verbose=False)


def test_evaluate_checks_and_check_data_false_keeps_the_old_behaviour(device: str) -> None:
    model, (x, y) = _model(device), _data()
    x[3, 1] = np.nan
    with pytest.raises(NumericalError, match=r"^evaluate: .*\(NaN\) in x at row 3, column 1"):
        model.evaluate(x, y, "cross_entropy")
    assert math.isnan(model.evaluate(x, y, "cross_entropy", check_data=False)["loss"])
    history = model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1),
                        check_data=False, verbose=False)
    assert math.isnan(history["loss"][0])
    # the per-step anomaly check implies the data check
    with pytest.raises(NumericalError, match="in x at row 3, column 1"):
        model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1), check_data=False,
                  check_finite=True, verbose=False)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_values_that_overflow_the_model_dtype_are_reported() -> None:
    model, (x, y) = _model(), _data()
    wide = x.astype(np.float64)
    wide[2, 2] = 1e300  # finite in float64, +inf in the model's float32
    with pytest.raises(NumericalError, match=r"float32 value \(\+inf\) in x at row 2, column 2"):
        model.evaluate(wide, y, "cross_entropy")


def test_check_data_must_be_a_bool() -> None:
    model, (x, y) = _model(), _data()
    with pytest.raises(ConfigError, match="check_data must be a bool, got 'no'"):
        model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1), check_data="no",
                  verbose=False)
    with pytest.raises(ConfigError, match="check_data must be a bool, got 0"):
        model.evaluate(x, y, "cross_entropy", check_data=0)


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
def test_first_nonfinite_across_blocks(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(anomaly, "DATA_CHECK_BLOCK", block)
    rng = np.random.default_rng(block)
    for shape in [(50, 9), (37,), (3, 1)]:
        a = rng.normal(size=shape)
        assert anomaly.first_nonfinite(a) is None
        flat = a.reshape(-1)
        where = np.sort(rng.choice(flat.size, size=min(3, flat.size), replace=False))
        flat[where] = [np.nan, np.inf, -np.inf][: len(where)]
        width = 1 if a.ndim == 1 else shape[1]
        assert anomaly.first_nonfinite(a) == (*divmod(int(where[0]), width), len(where))


def test_first_nonfinite_on_a_device_is_one_reduction_under_cupys_rules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The GPU path (the whole array at once) with CuPy's refusals, on the CPU."""
    monkeypatch.setattr(anomaly, "array_module", lambda a: CUPY_LIKE)
    a = np.random.default_rng(0).normal(size=(300, 7)).astype(np.float32)
    assert anomaly.first_nonfinite(a) is None
    a[123, 4], a[200, 0] = np.inf, np.nan
    assert anomaly.first_nonfinite(a) == (123, 4, 2)
