"""precision="fp32" | "tf32": the float32 GEMM mode of a model.

On the CPU "tf32" is accepted and changes nothing (tested bit for bit); on a GPU
it sets the math mode of the model's cuBLAS handle (GPU tests, skipped here).
"""

from __future__ import annotations

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.errors import ConfigError, DTypeError

from .helpers import to_numpy


def _mlp(device: str, precision: str | None, width: int = 64) -> gb.Sequential:
    layers = [gb.Dense(32, width, "relu"), gb.Dense(width, width, "tanh"), gb.Dense(width, 10)]
    if precision is None:
        return gb.Sequential(layers, device=device, seed=3)
    return gb.Sequential(layers, device=device, seed=3, precision=precision)


def _train(model: gb.Sequential, steps: int = 5) -> list[float]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=48)
    opt = gb.optim.Adam(lr=1e-3)
    return [
        model.train_step(model.to_device(x), model.to_device(y), "softmax_cross_entropy", opt)
        for _ in range(steps)
    ]


def test_default_is_fp32() -> None:
    model = _mlp("cpu", None)
    assert model.precision == "fp32"
    assert model.backend.precision == "fp32"
    assert "precision" not in repr(model)


def test_tf32_on_cpu_is_accepted_and_changes_nothing() -> None:
    fp32, tf32 = _mlp("cpu", "fp32"), _mlp("cpu", "tf32")
    assert tf32.precision == "tf32" and "precision='tf32'" in repr(tf32)
    assert _train(fp32) == _train(tf32)
    np.testing.assert_array_equal(fp32.flat_params, tf32.flat_params)


@pytest.mark.parametrize("bad", ["bf16", "TF32", "", None, 32])
def test_unknown_precision_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="precision must be one of 'fp32', 'tf32'"):
        gb.Sequential([gb.Dense(3, 2)], device="cpu", precision=bad)  # type: ignore[arg-type]


def test_tf32_refuses_float64() -> None:
    with pytest.raises(DTypeError, match="float64"):
        gb.Sequential([gb.Dense(3, 2)], device="cpu", dtype="float64", precision="tf32")
    gb.Sequential([gb.Dense(3, 2)], device="cpu", dtype="float64", precision="fp32")


def test_backend_with_precision() -> None:
    cpu = gb.get_backend("cpu")
    assert cpu.with_precision("fp32") is cpu
    tf32 = cpu.with_precision("tf32")
    assert tf32.precision == "tf32" and tf32.ops is cpu.ops and tf32.device == "cpu"
    with pytest.raises(ConfigError):
        cpu.with_precision("fp16")


# --- GPU ----------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_handles_carry_the_math_mode() -> None:
    from gpubackprop.backend.cublas import MATH_MODES

    fp32, tf32 = _mlp("cuda", "fp32"), _mlp("cuda", "tf32")
    assert fp32.backend.ops is not tf32.backend.ops
    assert fp32.backend.ops.blas.math_mode == MATH_MODES["fp32"] == 0
    assert tf32.backend.ops.blas.math_mode == MATH_MODES["tf32"] == 3
    assert _mlp("cuda", None).backend.ops is fp32.backend.ops  # fp32 is the default handle


@pytest.mark.gpu
def test_gpu_tf32_within_tolerance_and_fp32_exact() -> None:
    """On wide layers TF32 differs from IEEE float32 by about 1e-3 relative; fp32
    stays at float32 rounding (checked against a float64 run of the same weights)."""
    width = 2048
    rng = np.random.default_rng(1)
    x = rng.standard_normal((512, 32)).astype(np.float32)
    fp32, tf32 = _mlp("cuda", "fp32", width), _mlp("cuda", "tf32", width)
    exact = gb.Sequential(
        [gb.Dense(32, width, "relu"), gb.Dense(width, width, "tanh"), gb.Dense(width, 10)],
        device="cpu", dtype="float64", seed=3,
    )
    exact.flat_params[...] = to_numpy(fp32.flat_params).astype(np.float64)
    ref = exact.forward(x.astype(np.float64))
    scale = np.abs(ref).max()
    err32 = np.abs(to_numpy(fp32.forward(fp32.to_device(x))) - ref).max() / scale
    err_tf = np.abs(to_numpy(tf32.forward(tf32.to_device(x))) - ref).max() / scale
    assert err32 < 1e-5, err32
    assert err32 < err_tf < 3e-3, (err32, err_tf)


@pytest.mark.gpu
def test_gpu_tf32_captured_step_equals_eager() -> None:
    """The compiled (CUDA-graph) step of a TF32 model replays the TF32 GEMMs."""
    import cupy

    rng = np.random.default_rng(2)
    xs = [cupy.asarray(rng.standard_normal((64, 32)).astype(np.float32)) for _ in range(4)]
    ys = [cupy.asarray(rng.integers(0, 10, size=64)) for _ in range(4)]
    eager, captured = _mlp("cuda", "tf32", 256), _mlp("cuda", "tf32", 256)
    opt_e, opt_c = gb.optim.SGD(lr=0.05, momentum=0.9), gb.optim.SGD(lr=0.05, momentum=0.9)
    step = captured.compile_step("softmax_cross_entropy", opt_c)
    for x, y in zip(xs, ys, strict=True):
        eager.train_step(x, y, "softmax_cross_entropy", opt_e)
        step(x, y)
    np.testing.assert_array_equal(to_numpy(eager.flat_params), to_numpy(captured.flat_params))
