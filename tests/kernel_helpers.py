"""Shared by the kernel tests (test_kernel_loader, test_kernel_functors,
test_kernels_gpu): dtypes, edge values, the activations' NumPy reference and limits,
tolerances, the optimizer configurations, and whether nvcc is on PATH."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpubackprop import kernels
from gpubackprop.activations import ACTIVATIONS
from gpubackprop.optim import Adam, AdamW

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
ACT_NAMES = list(ACTIVATIONS)
INF = math.inf

#: finite edge values: 0, ±1e-8, the float32 exp overflow edge (±88/±89), ±20, ±1e4, ...
FINITE_EDGES = [
    0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 8.0, -8.0, 17.0, -17.0,
    20.0, -20.0, 40.0, -40.0, 88.0, -88.0, 89.0, -89.0, 700.0, -700.0, 710.0, -710.0,
    1e4, -1e4,
]  # fmt: skip
#: the limits at z = -inf and +inf: (f(-inf), f(+inf), f'(-inf), f'(+inf))
LIMITS: dict[str, tuple[float, float, float, float]] = {
    "identity": (-INF, INF, 1.0, 1.0),
    "sigmoid": (0.0, 1.0, 0.0, 0.0),
    "tanh": (-1.0, 1.0, 0.0, 0.0),
    "relu": (0.0, INF, 0.0, 1.0),
    "leaky_relu": (-INF, INF, 0.01, 1.0),
    "elu": (-1.0, INF, 0.0, 1.0),
    "softplus": (0.0, INF, 0.0, 1.0),
    "gelu": (0.0, INF, 0.0, 1.0),
    "gelu_tanh": (0.0, INF, 0.0, 1.0),
    "silu": (0.0, INF, 0.0, 1.0),
}


def tolerances(dtype: Any) -> tuple[float, float]:
    """(rtol, atol) between two implementations of the same formula."""
    return (1e-5, 1e-6) if np.dtype(dtype) == np.float32 else (1e-12, 1e-13)


#: float32 atol of the activations and their derivatives (values of order 1): the
#: reference formulas themselves round to about |z|·ε there, e.g. gelu_tanh′ near
#: z = −5, (1 + t)/2 + z(1 − t²)u′/2, cancels two terms each rounded to ~1e-6.
ACT_ATOL32 = 5e-6


def assert_close(
    got: np.ndarray, want: np.ndarray, dtype: Any, what: str = "", *, activation: bool = False
) -> None:
    rtol, atol = tolerances(dtype)
    if activation and np.dtype(dtype) == np.float32:
        atol = ACT_ATOL32
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def reference_activation(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The NumPy table's f(z) and f′ (as delta ⊙ f′ with delta = 1)."""
    act = ACTIVATIONS[name]
    with np.errstate(all="ignore"):
        a = act.forward(np, z.copy(), np.empty_like(z))
        saved = z if act.needs_input else a
        g = act.backward(np, np.ones_like(z), saved, np.empty_like(z))
    return a, g


def check_activation_values(
    name: str, dtype: Any, z: np.ndarray, a: np.ndarray, g: np.ndarray
) -> None:
    """a = f(z) and g = f′ from an implementation under test, against the reference
    where z is finite and against the limits at ±inf; never NaN where the true
    value is finite."""
    z = np.asarray(z, dtype=dtype)
    finite = np.isfinite(z)
    assert np.isfinite(a[finite]).all(), f"{name}: f is not finite at {z[~np.isfinite(a)]}"
    assert np.isfinite(g[finite]).all(), f"{name}: f' is not finite at {z[~np.isfinite(g)]}"
    ref_a, ref_g = reference_activation(name, z[finite])
    assert_close(a[finite], ref_a, dtype, f"{name} forward", activation=True)
    assert_close(g[finite], ref_g, dtype, f"{name} derivative", activation=True)
    f_lo, f_hi, g_lo, g_hi = (np.asarray(v, dtype=dtype) for v in LIMITS[name])
    for where, f_lim, g_lim in ((z == -INF, f_lo, g_lo), (z == INF, f_hi, g_hi)):
        if where.any():
            np.testing.assert_array_equal(a[where], f_lim, err_msg=f"{name} f limit")
            np.testing.assert_array_equal(g[where], g_lim, err_msg=f"{name} f' limit")


#: optimizer configurations the host harness and the GPU compare with gpubackprop.optim
SGD_CONFIGS = [
    {"momentum": 0.0},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.1},
    {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.8, "weight_decay": 0.01},
    {"momentum": 0.0, "weight_decay": 0.1},
]
ADAM_CONFIGS = [
    (Adam, {"weight_decay": 0.0}),
    (Adam, {"weight_decay": 0.01}),
    (AdamW, {"weight_decay": 0.01}),
    (AdamW, {"weight_decay": 0.0, "betas": (0.8, 0.99), "eps": 1e-6}),
]
OPT_STEPS = 6


def opt_data(n: int, dtype: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random parameters (n,) and OPT_STEPS gradients (OPT_STEPS, n)."""
    params = rng.standard_normal(n).astype(dtype)
    grads = rng.standard_normal((OPT_STEPS, n)).astype(dtype)
    return params, grads


NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def compile_host_harness(tmp_path_factory: pytest.TempPathFactory, name: str, source: str) -> Path:
    """A host program from ``source`` (which includes kernels/*.cu) compiled with nvcc,
    FMA contraction off; skips without nvcc. Returns the executable."""
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    folder = tmp_path_factory.mktemp(name)
    src, exe = folder / "harness.cu", folder / "harness"
    src.write_text(source)
    cmd = [NVCC, "-std=c++17", "-I", str(kernels.kernel_dir()), "-Xcompiler", "-ffp-contract=off"]
    done = subprocess.run(
        [*cmd, "-o", str(exe), str(src)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return exe
