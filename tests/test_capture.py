"""Whole-step CUDA-graph capture: replay equals the eager step bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import gpubackprop as gb
from tests.helpers import to_numpy


def _model(device: str, activation: str = "tanh", seed: int = 0) -> gb.Sequential:
    return gb.Sequential(
        [gb.Dense(13, 31, activation), gb.Dense(31, 17, "relu"), gb.Dense(17, 5)],
        device=device,
        seed=seed,
    )


def test_compile_step_needs_a_gpu_model() -> None:
    model = _model("cpu")
    with pytest.raises(gb.ConfigError, match="GPU"):
        model.compile_step(gb.losses.MSE(), gb.optim.SGD(0.1))


def test_compile_step_checks_the_optimizer() -> None:
    with pytest.raises(gb.ConfigError, match="optimizer"):
        gb.CompiledStep(_model("cpu"), "mse", None)  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("loss", "optimizer"),
    [
        (gb.losses.SoftmaxCrossEntropy(), lambda: gb.optim.SGD(0.05, momentum=0.9)),
        (
            gb.losses.MSE(),
            lambda: gb.optim.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        ),
        (gb.losses.SoftmaxCrossEntropy(), lambda: gb.optim.Adam(1e-2)),
        (gb.losses.MSE(), lambda: gb.optim.AdamW(1e-2)),
    ],
)
@pytest.mark.parametrize("activation", ["tanh", "gelu", "sigmoid"])
def test_replay_equals_eager_bit_for_bit(loss, optimizer, activation) -> None:
    import cupy as cp

    eager, captured = _model("cuda", activation), _model("cuda", activation)
    opt_eager, opt_captured = optimizer(), optimizer()
    step = captured.compile_step(loss, opt_captured)
    rng = np.random.default_rng(0)
    for i in range(25):
        x = cp.asarray(rng.standard_normal((64, 13)), dtype=cp.float32)
        if isinstance(loss, gb.losses.SoftmaxCrossEntropy):
            y = cp.asarray(rng.integers(0, 5, 64))
        else:
            y = cp.asarray(rng.standard_normal((64, 5)), dtype=cp.float32)
        expected = eager.train_step(x, y, loss, opt_eager)
        got = step(x, y, return_loss=True)
        assert float(got) == expected, f"step {i}"
        cp.testing.assert_array_equal(captured.flat_params, eager.flat_params)
    assert step.captures == 1
    assert step.replays == 25
    assert opt_captured.step_count == opt_eager.step_count == 25
    assert not np.array_equal(to_numpy(captured.flat_params), to_numpy(_model("cuda").flat_params))


@pytest.mark.gpu
def test_a_new_batch_shape_records_a_new_graph() -> None:
    import cupy as cp

    eager, captured = _model("cuda"), _model("cuda")
    opt_eager, opt_captured = gb.optim.SGD(0.1, momentum=0.9), gb.optim.SGD(0.1, momentum=0.9)
    loss = gb.losses.SoftmaxCrossEntropy()
    step = captured.compile_step(loss, opt_captured)
    rng = np.random.default_rng(1)
    for batch in (32, 32, 7, 7, 32, 1):
        x = cp.asarray(rng.standard_normal((batch, 13)), dtype=cp.float32)
        y = cp.asarray(rng.integers(0, 5, batch))
        eager.train_step(x, y, loss, opt_eager)
        step(x, y)
        cp.testing.assert_array_equal(captured.flat_params, eager.flat_params)
    assert step.captures == 4  # 32, 7, 32 again, 1


@pytest.mark.gpu
def test_replay_follows_a_learning_rate_schedule() -> None:
    import cupy as cp

    eager, captured = _model("cuda"), _model("cuda")
    opt_eager, opt_captured = gb.optim.SGD(0.2), gb.optim.SGD(0.2)
    sched_eager = gb.optim.StepLR(opt_eager, step_size=2, gamma=0.5)
    sched_captured = gb.optim.StepLR(opt_captured, step_size=2, gamma=0.5)
    loss = gb.losses.MSE()
    step = captured.compile_step(loss, opt_captured)
    rng = np.random.default_rng(2)
    for _ in range(8):
        x = cp.asarray(rng.standard_normal((16, 13)), dtype=cp.float32)
        y = cp.asarray(rng.standard_normal((16, 5)), dtype=cp.float32)
        eager.train_step(x, y, loss, opt_eager)
        step(x, y)
        sched_eager.step()
        sched_captured.step()
        cp.testing.assert_array_equal(captured.flat_params, eager.flat_params)


@pytest.mark.gpu
def test_fit_with_capture_equals_fit_without() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 13)).astype(np.float32)
    y = rng.integers(0, 5, 300)
    histories, params = [], []
    for capture in (True, False):
        model = _model("cuda", seed=5)
        hist = model.fit(
            x,
            y,
            loss="cross_entropy",
            optimizer=gb.optim.SGD(0.1, momentum=0.9),
            epochs=3,
            batch_size=64,
            capture=capture,
            verbose=False,
        )
        histories.append(hist.history["loss"])
        params.append(to_numpy(model.flat_params))
    assert histories[0] == histories[1]
    np.testing.assert_array_equal(params[0], params[1])


@pytest.mark.gpu
def test_fit_falls_back_to_eager_with_a_warning(monkeypatch) -> None:
    opt = gb.optim.SGD(0.1)

    def broken(params, grads):
        raise RuntimeError("simulated capture failure")

    monkeypatch.setattr(opt, "apply_update", broken)
    model = _model("cuda")
    rng = np.random.default_rng(4)
    with pytest.warns(RuntimeWarning, match="simulated capture failure"):
        with pytest.raises(RuntimeError, match="simulated"):
            # the eager fallback uses the same (broken) optimizer launch
            model.fit(
                rng.standard_normal((64, 13)),
                rng.integers(0, 5, 64),
                loss="cross_entropy",
                optimizer=opt,
                epochs=1,
                batch_size=32,
                verbose=False,
            )
