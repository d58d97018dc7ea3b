"""The compiled CPU cell (gpubackprop.backend.cpu_kernels): kernels/cpu_recurrent.cpp,
built with the host C++ compiler, against the NumPy reference passes (NumpyOps with no
compiled cell). The tests that need the build skip where this platform or a compiler
does not allow it (cpu_kernels.unavailable_reason says why)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import info
from gpubackprop.backend import cpu_cells, cpu_kernels
from gpubackprop.backend.numpy_ops import NumpyOps
from gpubackprop.errors import ConfigError
from gpubackprop.kernels import kernel_dir

from .kernel_helpers import assert_close

UNAVAILABLE = cpu_kernels.unavailable_reason()
needs_build = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))
DTYPES = ["float32", "float64"]
# (rows, H): one element, odd sizes, rows longer than one AVX-512 vector and a tail
SHAPES = [(1, 1), (3, 5), (17, 33), (6, 130)]


@pytest.fixture(scope="module")
def cells() -> cpu_kernels.CompiledCells:
    if UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    compiled = cpu_kernels.select("compiled")
    assert compiled is not None
    return compiled


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: str,
            scale: float = 3.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _lstm_forward_args(rng: np.random.Generator, rows: int, hidden: int,
                       dtype: str) -> list[np.ndarray]:
    g = (rows, 4 * hidden)
    s = (rows, hidden)
    return [_random(rng, g, dtype), _random(rng, g, dtype), _random(rng, s, dtype),
            *(np.full(s, np.nan, dtype) for _ in range(3))]


def _lstm_backward_args(rng: np.random.Generator, rows: int, hidden: int,
                        dtype: str) -> list[np.ndarray]:
    g = (rows, 4 * hidden)
    s = (rows, hidden)
    gates = rng.uniform(-1, 1, g).astype(dtype)  # activated gates: σ in (0, 1), tanh in (-1, 1)
    return [gates, _random(rng, s, dtype), rng.uniform(-1, 1, s).astype(dtype),
            _random(rng, s, dtype), _random(rng, s, dtype), _random(rng, s, dtype),
            np.full(g, np.nan, dtype)]


def _gru_forward_args(rng: np.random.Generator, rows: int, hidden: int,
                      dtype: str) -> list[np.ndarray]:
    g = (rows, 3 * hidden)
    s = (rows, hidden)
    return [_random(rng, g, dtype), _random(rng, g, dtype), _random(rng, (3 * hidden,), dtype),
            _random(rng, s, dtype), np.full(s, np.nan, dtype), np.full(s, np.nan, dtype)]


def _gru_backward_args(rng: np.random.Generator, rows: int, hidden: int,
                       dtype: str) -> list[np.ndarray]:
    g = (rows, 3 * hidden)
    s = (rows, hidden)
    return [rng.uniform(-1, 1, g).astype(dtype), _random(rng, s, dtype), _random(rng, s, dtype),
            _random(rng, s, dtype), _random(rng, s, dtype), _random(rng, s, dtype),
            np.full(g, np.nan, dtype), np.full(g, np.nan, dtype)]


# op -> (argument maker, indices of the arrays it writes)
OPS: dict[str, tuple[Any, tuple[int, ...]]] = {
    "lstm_cell_forward": (_lstm_forward_args, (0, 3, 4, 5)),
    "lstm_cell_backward": (_lstm_backward_args, (5, 6)),
    "gru_cell_forward": (_gru_forward_args, (0, 4, 5)),
    "gru_cell_backward": (_gru_backward_args, (5, 6, 7)),
}


def _run_both(cells: cpu_kernels.CompiledCells, op: str, args: list[np.ndarray]
              ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(compiled results, reference results) of ``op`` on copies of ``args``."""
    fast_args = [a.copy() for a in args]
    ref_args = [a.copy() for a in args]
    assert getattr(cells, op)(*fast_args) is True
    getattr(NumpyOps(), op)(*ref_args)
    return fast_args, ref_args


