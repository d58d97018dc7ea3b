"""detect_anomaly / fit(check_finite=True), optimizer step reports and guards,
and device out-of-memory errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.errors import CaptureError, ConfigError, DeviceMemoryError, NumericalError


def _model(device: str = "cpu", dtype: str = "float32") -> gb.Sequential:
    return gb.Sequential([gb.Dense(4, 8, "tanh"), gb.Dense(8, 3)], device=device,
                         dtype=dtype, seed=0)


def _data(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype(np.float32), np.arange(n) % 3


def _host(model: gb.Sequential, a: object) -> np.ndarray:
    return model.backend.to_numpy(a).copy()


def _state(opt: gb.optim.Optimizer) -> tuple[int, dict[str, np.ndarray | None]]:
    arrays = opt.state_dict()["state"]
    assert isinstance(arrays, dict)
    host = {k: None if v is None else np.asarray(getattr(v, "get", lambda v=v: v)())
            for k, v in arrays.items()}
    return opt.step_count, host


def test_forward_nan_names_layer_and_leaves_params_and_state(device: str) -> None:
    model, (x, y) = _model(device), _data()
    opt = gb.optim.Adam(1e-2)
    model.train_step(model.to_device(x), model.to_device(y), "cross_entropy", opt)
    model.parameters()["1.weight"][0, 0] = math.inf
    params, (count, state) = _host(model, model.flat_params), _state(opt)
    with gb.detect_anomaly(), pytest.raises(NumericalError) as info:
        model.train_step(model.to_device(x), model.to_device(y), "cross_entropy", opt)
    err = info.value
    assert (err.pass_, err.layer_index, err.layer_type) == ("forward", 1, "Dense")
    assert "layer 1 (Dense 8->3)" in str(err) and "forward" in str(err)
    np.testing.assert_array_equal(_host(model, model.flat_params), params)
    assert opt.step_count == count
    for name, value in _state(opt)[1].items():
        np.testing.assert_array_equal(value, state[name])


def test_backward_nan_named_per_layer(device: str) -> None:
    model, (x, _) = _model(device), _data()
    with gb.detect_anomaly():
        out = model.forward(model.to_device(x))
        grad_out = np.zeros(out.shape, dtype=np.float32)
        grad_out[2, 1] = np.nan
        with pytest.raises(NumericalError) as info:
            model.backward(model.to_device(grad_out))
    assert (info.value.pass_, info.value.layer_index) == ("backward", 1)
    assert "gradient" in str(info.value)


def test_loss_pass_and_input_pass(device: str) -> None:
    model, (x, _) = _model(device), _data()
    target = np.zeros((16, 3), dtype=np.float32)
    target[0, 0] = np.inf
    with gb.detect_anomaly(), pytest.raises(NumericalError) as info:
        model.loss_and_grad(model.to_device(x), model.to_device(target), "mse")
    assert info.value.pass_ == "loss" and info.value.layer_index is None
    x[1, 2] = np.nan
    with gb.detect_anomaly(), pytest.raises(NumericalError) as info:
        model.forward(model.to_device(x))
    assert info.value.pass_ == "input"


def test_off_by_default_and_nested_off(device: str) -> None:
    model, (x, _) = _model(device), _data()
    x[0, 0] = np.nan
    assert np.isnan(_host(model, model.forward(model.to_device(x)))).any()
    with gb.detect_anomaly(), gb.detect_anomaly(enabled=False):
        model.forward(model.to_device(x))
    assert not gb.anomaly.is_enabled()


def test_overflowing_sum_of_finite_values_is_not_reported(device: str) -> None:
    model = gb.Sequential([gb.Activation("relu")], device=device, seed=0)
    x = np.full((4, 8), 3e38, dtype=np.float32)  # Σ overflows float32; every value is finite
    with gb.detect_anomaly():
        out = model.forward(model.to_device(x))
    assert np.isfinite(_host(model, out)).all()


def test_fit_check_finite(device: str) -> None:
    model, (x, y) = _model(device), _data(32)
    bad = x.copy()
    bad[5, 1] = np.inf
    opt = gb.optim.SGD(0.1)
    with pytest.raises(NumericalError, match="in x"):
        model.fit(bad, y, loss="cross_entropy", optimizer=opt, check_finite=True,
                  verbose=False)
    assert opt.step_count == 0
    with pytest.raises(NumericalError, match="validation x"):
        model.fit(x, y, loss="cross_entropy", optimizer=opt, check_finite=True,
                  validation_data=(bad, y), verbose=False)
    # divergence mid-training: the step that meets the NaN is not applied
    linear = gb.Sequential([gb.Dense(4, 3)], device=device, seed=0)
    diverging = gb.optim.SGD(1e6)
    with pytest.raises(NumericalError) as info:
        linear.fit(x, np.eye(3, dtype=np.float32)[y], loss="mse", optimizer=diverging,
                   epochs=50, batch_size=8, check_finite=True, verbose=False)
    assert info.value.pass_ in ("forward", "loss", "backward")
    assert diverging.step_count >= 1
    with pytest.raises(ConfigError):
        model.fit(x, y, loss="cross_entropy", optimizer=opt, check_finite="yes",
                  verbose=False)
    history = model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1),
                        check_finite=True, verbose=False)
    assert math.isfinite(history["loss"][0]) and not gb.anomaly.is_enabled()


# --- optimizer reports and guards ------------------------------------------------------
def test_plain_step_reports_without_measuring() -> None:
    params, grads = np.ones(5), np.full(5, 2.0)
    opt = gb.optim.SGD(0.1)
    assert opt.last_report is None
    report = opt.step(params, grads)
    assert report == gb.StepReport(stepped=True) and opt.last_report is report
    assert report.grad_norm is None and not report.clipped
    np.testing.assert_allclose(params, 0.8)


@pytest.mark.parametrize("opt_type", [gb.optim.SGD, gb.optim.Adam, gb.optim.AdamW])
def test_clip_by_global_norm(opt_type: type) -> None:
    grads = np.array([3.0, 4.0, 0.0])
    opt = opt_type(lr=0.1, max_grad_norm=1.0)
    report = opt.step(np.zeros(3), grads)
    assert report.stepped and report.clipped and report.grad_norm == pytest.approx(5.0)
    assert report.clip_scale == pytest.approx(1.0 / 5.0)
    assert np.linalg.norm(grads) == pytest.approx(1.0, rel=1e-5)
    small = opt.step(np.zeros(3), np.array([0.1, 0.0, 0.0]))
    assert not small.clipped and small.clip_scale == 1.0
    assert small.grad_norm == pytest.approx(0.1)


def test_norm_of_float32_gradient_that_overflows_g_dot_g() -> None:
    grads = np.full(4, 1e30, dtype=np.float32)  # g·g = 4e60 overflows float32
    report = gb.optim.SGD(0.0, max_grad_norm=1.0).step(np.zeros(4, np.float32), grads)
    assert report.grad_norm == pytest.approx(2e30, rel=1e-5) and report.clipped


def test_skip_nonfinite_leaves_everything(device: str) -> None:
    model, (x, y) = _model(device), _data()
    opt = gb.optim.Adam(1e-2, skip_nonfinite=True)
    model.train_step(model.to_device(x), model.to_device(y), "cross_entropy", opt)
    assert opt.last_report is not None and opt.last_report.stepped
    params, (count, state) = _host(model, model.flat_params), _state(opt)
    model.flat_grads[3] = np.nan
    report = opt.step(model.flat_params, model.flat_grads)
    assert not report.stepped and "non-finite" in str(report.skipped_reason)
    assert opt.last_report is report and opt.step_count == count
    np.testing.assert_array_equal(_host(model, model.flat_params), params)
    for name, value in _state(opt)[1].items():
        np.testing.assert_array_equal(value, state[name])


def test_nonfinite_gradient_without_skip_proceeds() -> None:
    params = np.zeros(3)
    report = gb.optim.SGD(0.1, max_grad_norm=1.0).step(params, np.array([np.inf, 0.0, 0.0]))
    assert report.stepped and not report.clipped and report.grad_norm == math.inf
    assert np.isinf(params[0])


@pytest.mark.parametrize("kwargs", [{"max_grad_norm": 0}, {"max_grad_norm": -1.0},
                                    {"max_grad_norm": math.nan}, {"skip_nonfinite": "yes"}])
def test_guard_arguments_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        gb.optim.SGD(0.1, **kwargs)


def test_guarded_optimizer_is_not_captured() -> None:
    model = _model()
    with pytest.raises(CaptureError, match="max_grad_norm"):
        model.compile_step("cross_entropy", gb.optim.SGD(0.1, max_grad_norm=1.0))


def test_train_step_returns_loss_and_exposes_report(device: str) -> None:
    model, (x, y) = _model(device), _data()
    opt = gb.optim.SGD(0.1, max_grad_norm=1e-3)
    value = model.train_step(model.to_device(x), model.to_device(y), "cross_entropy", opt)
    assert isinstance(value, float)
    assert opt.last_report is not None and opt.last_report.clipped


# --- device out of memory ----------------------------------------------------------------
@pytest.mark.gpu
def test_out_of_memory_is_a_package_error_and_model_recovers() -> None:
    import cupy

    pool = cupy.get_default_memory_pool()
    model = gb.Sequential([gb.Dense(256, 4096, "relu"), gb.Dense(4096, 10)],
                          device="cuda", seed=0)
    opt = gb.optim.SGD(0.01)
    small = cupy.zeros((8, 256), dtype=cupy.float32)
    labels = cupy.zeros(8, dtype=cupy.int64)
    model.train_step(small, labels, "cross_entropy", opt)
    params = model.flat_params.get()
    huge = cupy.zeros((1 << 16, 256), dtype=cupy.float32)
    huge_labels = cupy.zeros(1 << 16, dtype=cupy.int64)
    pool.set_limit(size=pool.total_bytes() + (64 << 20))
    try:
        with pytest.raises(DeviceMemoryError, match="bytes") as info:
            model.train_step(huge, huge_labels, "cross_entropy", opt)
        assert "layer" in str(info.value) or "buffer" in str(info.value)
        np.testing.assert_array_equal(model.flat_params.get(), params)
        model.train_step(small, labels, "cross_entropy", opt)
    finally:
        pool.set_limit(size=0)
    assert np.isfinite(model.flat_params.get()).all()
