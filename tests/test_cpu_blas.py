"""The CPU GEMM choice (gpubackprop.backend.cpu_blas): MKL through ctypes when the mkl
package is installed, else NumPy's matmul. The MKL tests skip without the package."""

from __future__ import annotations

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import info
from gpubackprop.backend import cpu_blas, cpu_gemm
from gpubackprop.backend.numpy_ops import NumpyOps
from gpubackprop.errors import ConfigError

HAVE_MKL = cpu_blas.find_mkl_runtime() is not None
needs_mkl = pytest.mark.skipif(not HAVE_MKL, reason="the mkl package is not installed")


@pytest.fixture(scope="module")
def mkl() -> cpu_blas.MklGemm:
    if not HAVE_MKL:
        pytest.skip("the mkl package is not installed")
    gemm = cpu_blas.select("mkl")
    assert gemm is not None
    return gemm


def _operand(rng: np.random.Generator, rows: int, cols: int, dtype: str, layout: str) -> np.ndarray:
    """A (rows, cols) operand stored C-order, F-order, as a column slice of a wider
    array (row stride > cols), or as the transpose of such a slice."""
    if layout == "c":
        return rng.standard_normal((rows, cols)).astype(dtype)
    if layout == "f":
        return np.asfortranarray(rng.standard_normal((rows, cols)).astype(dtype))
    if layout == "slice":
        return rng.standard_normal((rows, cols + 3)).astype(dtype)[:, 1:cols + 1]
    return rng.standard_normal((cols, rows + 2)).astype(dtype)[:, :rows].T


@needs_mkl
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout_a", ["c", "f", "slice", "slice_t"])
@pytest.mark.parametrize("layout_b", ["c", "f", "slice", "slice_t"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 7, 5), (13, 1, 9), (37, 19, 1), (65, 129, 33)])
def test_mkl_gemm_equals_matmul(mkl, dtype, layout_a, layout_b, shape) -> None:
    m, k, n = shape
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a = _operand(rng, m, k, dtype, layout_a)
    b = _operand(rng, k, n, dtype, layout_b)
    out = np.full((m, n), np.nan, dtype=dtype)
    assert mkl(a, b, out)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    eps = np.finfo(dtype).eps
    bound = 4 * eps * np.sqrt(k) * (np.abs(a) @ np.abs(b)).max()
    assert np.abs(out - ref).max() <= bound


@needs_mkl
def test_mkl_writes_into_a_row_slice_of_out(mkl) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((4, 5))
    wide = np.zeros((6, 9))
    assert mkl(a, b, wide[:, 2:7])
    np.testing.assert_allclose(wide[:, 2:7], a @ b, rtol=1e-12, atol=1e-12)
    assert not wide[:, :2].any() and not wide[:, 7:].any()


@needs_mkl
@pytest.mark.parametrize("case", ["batched", "int", "mixed", "overlap", "strided_out",
                                  "no_rows_contiguous", "empty", "readonly"])
def test_mkl_declines_what_it_does_not_take(mkl, case) -> None:
    """It returns False and writes nothing; NumpyOps.matmul then takes numpy.matmul."""
    rng = np.random.default_rng(1)
    a, b, out = rng.standard_normal((4, 3)), rng.standard_normal((3, 5)), np.zeros((4, 5))
    if case == "batched":
        a, b = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 3, 5))
        out = np.zeros((2, 4, 5))
    elif case == "int":
        a, b, out = a.astype(np.int64), b.astype(np.int64), out.astype(np.int64)
    elif case == "mixed":
        a = a.astype(np.float32)
    elif case == "overlap":
        buf = rng.standard_normal((4, 10))
        a, out = buf[:, :3], buf[:, 5:10]
    elif case == "strided_out":
        out = np.zeros((4, 10))[:, ::2]
    elif case == "no_rows_contiguous":
        a = rng.standard_normal((8, 6))[::2, ::2]
    elif case == "empty":
        a, b, out = np.zeros((4, 0)), np.zeros((0, 5)), np.ones((4, 5))
    elif case == "readonly":
        out.flags.writeable = False
    before = out.copy()
    assert not mkl(a, b, out)
    np.testing.assert_array_equal(out, before)
    if out.flags.writeable:
        ops = NumpyOps(mkl)
        ops.matmul(a, b, out)
        np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-12, atol=1e-12)