@needs_build
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", list(OPS))
def test_compiled_cell_matches_the_numpy_reference(cells, op, shape, dtype) -> None:
    make, outputs = OPS[op]
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    args = make(rng, *shape, dtype)
    fast, ref = _run_both(cells, op, args)
    for k in range(len(args)):
        if k in outputs:
            assert not np.isnan(fast[k]).any(), f"{op}: output {k} not fully written"
            assert_close(fast[k], ref[k], dtype, f"{op} output {k}")
        else:
            np.testing.assert_array_equal(fast[k], args[k], err_msg=f"{op}: input {k} changed")


@needs_build
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_lstm_forward_at_edge_values(cells, dtype) -> None:
    """Saturated and non-finite pre-activations: the limits of σ and tanh (0, 1, ±1), and
    NaN where the reference gives NaN; the same as the NumPy passes."""
    edges = np.array([0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 100.0, -100.0, 1e4, -1e4,
                      np.inf, -np.inf, np.nan], dtype=dtype)
    n = edges.size
    rng = np.random.default_rng(5)
    gates = np.stack([np.roll(edges, k) for k in range(4)], axis=1).reshape(n, 4)
    # rows: each edge value in every gate position; H = 1
    args = [gates.astype(dtype), np.zeros((n, 4), dtype), rng.uniform(-2, 2, (n, 1)).astype(dtype),
            *(np.full((n, 1), 7.0, dtype) for _ in range(3))]
    fast, ref = _run_both(cells, "lstm_cell_forward", args)
    for k in (0, 3, 4, 5):
        np.testing.assert_array_equal(np.isnan(fast[k]), np.isnan(ref[k]), err_msg=f"output {k}")
        finite = ~np.isnan(ref[k])
        assert_close(fast[k][finite], ref[k][finite], dtype, f"output {k}")


