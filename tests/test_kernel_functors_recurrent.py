"""The recurrent kernels' per-element math on the host, no GPU needed (needs nvcc).

A small host program built from ``kernels/recurrent.cu`` (its GBP_HD element
functions, the very code each kernel thread runs) computes one LSTM / GRU step
element by element; the NumPy reference ops (``NumpyOps.lstm_cell_forward`` & co.)
compute the same step with H = 1 (one element per row). They agree to rounding.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpubackprop.backend.numpy_ops import NumpyOps

from .kernel_helpers import DTYPE_IDS, DTYPES, assert_close, compile_host_harness, needs_nvcc

HARNESS = r"""
// Host harness: recurrent.cu's element functions on the CPU.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "recurrent.cu"

using Vec = std::vector<double>;

// inputs and outputs per element, row by row (see the Python side)
//   lstm_forward   a_i a_f a_g a_o c_prev                 -> i f g o c tanh_c h
//   lstm_backward  i f g o c_prev tanh_c dh dc            -> dc' di df dg do
//   gru_forward    a_r a_z a_n hh_r hh_z hh_n b_r b_z b_n h_prev -> r z n hn h
//   gru_backward   r z n hn h_prev dh                     -> dr dz dn dhn carry
template <typename T>
static Vec run(const char* op, const Vec& in) {
    const bool lf = !std::strcmp(op, "lstm_forward"), lb = !std::strcmp(op, "lstm_backward");
    const bool gf = !std::strcmp(op, "gru_forward");
    const size_t k_in = lf ? 5 : lb ? 8 : gf ? 10 : 6, k_out = lf ? 7 : 5;
    const size_t n = in.size() / k_in;
    Vec out(n * k_out);
    for (size_t e = 0; e < n; ++e) {
        T x[10], y[7] = {};
        for (size_t k = 0; k < k_in; ++k) x[k] = static_cast<T>(in[e * k_in + k]);
        if (lf) {
            gbp::lstm_forward_element<T>(x[0], x[1], x[2], x[3], x[4], y[4], y[5], y[6]);
            for (int k = 0; k < 4; ++k) y[k] = x[k];
        } else if (lb) {
            gbp::lstm_backward_element<T>(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7],
                                          y[1], y[2], y[3], y[4]);
            y[0] = x[7];
        } else if (gf) {
            gbp::gru_forward_element<T>(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8],
                                        x[9], y[3], y[4]);
            for (int k = 0; k < 3; ++k) y[k] = x[k];
        } else {
            gbp::gru_backward_element<T>(x[0], x[1], x[2], x[3], x[4], x[5], y[0], y[1], y[2],
                                         y[3], y[4]);
        }
        for (size_t k = 0; k < k_out; ++k) out[e * k_out + k] = static_cast<double>(y[k]);
    }
    return out;
}

int main(int argc, char** argv) {  // harness OP DTYPE IN OUT
    if (argc != 5) return 1;
    FILE* f = std::fopen(argv[3], "rb");
    if (!f) return 2;
    std::fseek(f, 0, SEEK_END);
    Vec in(static_cast<size_t>(std::ftell(f)) / sizeof(double));
    std::fseek(f, 0, SEEK_SET);
    if (std::fread(in.data(), sizeof(double), in.size(), f) != in.size()) return 3;
    std::fclose(f);
    const Vec out = std::strcmp(argv[2], "float32") == 0 ? run<float>(argv[1], in)
                                                         : run<double>(argv[1], in);
    FILE* g = std::fopen(argv[4], "wb");
    if (!g) return 4;
    std::fwrite(out.data(), sizeof(double), out.size(), g);
    std::fclose(g);
    return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host harness, compiled once (a few seconds)."""
    return compile_host_harness(tmp_path_factory, "recurrent_harness", HARNESS)


def _host(exe: Path, op: str, dtype: Any, rows: np.ndarray, k_out: int) -> np.ndarray:
    inp, out = exe.parent / f"{op}.in", exe.parent / f"{op}.out"
    np.ascontiguousarray(rows, dtype=np.float64).tofile(inp)
    done = subprocess.run([str(exe), op, np.dtype(dtype).name, str(inp), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"harness {op}: rc {done.returncode} {done.stderr}"
    return np.fromfile(out, dtype=np.float64).astype(dtype).reshape(-1, k_out)


def _reference(op: str, x: np.ndarray) -> np.ndarray:
    """NumpyOps with H = 1: column k of ``x`` is input k of the harness's table."""
    ops, n = NumpyOps(), x.shape[0]
    col = [x[:, k : k + 1].copy() for k in range(x.shape[1])]
    if op == "lstm_forward":
        gates = np.concatenate(col[:4], axis=1)
        c, tc, h = (np.empty((n, 1), x.dtype) for _ in range(3))
        ops.lstm_cell_forward(gates, np.zeros_like(gates), col[4], c, h, tc)
        return np.concatenate([gates, c, tc, h], axis=1)
    if op == "lstm_backward":
        gates, dc, dg = np.concatenate(col[:4], axis=1), col[7], np.empty((n, 4), x.dtype)
        ops.lstm_cell_backward(gates, col[4], col[5], col[6], np.zeros_like(dc), dc, dg)
        return np.concatenate([dc, dg], axis=1)
    if op == "gru_forward":
        gates, hh = np.concatenate(col[:3], axis=1), np.concatenate(col[3:6], axis=1)
        h, hn = np.empty((n, 1), x.dtype), np.empty((n, 1), x.dtype)
        for k in range(n):  # the bias is per column: one row at a time
            ops.gru_cell_forward(gates[k:k + 1], hh[k:k + 1], x[k, 6:9].copy(),
                                 col[9][k:k + 1], h[k:k + 1], hn[k:k + 1])
        return np.concatenate([gates, hn, h], axis=1)
    gates = np.concatenate(col[:3], axis=1)
    dgx, dgh = np.empty((n, 3), x.dtype), np.empty((n, 3), x.dtype)
    carry = np.zeros((n, 1), x.dtype)
    ops.gru_cell_backward(gates, col[3], col[4], col[5], np.zeros_like(carry), carry, dgx, dgh)
    return np.concatenate([dgx[:, :2], dgx[:, 2:], dgh[:, 2:], carry], axis=1)


def _inputs(op: str, dtype: Any, rng: np.random.Generator) -> np.ndarray:
    """Pre-activations wide (±6), gate values in (0, 1) or (−1, 1) where the op reads them."""
    n = 37
    if op == "lstm_forward":
        x = rng.uniform(-6, 6, (n, 5))
    elif op == "lstm_backward":
        x = np.concatenate([rng.uniform(0, 1, (n, 2)), rng.uniform(-1, 1, (n, 1)),
                            rng.uniform(0, 1, (n, 1)), rng.standard_normal((n, 1)),
                            rng.uniform(-1, 1, (n, 1)), rng.standard_normal((n, 2))], axis=1)
    elif op == "gru_forward":
        x = rng.uniform(-3, 3, (n, 10))
    else:
        x = np.concatenate([rng.uniform(0, 1, (n, 2)), rng.uniform(-1, 1, (n, 1)),
                            rng.standard_normal((n, 3))], axis=1)
    return x.astype(dtype)


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", ["lstm_forward", "lstm_backward", "gru_forward", "gru_backward"])
def test_host_cell_elements_match_reference(
    harness: Path, op: str, dtype: Any, rng: np.random.Generator
) -> None:
    x = _inputs(op, dtype, rng)
    want = _reference(op, x)
    got = _host(harness, op, dtype, x, want.shape[1])
    assert_close(got, want, dtype, op)