@needs_mkl
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_numpy_ops_matmul_through_mkl(mkl, trans_a, trans_b) -> None:
    """NumpyOps.matmul with MKL equals it without, transposes as flags."""
    calls: list[bool] = []

    def counting(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
        done = mkl(a, b, out)
        calls.append(done)
        return done

    rng = np.random.default_rng(2)
    a = rng.standard_normal((9, 7) if trans_a else (7, 9))
    b = rng.standard_normal((11, 9) if trans_b else (9, 11))
    with_mkl, without = np.empty((7, 11)), np.empty((7, 11))
    NumpyOps(counting).matmul(a, b, with_mkl, trans_a=trans_a, trans_b=trans_b)
    NumpyOps().matmul(a, b, without, trans_a=trans_a, trans_b=trans_b)
    assert calls == [True]
    np.testing.assert_allclose(with_mkl, without, rtol=1e-12, atol=1e-12)


def test_select_reads_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(cpu_blas.ENV, "numpy")
    assert cpu_blas.select() is None
    monkeypatch.setenv(cpu_blas.ENV, "openblas")
    with pytest.raises(ConfigError, match="GPUBACKPROP_CPU_BLAS must be one of auto, numpy, mkl"):
        cpu_blas.select()
    monkeypatch.setenv(cpu_blas.ENV, "auto")
    assert (cpu_blas.select() is not None) == HAVE_MKL


def test_mkl_requested_without_the_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(cpu_blas, "find_mkl_runtime", lambda: None)
    with pytest.raises(ConfigError, match=r'pip install "gpubackprop\[mkl\]"'):
        cpu_blas.select("mkl")
    assert cpu_blas.select("auto") is None


def test_the_cpu_backend_uses_the_selected_gemm() -> None:
    ops = gb.backend.get_backend("cpu").ops
    assert ops.cpu_gemm is cpu_gemm()
    assert isinstance(ops.cpu_gemm, cpu_blas.MklGemm) == (
        HAVE_MKL and cpu_blas.os.environ.get(cpu_blas.ENV, "auto") != "numpy"
    )


def test_info_names_the_cpu_gemm() -> None:
    rows = dict(info.collect_info())
    expected = "Math Kernel Library" if isinstance(cpu_gemm(), cpu_blas.MklGemm) else "numpy.matmul"
    assert expected in rows["CPU GEMM"]


@needs_mkl
def test_a_training_step_agrees_with_and_without_mkl(mkl) -> None:
    """The same float64 step (Dense stack and an LSTM) through both GEMMs."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 11, size=(5, 7))
    y = rng.integers(0, 11, size=(5, 7))
    results = []
    for gemm in (mkl, None):
        model = gb.Sequential([gb.Embedding(11, 6), gb.LSTM(6, 9), gb.Dense(9, 11)],
                              device="cpu", dtype="float64", seed=4)
        model.backend.ops.cpu_gemm = gemm
        try:
            loss = model.train_step(x, y, "cross_entropy", gb.optim.SGD(0.1))
        finally:
            model.backend.ops.cpu_gemm = cpu_gemm()
        results.append((loss, {k: np.array(v) for k, v in model.parameters().items()}))
    (loss_mkl, p_mkl), (loss_np, p_np) = results
    assert abs(loss_mkl - loss_np) <= 1e-12
    for name in p_np:
        np.testing.assert_allclose(p_mkl[name], p_np[name], rtol=1e-11, atol=1e-13)