@needs_build
@pytest.mark.parametrize("case", [
    "strided_gates", "mixed_dtype", "c_is_c_prev", "h_overlaps_gates", "read_only_h",
    "zero_rows", "int_arrays", "wrong_shape", "list_argument",
])
def test_compiled_cell_declines_what_it_does_not_take(cells, case) -> None:
    """It returns False and writes nothing; the NumPy passes then compute the step."""
    rng = np.random.default_rng(1)
    rows, hidden = 4, 6
    args: list[Any] = _lstm_forward_args(rng, rows, hidden, "float64")
    if case == "strided_gates":
        args[0] = _random(rng, (rows, 4 * hidden + 3), "float64")[:, :4 * hidden]
    elif case == "mixed_dtype":
        args[1] = args[1].astype(np.float32)
    elif case == "c_is_c_prev":
        args[3] = args[2]
    elif case == "h_overlaps_gates":
        args[4] = args[0].reshape(-1)[: rows * hidden].reshape(rows, hidden)  # a view
    elif case == "read_only_h":
        args[4].flags.writeable = False
    elif case == "zero_rows":
        args = _lstm_forward_args(rng, 0, hidden, "float64")
    elif case == "int_arrays":
        args = [np.zeros(a.shape, np.int64) for a in args]
    elif case == "wrong_shape":
        args[1] = args[1][:, : 4 * hidden - 1].copy()
    elif case == "list_argument":
        args[2] = args[2].tolist()
    before = [np.array(a, copy=True) for a in args]
    assert cells.lstm_cell_forward(*args) is False
    for a, b in zip(args, before, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


@needs_build
def test_numpy_ops_takes_the_compiled_cell_and_falls_back_to_its_passes(cells) -> None:
    rng = np.random.default_rng(2)
    args = _lstm_forward_args(rng, 5, 7, "float64")
    calls: list[bool] = []

    class Spy:
        def lstm_cell_forward(self, *a: Any) -> bool:
            calls.append(cells.lstm_cell_forward(*a))
            return calls[-1]

    ops = NumpyOps(cpu_cells=Spy())  # type: ignore[arg-type]
    ref = [a.copy() for a in args]
    NumpyOps().lstm_cell_forward(*ref)
    fast = [a.copy() for a in args]
    ops.lstm_cell_forward(*fast)
    strided = [a.copy() for a in args]
    strided[0] = np.concatenate([strided[0], np.zeros((5, 1))], axis=1)[:, :28]
    ops.lstm_cell_forward(*strided)  # declined: the NumPy passes
    assert calls == [True, False]
    for got in (fast, strided):
        for k in (0, 3, 4, 5):
            assert_close(got[k], ref[k], "float64")


@needs_build
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_training_step_agrees_with_and_without_the_compiled_cell(cells, cell) -> None:
    """The same float64 Embedding -> LSTM/GRU -> Dense step through both cells, with the
    compiled ops counted (every step of both loops goes through them)."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 11, size=(5, 7))
    y = rng.integers(0, 11, size=(5, 7))
    layer = gb.LSTM(6, 9) if cell == "lstm" else gb.GRU(6, 9)
    counted: list[str] = []

    class Counting:
        def __getattr__(self, op: str) -> Any:
            def run(*a: Any) -> bool:
                done = bool(getattr(cells, op)(*a))
                counted.append(op if done else f"declined {op}")
                return done
            return run

    results = []
    for compiled in (Counting(), None):
        model = gb.Sequential([gb.Embedding(11, 6), layer.__class__(6, 9), gb.Dense(9, 11)],
                              device="cpu", dtype="float64", seed=4)
        saved = model.backend.ops.cpu_cells
        model.backend.ops.cpu_cells = compiled  # type: ignore[assignment]
        try:
            loss = model.train_step(x, y, "cross_entropy", gb.optim.SGD(0.1))
        finally:
            model.backend.ops.cpu_cells = saved
        results.append((loss, {k: np.array(v) for k, v in model.parameters().items()}))
    assert sorted(set(counted)) == [f"{cell}_cell_backward", f"{cell}_cell_forward"]
    assert len(counted) == 2 * 7
    (loss_c, p_c), (loss_np, p_np) = results
    assert abs(loss_c - loss_np) <= 1e-12
    for name in p_np:
        np.testing.assert_allclose(p_c[name], p_np[name], rtol=1e-11, atol=1e-13, err_msg=name)


def test_select_reads_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(cpu_kernels.ENV, "numpy")
    assert cpu_kernels.select() is None
    monkeypatch.setenv(cpu_kernels.ENV, "fast")
    with pytest.raises(ConfigError,
                       match="GPUBACKPROP_CPU_KERNELS must be one of auto, numpy, compiled"):
        cpu_kernels.select()


def test_auto_without_a_compiler_uses_the_numpy_passes_and_says_why(monkeypatch) -> None:
    monkeypatch.setattr(cpu_kernels, "find_compiler", lambda: None)
    monkeypatch.setattr(cpu_kernels, "platform_problem", lambda: None)
    assert cpu_kernels.select("auto") is None
    monkeypatch.setenv(cpu_kernels.ENV, "auto")
    assert "no C++ compiler was found (set CXX" in cpu_kernels.describe(None)
    monkeypatch.setenv(cpu_kernels.ENV, "compiled")
    with pytest.raises(ConfigError,
                       match=r"GPUBACKPROP_CPU_KERNELS=compiled but no C\+\+ compiler"):
        cpu_kernels.select()


def test_other_platforms_are_told_why(monkeypatch) -> None:
    monkeypatch.setattr(cpu_kernels.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(cpu_kernels.platform, "machine", lambda: "arm64")
    assert "Linux x86-64 only (this is Darwin arm64)" in str(cpu_kernels.platform_problem())
    monkeypatch.setattr(cpu_kernels.platform, "system", lambda: "Linux")
    monkeypatch.setattr(cpu_kernels.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu_kernels.platform, "libc_ver", lambda: ("glibc", "2.31"))
    assert "needs glibc >= 2.35" in str(cpu_kernels.platform_problem())
    assert cpu_kernels.select("auto") is None
    with pytest.raises(ConfigError, match=r"compiled but the compiled cell needs glibc >= 2\.35"):
        cpu_kernels.select("compiled")


def _fake_compiler(tmp_path: Path, body: str) -> str:
    """A compiler command: a shell script that logs each call, then runs ``body``."""
    script = tmp_path / "fake-cxx"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls.log"\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@needs_build
def test_a_failing_build_raises_when_asked_for_and_warns_under_auto(monkeypatch, tmp_path) -> None:
    """``compiled``: a ConfigError with the compiler's output; ``auto``: the same message as
    a RuntimeWarning, the NumPy passes, and info says why."""
    fake = _fake_compiler(tmp_path, 'case "$1" in --version) echo fake 1.0;; '
                                    '*) echo "cpu_recurrent.cpp:1: error: boom" >&2; exit 1;; esac')
    monkeypatch.setenv("CXX", fake)
    monkeypatch.setenv(cpu_kernels.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_kernels, "BUILD_FAILURES", [])
    with pytest.raises(ConfigError, match=r"(?s)exit 1\):\ncpu_recurrent.cpp:1: error: boom"):
        cpu_kernels.select("compiled")
    with pytest.warns(RuntimeWarning, match=r"(?s)error: boom.*uses the NumPy passes"):
        assert cpu_kernels.select("auto") is None
    monkeypatch.setenv(cpu_kernels.ENV, "auto")
    assert "the build failed: building the compiled CPU cell failed" in cpu_kernels.describe(None)
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-written is kept


@needs_build
def test_an_unwritable_cache_says_which_variable_to_set(monkeypatch, tmp_path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(cpu_kernels.CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setattr(cpu_kernels, "BUILD_FAILURES", [])
    with pytest.raises(ConfigError, match="set GPUBACKPROP_CACHE_DIR to a writable folder"):
        cpu_kernels.select("compiled")
    with pytest.warns(RuntimeWarning, match="set GPUBACKPROP_CACHE_DIR to a writable folder"):
        assert cpu_kernels.select("auto") is None


@needs_build
def test_the_build_is_cached_per_source_and_compiler(monkeypatch, tmp_path) -> None:
    """The first select builds into the cache, the second loads the same file without
    compiling; another source or compiler version gets another file name."""
    real = cpu_kernels.find_compiler()
    assert real is not None
    fake = _fake_compiler(tmp_path, f'exec {" ".join(real)} "$@"')
    monkeypatch.setenv("CXX", fake)
    monkeypatch.setenv(cpu_kernels.CACHE_ENV, str(tmp_path / "cache"))
    first = cpu_kernels.select("compiled")
    second = cpu_kernels.select("compiled")
    assert first is not None and second is not None
    assert first.library == second.library
    assert first.library.parent == tmp_path / "cache"
    compiles = [line for line in (tmp_path / "calls.log").read_text().splitlines()
                if "--version" not in line]
    assert len(compiles) == 1 and "-march=native" in compiles[0]
    # the key follows the sources
    source = tmp_path / "src"
    source.mkdir()
    for path in kernel_dir().iterdir():
        if path.suffix in (".cuh", ".cpp"):
            (source / path.name).write_bytes(path.read_bytes())
    key = cpu_kernels.build_key([fake], source)
    (source / cpu_kernels.SOURCE).write_text((source / cpu_kernels.SOURCE).read_text() + "\n")
    assert cpu_kernels.build_key([fake], source) != key


@needs_build
def test_the_source_compiles_without_warnings(tmp_path) -> None:
    compiler = cpu_kernels.find_compiler()
    assert compiler is not None
    source = kernel_dir()
    done = subprocess.run(
        [*compiler, *cpu_kernels.COMPILE_FLAGS, "-Wall", "-Wextra", "-Werror", "-I", str(source),
         str(source / cpu_kernels.SOURCE), "-o", str(tmp_path / "cells.so"),
         *cpu_kernels.LINK_LIBRARIES],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr


@needs_build
def test_the_cpu_backend_uses_the_selected_cell() -> None:
    ops = gb.backend.get_backend("cpu").ops
    assert ops.cpu_cells is cpu_cells()
    assert isinstance(ops.cpu_cells, cpu_kernels.CompiledCells) == (
        cpu_kernels.os.environ.get(cpu_kernels.ENV, "auto") != "numpy"
    )


def test_info_names_the_cpu_cell() -> None:
    rows = dict(info.collect_info())
    expected = "compiled LSTM/GRU cell (cpu_cells-" if cpu_cells() is not None else "NumPy passes"
    assert expected in rows["CPU cell"]
