"""Tests of the fused CUDA kernels (kernels/*.cu) and their loader (gpubackprop.kernels).

Three layers:

* without CuPy or a GPU (run everywhere): the loader finds the sources, every
  activation of the Python table has a functor with the same ``needs_input``, the
  name expressions cover every kernel, the argument checks that need no GPU raise
  the package's errors, and ``import gpubackprop`` never imports the kernels;
* with ``nvcc`` on PATH (no GPU needed): ``kernels/check.sh`` passes, and a small
  host program built from the very same headers runs the per-element math (every
  activation functor, the BCE element, the SGD and Adam element updates) on the
  CPU, compared with the NumPy reference: the activations to rounding at random
  and edge values, the optimizer updates bit for bit;
* with CuPy and a GPU (``@pytest.mark.gpu``, skipped cleanly elsewhere): every
  kernel against its NumPy twin on odd sizes up to one larger than a grid, in
  float32 and float64, edge values, determinism over 10 runs, several optimizer
  steps (also replayed from a captured CUDA graph), and the argument checks.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpubackprop import kernels
from gpubackprop.activations import ACTIVATIONS
from gpubackprop.backend.numpy_ops import NumpyOps
from gpubackprop.errors import ConfigError, DeviceError, DTypeError, ShapeError
from gpubackprop.optim import SGD, Adam, AdamW

gpu = pytest.mark.gpu
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


def _tol(dtype: Any) -> tuple[float, float]:
    """(rtol, atol) between two implementations of the same formula."""
    return (1e-5, 1e-6) if np.dtype(dtype) == np.float32 else (1e-12, 1e-13)


#: float32 atol of the activations and their derivatives (values of order 1): the
#: reference formulas themselves round to about |z|·ε there, e.g. gelu_tanh′ near
#: z = −5, (1 + t)/2 + z(1 − t²)u′/2, cancels two terms each rounded to ~1e-6.
ACT_ATOL32 = 5e-6


def _assert_close(
    got: np.ndarray, want: np.ndarray, dtype: Any, what: str = "", *, activation: bool = False
) -> None:
    rtol, atol = _tol(dtype)
    if activation and np.dtype(dtype) == np.float32:
        atol = ACT_ATOL32
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def _reference_activation(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The NumPy table's f(z) and f′ (as delta ⊙ f′ with delta = 1)."""
    act = ACTIVATIONS[name]
    with np.errstate(all="ignore"):
        a = act.forward(np, z.copy(), np.empty_like(z))
        saved = z if act.needs_input else a
        g = act.backward(np, np.ones_like(z), saved, np.empty_like(z))
    return a, g


def _check_activation_values(
    name: str, dtype: Any, z: np.ndarray, a: np.ndarray, g: np.ndarray
) -> None:
    """a = f(z) and g = f′ from an implementation under test, against the reference
    where z is finite and against the limits at ±inf; never NaN where the true
    value is finite."""
    z = np.asarray(z, dtype=dtype)
    finite = np.isfinite(z)
    assert np.isfinite(a[finite]).all(), f"{name}: f is not finite at {z[~np.isfinite(a)]}"
    assert np.isfinite(g[finite]).all(), f"{name}: f' is not finite at {z[~np.isfinite(g)]}"
    ref_a, ref_g = _reference_activation(name, z[finite])
    _assert_close(a[finite], ref_a, dtype, f"{name} forward", activation=True)
    _assert_close(g[finite], ref_g, dtype, f"{name} derivative", activation=True)
    f_lo, f_hi, g_lo, g_hi = (np.asarray(v, dtype=dtype) for v in LIMITS[name])
    for where, f_lim, g_lim in ((z == -INF, f_lo, g_lo), (z == INF, f_hi, g_hi)):
        if where.any():
            np.testing.assert_array_equal(a[where], f_lim, err_msg=f"{name} f limit")
            np.testing.assert_array_equal(g[where], g_lim, err_msg=f"{name} f' limit")


# =========================================================================================
# Without a GPU
# =========================================================================================
def test_loader_finds_the_sources() -> None:
    folder = kernels.kernel_dir()
    assert folder in kernels.kernel_dirs()
    for family, filename in kernels.FAMILIES.items():
        assert (folder / filename).is_file()
        text = kernels.source(family)
        # headers inlined, nothing left for NVRTC to look up on disk
        assert not re.search(r"^\s*#\s*include", text, re.MULTILINE), family
        assert not re.search(r"^\s*#\s*pragma\s+once", text, re.MULTILINE), family
        assert "namespace gbp" in text


def test_loader_prefers_the_packaged_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_dir = kernels.REPO_KERNEL_DIR
    packaged = tmp_path / "_kernels"
    monkeypatch.setattr(kernels, "PACKAGED_KERNEL_DIR", packaged)
    assert kernels.kernel_dir() == repo_dir  # no packaged copy: the repository's
    shutil.copytree(repo_dir, packaged)
    assert kernels.kernel_dir() == packaged
    monkeypatch.setattr(kernels, "REPO_KERNEL_DIR", tmp_path / "missing")
    shutil.rmtree(packaged)
    with pytest.raises(FileNotFoundError, match="kernel sources"):
        kernels.kernel_dir()


def test_every_activation_has_a_functor() -> None:
    header = (kernels.kernel_dir() / "activations.cuh").read_text()
    types = kernels.activation_types()
    assert list(types) == list(ACTIVATIONS)  # same names, same order as the table
    for name, cpp_type in types.items():
        body = re.search(rf"struct {cpp_type} \{{(.*?)\n\}};", header, re.DOTALL)
        assert body is not None, f"no functor struct {cpp_type} for {name!r}"
        flag = re.search(r"static constexpr bool needs_input = (true|false);", body.group(1))
        assert flag is not None, f"{cpp_type} has no needs_input"
        assert (flag.group(1) == "true") == ACTIVATIONS[name].needs_input, name
        for method in ("forward", "grad"):
            assert re.search(rf"static T {method}\(", body.group(1)), f"{cpp_type}.{method}"


def test_name_expressions_cover_every_kernel() -> None:
    n_act = len(ACTIVATIONS)
    for dtype, ctype in (("float32", "float"), (np.float64, "double")):
        dense = kernels.name_expressions("dense", dtype)
        assert len(dense) == 3 * n_act + 1
        assert f"gbp::act_backward<{ctype}, gbp::act::GeluTanh>" in dense
        assert f"gbp::column_sum<{ctype}>" in dense
        losses = kernels.name_expressions("losses", dtype)
        assert f"gbp::softmax_xent_labels<{ctype}>" in losses and len(losses) == 5
        assert len(kernels.name_expressions("optim", dtype)) == 3
    every = {e.split("<")[0] for f in kernels.FAMILIES for e in kernels.name_expressions(f, "f4")}
    assert every == {f"gbp::{k}" for k in kernels.KERNELS}


def test_kernel_name_rejects_bad_requests() -> None:
    assert kernels.kernel_name("act_backward", np.float32, None).endswith("act::Identity>")
    with pytest.raises(ConfigError, match="unknown kernel"):
        kernels.kernel_name("nope", np.float32)
    with pytest.raises(DTypeError, match="float32 or float64"):
        kernels.kernel_name("column_sum", np.int32)
    with pytest.raises(ConfigError, match="unknown activation"):
        kernels.kernel_name("act_backward", np.float32, "swish")


def test_wrappers_reject_host_arrays_before_needing_a_gpu() -> None:
    z = np.zeros((2, 3), np.float32)
    with pytest.raises(DeviceError, match=r"bias_act_forward: z is a numpy array"):
        kernels.bias_act_forward("relu", z, None, z)
    with pytest.raises(DTypeError, match=r"column_sum: x must be a cupy.ndarray"):
        kernels.column_sum([[1.0]], z)
    with pytest.raises(DeviceError, match="sgd_step: params is a numpy array"):
        kernels.sgd_step(z.ravel(), z.ravel(), None, z[:1, 0], np.zeros(2, np.int32))


def test_plain_import_does_not_load_kernels_or_cupy() -> None:
    code = (
        "import sys, gpubackprop; "
        "assert 'gpubackprop.kernels' not in sys.modules, 'kernels imported'; "
        "assert 'cupy' not in sys.modules, 'cupy imported'"
    )
    root = Path(kernels.__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_sum_reduce_plan_depends_on_size_only() -> None:
    assert kernels.sum_reduce_workspace_size(0) == 0
    assert kernels.sum_reduce_workspace_size(65536) == 0
    assert 1 <= kernels.sum_reduce_workspace_size(65537) <= 1024
    assert kernels.sum_reduce_workspace_size(10**9) == 1024
    lanes = [kernels.column_sum_lanes(r) for r in (0, 1, 16, 17, 64, 257, 4097, 10**6)]
    assert lanes == [1, 1, 1, 2, 4, 32, 32, 32]


# --- the wrappers against the kernels' C++ signatures, with stand-in device arrays ----------
class _FakeDeviceArray:
    """Just enough of cupy.ndarray for the wrappers' checks: a NumPy array on 'cuda:0'."""

    class _Ptr:
        def __init__(self, ptr: int) -> None:
            self.ptr = ptr

    class _Device:
        id = 0

    def __init__(self, host: np.ndarray) -> None:
        self.host = host
        self.shape, self.ndim, self.dtype = host.shape, host.ndim, host.dtype
        self.size, self.nbytes, self.strides = host.size, host.nbytes, host.strides
        self.flags = host.flags
        self.device = self._Device()
        self.data = self._Ptr(host.__array_interface__["data"][0])

    @property
    def T(self) -> _FakeDeviceArray:
        return _FakeDeviceArray(self.host.T)


class _Recorder:
    """A stand-in RawKernel: records its launches."""

    def __init__(self, name: str, launches: list[tuple[str, Any, Any, tuple[Any, ...]]]) -> None:
        self.name, self.launches = name, launches

    def __call__(
        self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...]
    ) -> None:
        self.launches.append((self.name, grid, block, args))


_SIGNATURE = re.compile(
    r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)", re.DOTALL
)


def _kernel_parameters() -> dict[str, list[str]]:
    """kernel -> its parameter types, normalised ('T*', 'int', 'long long*', ...)."""
    params: dict[str, list[str]] = {}
    for family in kernels.FAMILIES:
        for name, plist in _SIGNATURE.findall(kernels.source(family)):
            types = []
            for param in plist.split(","):
                words = param.replace("__restrict__", " ").replace("*", " * ").split()
                words = [w for w in words if w != "const"][:-1]  # drop the parameter name
                types.append(" ".join(words).replace(" *", "*"))
            params[name] = types
    return params


def _check_launch_arguments(
    params: list[str], args: tuple[Any, ...], dtype: np.dtype, where: str
) -> None:
    assert len(args) == len(params), f"{where}: {len(args)} arguments for {params}"
    for k, (ctype, arg) in enumerate(zip(params, args, strict=True)):
        what = f"{where}: argument {k} ({ctype}) got {type(arg).__name__}"
        if ctype == "T*":
            assert arg is None or (isinstance(arg, _FakeDeviceArray) and arg.dtype == dtype), what
        elif ctype == "long long*":
            assert isinstance(arg, _FakeDeviceArray) and arg.dtype == np.int64, what
        elif ctype == "int*":
            assert isinstance(arg, _FakeDeviceArray) and arg.dtype == np.int32, what
        elif ctype == "T":
            assert type(arg) is dtype.type, what
        else:
            scalar = {"int": np.int32, "long long": np.int64, "double": np.float64}[ctype]
            assert type(arg) is scalar, what


@pytest.fixture
def fake_device(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any, Any, tuple[Any, ...]]]:
    """Route the wrappers to stand-in arrays and kernels; returns the launch log."""
    launches: list[tuple[str, Any, Any, tuple[Any, ...]]] = []

    class _Runtime:
        @staticmethod
        def getDevice() -> int:
            return 0

    class _Device:
        def __init__(self, device_id: int) -> None:
            assert device_id == 0

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            return None

    class _Cuda:
        runtime = _Runtime()
        Device = _Device

    class _FakeCupy:
        cuda = _Cuda()

        @staticmethod
        def empty(shape: tuple[int, ...], dtype: Any) -> _FakeDeviceArray:
            return _FakeDeviceArray(np.empty(shape, dtype))

    def get_kernel(kernel: str, dtype: Any, activation: Any = None) -> _Recorder:
        return _Recorder(kernels.kernel_name(kernel, dtype, activation), launches)

    monkeypatch.setattr(kernels, "is_cupy_array", lambda x: isinstance(x, _FakeDeviceArray))
    monkeypatch.setattr(kernels, "_cupy", lambda: _FakeCupy)
    monkeypatch.setattr(kernels, "_sm_count", lambda device_id: 132)
    monkeypatch.setattr(kernels, "get_kernel", get_kernel)
    return launches


def _dev(shape: Any, dtype: Any, fill: float = 0.0) -> _FakeDeviceArray:
    return _FakeDeviceArray(np.full(shape, fill, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_wrapper_launches_with_the_kernel_signature(
    fake_device: list[tuple[str, Any, Any, tuple[Any, ...]]], dtype: Any
) -> None:
    dt = np.dtype(dtype)
    rows, cols, n = 1031, 257, 1031 * 257  # > 65536: the two-pass sum_reduce
    z, m = _dev((rows, cols), dt), _dev((rows, cols), dt)
    for name in ACT_NAMES:
        kernels.bias_act_forward(name, z, _dev(cols, dt), m)
        kernels.bias_act_forward(name, z, None, z)
        kernels.act_backward(name, z, m, _dev((rows, cols), dt))
        kernels.act_backward_colsum(name, z, m, _dev((rows, cols), dt), _dev(cols, dt))
        kernels.act_backward_colsum(name, z, m, None, _dev(cols, dt))
    kernels.act_backward_colsum("identity", z, None, None, _dev(cols, dt))
    kernels.column_sum(z, _dev(cols, dt))
    labels = _FakeDeviceArray(np.zeros(rows, np.int64))
    value = _dev((), dt)
    kernels.softmax_xent_labels(z, labels, m, _dev(rows, dt), value)
    kernels.softmax_xent_probs(z, _dev((rows, cols), dt), m, _dev(rows, dt), value)
    kernels.mse_grad(z, _dev((rows, cols), dt), m, _dev((rows, cols), dt), scale=0.5, value=value)
    kernels.bce_logits(z, _dev((rows, cols), dt), m, _dev((rows, cols), dt), value)
    kernels.sum_reduce(z, value, workspace=_dev(2048, dt))
    p, g, buf = _dev(n, dt), _dev(n, dt), _dev(n, dt)
    lr, state, scalars = _dev(1, dt, 0.1), _FakeDeviceArray(np.zeros(2, np.int32)), _dev(3, dt)
    kernels.sgd_step(p, g, buf, lr, state, momentum=0.9, nesterov=True, weight_decay=0.1)
    kernels.sgd_step(p, g, None, lr, state)
    kernels.adam_update(
        p, g, _dev(n, dt), _dev(n, dt), lr, state, scalars, betas=(0.9, 0.999), eps=1e-8
    )
    params = _kernel_parameters()
    assert set(params) == set(kernels.KERNELS)
    launched = set()
    for name, grid, block, args in fake_device:
        kernel = name.split("<")[0].removeprefix("gbp::")
        launched.add(kernel)
        _check_launch_arguments(params[kernel], args, dt, name)
        assert all(isinstance(d, int) and d >= 1 for d in (*grid, *block)), (name, grid, block)
        assert math.prod(block) <= 1024 and grid[0] <= 2**31 - 1, (name, grid, block)
    assert launched == set(kernels.KERNELS)


def test_argument_checks_without_a_gpu(fake_device: list[Any]) -> None:
    z = _dev((4, 3), np.float32)
    with pytest.raises(DTypeError, match=r"bias_act_forward: bias is float64 but z is float32"):
        kernels.bias_act_forward("relu", z, _dev(3, np.float64), z)
    with pytest.raises(ShapeError, match=r"bias must have shape \(3,\)"):
        kernels.bias_act_forward("relu", z, _dev(4, np.float32), z)
    with pytest.raises(ShapeError, match="delta must be C-contiguous"):
        kernels.act_backward("tanh", z.T, _dev((3, 4), np.float32), _dev((3, 4), np.float32))
    with pytest.raises(ConfigError, match=r"delta and dz share memory"):
        kernels.act_backward("tanh", z, _dev((4, 3), np.float32), z)
    buffer = np.zeros(15, np.float32)
    z, shifted = (_FakeDeviceArray(buffer[k : k + 12].reshape(4, 3)) for k in (0, 3))
    with pytest.raises(ConfigError, match=r"z and out share memory"):  # overlapping, not equal
        kernels.bias_act_forward("relu", z, None, shifted)
    assert not fake_device  # nothing was launched
    view = _FakeDeviceArray(z.host.reshape(4, 3))  # the same buffer, another object: allowed
    kernels.bias_act_forward("relu", z, None, view)
    assert len(fake_device) == 1


# --- with nvcc: check.sh, and the per-element math on the host -------------------------------
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


@needs_nvcc
def test_check_sh_compiles_every_kernel() -> None:
    """kernels/check.sh: every .cu for sm_80 and sm_90, and the loader's sources with
    its name expressions (about 20 s on 2 cores)."""
    script = kernels.kernel_dir() / "check.sh"
    if not script.is_file():  # a packaged copy may ship the sources only
        script = kernels.REPO_KERNEL_DIR / "check.sh"
    if not script.is_file():
        pytest.skip("kernels/check.sh is not installed here")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout


HARNESS = r"""
// Host harness: the kernels' per-element math (GBP_HD functions) on the CPU.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "dense.cu"
#include "losses.cu"
#include "optim.cu"

using Vec = std::vector<double>;

static Vec read_all(const char* path) {
    FILE* f = std::fopen(path, "rb");
    if (!f) { std::perror(path); std::exit(2); }
    std::fseek(f, 0, SEEK_END);
    const long bytes = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    Vec v(static_cast<size_t>(bytes) / sizeof(double));
    if (std::fread(v.data(), sizeof(double), v.size(), f) != v.size()) std::exit(3);
    std::fclose(f);
    return v;
}

static void write_all(const char* path, const Vec& v) {
    FILE* f = std::fopen(path, "wb");
    if (!f) { std::perror(path); std::exit(2); }
    std::fwrite(v.data(), sizeof(double), v.size(), f);
    std::fclose(f);
}

template <typename T, typename Act>
static Vec run_act(const Vec& z) {
    const size_t n = z.size();
    Vec out(2 * n);
    for (size_t i = 0; i < n; ++i) {
        const T zi = static_cast<T>(z[i]);
        const T a = Act::forward(zi);
        out[i] = a;
        out[n + i] = Act::grad(Act::needs_input ? zi : a);
    }
    return out;
}

template <typename T>
static bool run_act_named(const char* name, const Vec& in, Vec& out) {
#define GBP_HOST_ACT(py, Type) \
    if (std::strcmp(name, #py) == 0) { out = run_act<T, gbp::act::Type>(in); return true; }
    GBP_FOR_EACH_ACTIVATION(GBP_HOST_ACT)
#undef GBP_HOST_ACT
    return false;
}

// in: z[n], y[n]; out: loss[n], grad[n]
template <typename T>
static Vec run_bce(const Vec& in) {
    const size_t n = in.size() / 2;
    const T inv_n = static_cast<T>(1.0 / static_cast<double>(n));
    Vec out(2 * n);
    for (size_t i = 0; i < n; ++i) {
        T g;
        out[i] = gbp::bce_element<T>(static_cast<T>(in[i]), static_cast<T>(in[n + i]), inv_n, &g);
        out[n + i] = g;
    }
    return out;
}

// in: n, steps, lr, momentum, dampening, weight_decay, nesterov, p[n], g[steps][n]
// out: p[n], buf[n]   (as sgd_step with step_state starting at 0)
template <typename T>
static Vec run_sgd(const Vec& in) {
    const size_t n = static_cast<size_t>(in[0]), steps = static_cast<size_t>(in[1]);
    const T neg_lr = -static_cast<T>(in[2]), mom = static_cast<T>(in[3]);
    const T omd = static_cast<T>(1.0 - in[4]), wd = static_cast<T>(in[5]);
    const bool nesterov = in[6] != 0;
    std::vector<T> p(n), buf(n, T(0));
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<T>(in[7 + i]);
    for (size_t s = 0; s < steps; ++s)
        for (size_t i = 0; i < n; ++i)
            gbp::sgd_element<T>(p[i], static_cast<T>(in[7 + n + s * n + i]), buf[i], neg_lr, mom,
                                omd, wd, nesterov, s == 0);
    Vec out(2 * n);
    for (size_t i = 0; i < n; ++i) { out[i] = p[i]; out[n + i] = buf[i]; }
    return out;
}

// in: n, steps, lr, beta1, beta2, eps, weight_decay, decoupled, p[n], g[steps][n]
// out: p[n], m[n], v[n]   (as adam_prepare + adam_step, step_state starting at 0)
template <typename T>
static Vec run_adam(const Vec& in) {
    const size_t n = static_cast<size_t>(in[0]), steps = static_cast<size_t>(in[1]);
    const T lr = static_cast<T>(in[2]);
    const double b1 = in[3], b2 = in[4], wd = in[6];
    const T eps = static_cast<T>(in[5]);
    const bool decoupled = in[7] != 0;
    std::vector<T> p(n), m(n, T(0)), v(n, T(0));
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<T>(in[8 + i]);
    for (size_t s = 0; s < steps; ++s) {
        T sc[3];
        gbp::adam_scalars<T>(static_cast<int>(s) + 1, static_cast<double>(lr), b1, b2, wd, sc);
        for (size_t i = 0; i < n; ++i)
            gbp::adam_element<T>(p[i], static_cast<T>(in[8 + n + s * n + i]), m[i], v[i], sc[0],
                                 sc[1], sc[2], static_cast<T>(b1), static_cast<T>(b2),
                                 static_cast<T>(1.0 - b1), static_cast<T>(1.0 - b2), eps,
                                 static_cast<T>(wd), decoupled);
    }
    Vec out(3 * n);
    for (size_t i = 0; i < n; ++i) { out[i] = p[i]; out[n + i] = m[i]; out[2 * n + i] = v[i]; }
    return out;
}

template <typename T>
static int run(const char* mode, const char* arg, const Vec& in, Vec& out) {
    if (std::strcmp(mode, "act") == 0) return run_act_named<T>(arg, in, out) ? 0 : 4;
    if (std::strcmp(mode, "bce") == 0) { out = run_bce<T>(in); return 0; }
    if (std::strcmp(mode, "sgd") == 0) { out = run_sgd<T>(in); return 0; }
    if (std::strcmp(mode, "adam") == 0) { out = run_adam<T>(in); return 0; }
    return 5;
}

int main(int argc, char** argv) {  // harness MODE DTYPE ARG IN OUT
    if (argc != 6) return 1;
    const Vec in = read_all(argv[4]);
    Vec out;
    const int rc = std::strcmp(argv[2], "float32") == 0 ? run<float>(argv[1], argv[3], in, out)
                                                        : run<double>(argv[1], argv[3], in, out);
    if (rc == 0) write_all(argv[5], out);
    return rc;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host harness, compiled once (a few seconds)."""
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    folder = tmp_path_factory.mktemp("kernel_harness")
    src, exe = folder / "harness.cu", folder / "harness"
    src.write_text(HARNESS)
    cmd = [NVCC, "-std=c++17", "-I", str(kernels.kernel_dir()), "-Xcompiler", "-ffp-contract=off"]
    done = subprocess.run(
        [*cmd, "-o", str(exe), str(src)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return exe


def _run_harness(exe: Path, mode: str, dtype: Any, arg: str, data: np.ndarray) -> np.ndarray:
    folder = exe.parent
    inp, out = folder / f"{mode}.in", folder / f"{mode}.out"
    np.asarray(data, dtype=np.float64).tofile(inp)
    done = subprocess.run(
        [str(exe), mode, np.dtype(dtype).name, arg, str(inp), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"harness {mode} {arg}: rc {done.returncode} {done.stderr}"
    return np.fromfile(out, dtype=np.float64).astype(dtype)


def _activation_inputs(dtype: Any, rng: np.random.Generator) -> np.ndarray:
    random = np.concatenate([rng.standard_normal(2000) * 3, rng.uniform(-30, 30, 500)])
    z = np.concatenate([FINITE_EDGES, [-INF, INF], random])
    return z.astype(dtype)


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ACT_NAMES)
def test_host_activation_functors_match_reference(
    harness: Path, name: str, dtype: Any, rng: np.random.Generator
) -> None:
    z = _activation_inputs(dtype, rng)
    out = _run_harness(harness, "act", dtype, name, z)
    a, g = out[: z.size], out[z.size :]
    _check_activation_values(name, dtype, z, a, g)


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_host_bce_element_matches_reference(
    harness: Path, dtype: Any, rng: np.random.Generator
) -> None:
    z = np.concatenate([FINITE_EDGES, rng.standard_normal(500) * 5]).astype(dtype)
    y = rng.uniform(0, 1, z.size).astype(dtype)
    y[:4] = [0.0, 1.0, 0.0, 1.0]
    out = _run_harness(harness, "bce", dtype, "-", np.concatenate([z, y]))
    loss, grad = out[: z.size], out[z.size :]
    grad_ref = np.empty_like(z)
    value_ref = NumpyOps().bce_with_logits(z, y, grad_ref)
    assert np.isfinite(loss).all()
    _assert_close(grad, grad_ref, dtype, "bce grad")
    rtol, _ = _tol(dtype)
    assert abs(loss.astype(np.float64).sum() / z.size - value_ref) <= rtol * (
        np.abs(loss).sum() / z.size
    )
    # the limits at ±inf where the loss has one: 0 for a confident right answer
    zi = np.array([INF, -INF, INF, -INF], dtype)
    yi = np.array([1.0, 0.0, 0.0, 1.0], dtype)
    out = _run_harness(harness, "bce", dtype, "-", np.concatenate([zi, yi]))
    np.testing.assert_array_equal(out[:4], [0.0, 0.0, INF, INF])
    np.testing.assert_array_equal(out[4:], np.array([0.0, 0.0, 0.25, -0.25], dtype))


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


def _opt_data(n: int, dtype: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    params = rng.standard_normal(n).astype(dtype)
    grads = rng.standard_normal((OPT_STEPS, n)).astype(dtype)
    return params, grads


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=str)
def test_host_sgd_element_is_bit_exact(
    harness: Path, config: dict[str, Any], dtype: Any, rng: np.random.Generator
) -> None:
    n, lr = 999, 0.05
    params, grads = _opt_data(n, dtype, rng)
    opt, p = SGD(lr=lr, **config), params.copy()
    for g in grads:
        opt.step(p, g)
    header = [
        n, OPT_STEPS, lr, config.get("momentum", 0.0), config.get("dampening", 0.0),
        config.get("weight_decay", 0.0), float(config.get("nesterov", False)),
    ]  # fmt: skip
    out = _run_harness(harness, "sgd", dtype, "-", np.concatenate([header, params, grads.ravel()]))
    np.testing.assert_array_equal(out[:n], p)
    if config.get("momentum", 0.0):
        np.testing.assert_array_equal(out[n:], opt.state_dict()["state"]["momentum_buffer"])


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cls,config", ADAM_CONFIGS, ids=lambda x: str(x))
def test_host_adam_element_is_bit_exact(
    harness: Path, cls: type, config: dict[str, Any], dtype: Any, rng: np.random.Generator
) -> None:
    """With a learning rate exact in float32 (so the device's lr equals Python's)."""
    n, lr = 999, 2.0**-7
    params, grads = _opt_data(n, dtype, rng)
    opt, p = cls(lr=lr, **config), params.copy()
    for g in grads:
        opt.step(p, g)
    beta1, beta2 = config.get("betas", (0.9, 0.999))
    header = [
        n, OPT_STEPS, lr, beta1, beta2, config.get("eps", 1e-8),
        config.get("weight_decay", 0.0), float(cls is AdamW),
    ]  # fmt: skip
    out = _run_harness(harness, "adam", dtype, "-", np.concatenate([header, params, grads.ravel()]))
    state = opt.state_dict()["state"]
    np.testing.assert_array_equal(out[:n], p)
    np.testing.assert_array_equal(out[n : 2 * n], state["exp_avg"])
    np.testing.assert_array_equal(out[2 * n :], state["exp_avg_sq"])


# =========================================================================================
# With CuPy and a GPU
# =========================================================================================
SHAPES = [(1, 1), (7, 13), (257, 1031), (4097, 2049)]  # the last: more than one grid


@pytest.fixture(scope="module")
def cp() -> Any:
    return pytest.importorskip("cupy")


def _sum_close(got: np.ndarray, ref64: np.ndarray, magnitude: np.ndarray, dtype: Any) -> None:
    """A sum against its float64 value, within rounding of the summed magnitudes."""
    rel = 2e-5 if np.dtype(dtype) == np.float32 else 1e-13
    err = np.abs(got.astype(np.float64) - ref64)
    bound = rel * magnitude + np.finfo(dtype).tiny
    assert (err <= bound).all(), f"max error {err.max()} vs bound {bound[err.argmax()]}"


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", ACT_NAMES)
def test_bias_act_forward(
    cp: Any, name: str, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    z_ref = z + b
    a_ref, _ = _reference_activation(name, z_ref)
    zd, out = cp.asarray(z), cp.empty(shape, dtype)
    assert kernels.bias_act_forward(name, zd, cp.asarray(b), out) is out
    np.testing.assert_array_equal(zd.get(), z_ref)  # z + b: one IEEE add either way
    _assert_close(out.get(), a_ref, dtype, name, activation=True)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ACT_NAMES)
def test_bias_act_forward_in_place_and_without_bias(
    cp: Any, name: str, dtype: Any, rng: np.random.Generator
) -> None:
    z = (rng.standard_normal((257, 1031)) * 3).astype(dtype)
    b = rng.standard_normal(1031).astype(dtype)
    a_ref, _ = _reference_activation(name, z + b)
    zd = cp.asarray(z)
    kernels.bias_act_forward(name, zd, cp.asarray(b), zd)  # out is z
    _assert_close(zd.get(), a_ref, dtype, f"{name} in place", activation=True)
    a_ref, _ = _reference_activation(name, z)
    zd, out = cp.asarray(z), cp.empty_like(cp.asarray(z))
    kernels.bias_act_forward(name, zd, None, out)
    np.testing.assert_array_equal(zd.get(), z)  # no bias: z untouched
    _assert_close(out.get(), a_ref, dtype, f"{name} without bias", activation=True)


def _backward_case(
    name: str, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """delta, saved (a or z) and the reference delta ⊙ f′."""
    act = ACTIVATIONS[name]
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    delta = rng.standard_normal(shape).astype(dtype)
    a, _ = _reference_activation(name, z)
    saved = z if act.needs_input else a
    dz_ref = act.backward(np, delta, saved, np.empty_like(z))
    return delta, saved, dz_ref


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", ACT_NAMES)
def test_act_backward(
    cp: Any, name: str, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    delta, saved, dz_ref = _backward_case(name, shape, dtype, rng)
    dz = cp.empty(shape, dtype)
    kernels.act_backward(name, cp.asarray(delta), cp.asarray(saved), dz)
    _assert_close(dz.get(), dz_ref, dtype, name, activation=True)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", ACT_NAMES)
def test_act_backward_colsum(
    cp: Any, name: str, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    delta, saved, dz_ref = _backward_case(name, shape, dtype, rng)
    dz, db = cp.empty(shape, dtype), cp.empty(shape[1], dtype)
    kernels.act_backward_colsum(name, cp.asarray(delta), cp.asarray(saved), dz, db)
    _assert_close(dz.get(), dz_ref, dtype, name, activation=True)
    ref64 = dz_ref.astype(np.float64)
    _sum_close(db.get(), ref64.sum(axis=0), np.abs(ref64).sum(axis=0), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [*SHAPES, (0, 5), (3, 0)], ids=str)
def test_identity_colsum_and_column_sum(
    cp: Any, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    x = rng.standard_normal(shape).astype(dtype)
    ref64 = x.astype(np.float64)
    xd = cp.asarray(x)
    db = cp.full(shape[1], np.nan, dtype)
    kernels.act_backward_colsum("identity", xd, None, None, db)  # dz not written
    _sum_close(db.get(), ref64.sum(axis=0), np.abs(ref64).sum(axis=0), dtype)
    out = cp.full(shape[1], np.nan, dtype)
    kernels.column_sum(xd, out)
    np.testing.assert_array_equal(out.get(), db.get())  # the same order, the same bits
    dz = cp.empty(shape, dtype)
    kernels.act_backward_colsum(None, xd, None, dz, db)  # identity with dz: a copy
    np.testing.assert_array_equal(dz.get(), x)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ACT_NAMES)
def test_activation_edge_values(cp: Any, name: str, dtype: Any) -> None:
    z = np.array([[*FINITE_EDGES, -INF, INF]], dtype=dtype)
    act = ACTIVATIONS[name]
    zd = cp.asarray(z)
    a = cp.empty_like(zd)
    kernels.bias_act_forward(name, zd, None, a)
    dz = cp.empty_like(zd)
    kernels.act_backward(name, cp.ones_like(zd), zd if act.needs_input else a, dz)
    _check_activation_values(name, dtype, z.ravel(), a.get().ravel(), dz.get().ravel())
    db = cp.empty(z.shape[1], dtype)
    kernels.act_backward_colsum(name, cp.ones_like(zd), zd if act.needs_input else a, None, db)
    np.testing.assert_array_equal(db.get(), dz.get().ravel())


@gpu
def test_column_reductions_are_deterministic(cp: Any, rng: np.random.Generator) -> None:
    shape = (4097, 2049)
    delta = cp.asarray(rng.standard_normal(shape).astype(np.float32))
    a = cp.asarray(rng.uniform(0, 1, shape).astype(np.float32))
    dz, db, out, total = (
        cp.empty(shape, np.float32),
        cp.empty(shape[1], np.float32),
        cp.empty(shape[1], np.float32),
        cp.empty((), np.float32),
    )
    runs = []
    for _ in range(10):
        kernels.act_backward_colsum("sigmoid", delta, a, dz, db)
        kernels.column_sum(delta, out)
        kernels.sum_reduce(delta, total)
        runs.append((db.get().tobytes(), dz.get().tobytes(), out.get().tobytes(), total.get()))
    assert all(r[0] == runs[0][0] and r[1] == runs[0][1] for r in runs)
    assert all(r[2] == runs[0][2] for r in runs)
    assert all(r[3].tobytes() == runs[0][3].tobytes() for r in runs)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", [0, 1, 7, 1000, 65536, 65537, 4097 * 2049])
def test_sum_reduce(cp: Any, n: int, dtype: Any, rng: np.random.Generator) -> None:
    x = rng.standard_normal(n).astype(dtype)
    out = cp.empty((1,), dtype)
    kernels.sum_reduce(cp.asarray(x), out, scale=0.5)
    ref = 0.5 * math.fsum(x.astype(np.float64))
    _sum_close(out.get(), np.array([ref]), np.array([0.5 * np.abs(x).sum()]), dtype)
    workspace = cp.empty(max(kernels.sum_reduce_workspace_size(n), 1), dtype)
    again = cp.empty((), dtype)
    kernels.sum_reduce(cp.asarray(x), again, scale=0.5, workspace=workspace)
    assert again.get().tobytes() == out.get()[0].tobytes()


LOSS_SHAPES = [(1, 1), (7, 13), (257, 1031), (4097, 10), (3, 5000), (20000, 3)]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=str)
def test_softmax_xent_labels(
    cp: Any, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    rows, cols = shape
    logits = (rng.standard_normal(shape) * 4).astype(dtype)
    labels = rng.integers(0, cols, size=rows)
    grad_ref = np.empty_like(logits)
    value_ref = NumpyOps().softmax_cross_entropy_labels(logits, labels, grad_ref)
    z64 = logits.astype(np.float64)
    lse = np.log(np.exp(z64 - z64.max(1, keepdims=True)).sum(1)) + z64.max(1)
    row_ref = lse - z64[np.arange(rows), labels]
    grad, row_loss, value = cp.empty(shape, dtype), cp.empty(rows, dtype), cp.empty((), dtype)
    kernels.softmax_xent_labels(cp.asarray(logits), cp.asarray(labels), grad, row_loss, value)
    _assert_close(grad.get(), grad_ref, dtype, "grad")
    _assert_close(row_loss.get(), row_ref, dtype, "row_loss")
    _assert_close(value.get(), value_ref, dtype, "value")


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_xent_labels_edge_logits(cp: Any, dtype: Any) -> None:
    logits = np.array(
        [[1e4, -1e4, 0.0], [-INF, 0.0, 1.0], [89.0, -89.0, 0.0], [20.0, 20.0, -20.0]], dtype
    )
    labels = np.array([1, 2, 0, 2])
    grad_ref = np.empty_like(logits)
    with np.errstate(all="ignore"):
        value_ref = NumpyOps().softmax_cross_entropy_labels(logits, labels, grad_ref)
    grad, row_loss, value = (
        cp.empty_like(cp.asarray(logits)),
        cp.empty(4, dtype),
        cp.empty((), dtype),
    )
    kernels.softmax_xent_labels(cp.asarray(logits), cp.asarray(labels), grad, row_loss, value)
    assert np.isfinite(grad.get()).all() and np.isfinite(row_loss.get()).all()
    _assert_close(grad.get(), grad_ref, dtype, "grad")
    _assert_close(value.get(), value_ref, dtype, "value")
    # a label outside [0, C) poisons its row (NaN), not the memory around it
    bad = cp.asarray(np.array([3, 0, -1, 1]))
    kernels.softmax_xent_labels(cp.asarray(logits), bad, grad, row_loss)
    rl = row_loss.get()
    assert np.isnan(rl[[0, 2]]).all() and np.isfinite(rl[[1, 3]]).all()
    assert np.isnan(grad.get()[[0, 2]]).all()


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=str)
def test_softmax_xent_probs(
    cp: Any, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    rows, _ = shape
    logits = (rng.standard_normal(shape) * 4).astype(dtype)
    probs = rng.uniform(0, 1, shape)
    probs[rng.uniform(0, 1, shape) < 0.3] = 0.0
    probs = (probs / np.maximum(probs.sum(1, keepdims=True), 1e-3)).astype(dtype)
    grad_ref = np.empty_like(logits)
    value_ref = NumpyOps().softmax_cross_entropy_probs(logits, probs, grad_ref)
    grad, row_loss, value = cp.empty(shape, dtype), cp.empty(rows, dtype), cp.empty((), dtype)
    kernels.softmax_xent_probs(cp.asarray(logits), cp.asarray(probs), grad, row_loss, value)
    _assert_close(grad.get(), grad_ref, dtype, "grad")
    _assert_close(value.get(), value_ref, dtype, "value")
    _assert_close(row_loss.get().sum() / rows, value_ref, dtype, "row_loss")


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mean", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (257, 1031), (4097, 2049)], ids=str)
def test_mse_grad(
    cp: Any, shape: tuple[int, int], mean: bool, dtype: Any, rng: np.random.Generator
) -> None:
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    grad_ref = np.empty_like(pred)
    value_ref = NumpyOps().mse(pred, target, grad_ref, mean=mean)
    scale = 1.0 / pred.size if mean else 1.0
    grad, sq, value = cp.empty(shape, dtype), cp.empty(shape, dtype), cp.empty((), dtype)
    kernels.mse_grad(cp.asarray(pred), cp.asarray(target), grad, sq, scale=scale, value=value)
    np.testing.assert_array_equal(grad.get(), grad_ref)  # (p − y)·2s: the same two roundings
    _assert_close(value.get(), value_ref, dtype, "value")


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (257, 1031), (4097, 2049)], ids=str)
def test_bce_logits(cp: Any, shape: tuple[int, int], dtype: Any, rng: np.random.Generator) -> None:
    z = (rng.standard_normal(shape) * 5).astype(dtype)
    y = rng.uniform(0, 1, shape).astype(dtype)
    grad_ref = np.empty_like(z)
    value_ref = NumpyOps().bce_with_logits(z, y, grad_ref)
    grad, elem, value = cp.empty(shape, dtype), cp.empty(shape, dtype), cp.empty((), dtype)
    kernels.bce_logits(cp.asarray(z), cp.asarray(y), grad, elem, value)
    _assert_close(grad.get(), grad_ref, dtype, "grad")
    _assert_close(value.get(), value_ref, dtype, "value")


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bce_logits_edge_values(cp: Any, dtype: Any) -> None:
    z = np.array([*FINITE_EDGES, INF, -INF, INF, -INF], dtype)
    y = np.zeros_like(z)
    y[1::2] = 1.0
    y[-4:] = [1.0, 0.0, 0.0, 1.0]
    grad, elem = cp.empty_like(cp.asarray(z)), cp.empty_like(cp.asarray(z))
    kernels.bce_logits(cp.asarray(z), cp.asarray(y), grad, elem)
    loss = elem.get()
    k = len(FINITE_EDGES)
    assert np.isfinite(loss[:k]).all() and np.isfinite(grad.get()).all()
    grad_ref = np.empty_like(z[:k])
    NumpyOps().bce_with_logits(z[:k], y[:k], grad_ref)
    _assert_close(grad.get()[:k] * (z.size / k), grad_ref, dtype, "grad")  # 1/N vs 1/k
    np.testing.assert_array_equal(loss[k:], [0.0, 0.0, INF, INF])


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=str)
def test_sgd_step_matches_optim_bit_for_bit(
    cp: Any, config: dict[str, Any], dtype: Any, rng: np.random.Generator
) -> None:
    n = 4097 * 257  # more than one grid of the elementwise kernels
    params, grads = _opt_data(n, dtype, rng)
    lrs = [0.05, 0.05, 0.02, 0.02, 0.01, 0.01]  # a schedule, through the device lr
    opt, p_ref = SGD(lr=lrs[0], **config), params.copy()
    p, lr, state = cp.asarray(params), cp.empty(1, dtype), cp.zeros(2, np.int32)
    buf = cp.empty(n, dtype) if config.get("momentum", 0.0) else None
    hyper = {k: v for k, v in config.items()}
    for step, g in enumerate(grads):
        opt.lr = lrs[step]
        opt.step(p_ref, g)
        lr.fill(lrs[step])
        kernels.sgd_step(p, cp.asarray(g), buf, lr, state, **hyper)
    np.testing.assert_array_equal(p.get(), p_ref)
    if buf is not None:
        np.testing.assert_array_equal(buf.get(), opt.state_dict()["state"]["momentum_buffer"])
    np.testing.assert_array_equal(state.get(), [OPT_STEPS, 0])


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cls,config", ADAM_CONFIGS, ids=lambda x: str(x))
def test_adam_matches_optim(
    cp: Any, cls: type, config: dict[str, Any], dtype: Any, rng: np.random.Generator
) -> None:
    n = 4097 * 257
    params, grads = _opt_data(n, dtype, rng)
    opt, p_ref = cls(lr=1e-3, **config), params.copy()
    p, m, v = cp.asarray(params), cp.zeros(n, dtype), cp.zeros(n, dtype)
    lr, state, scalars = cp.full(1, 1e-3, dtype), cp.zeros(2, np.int32), cp.empty(3, dtype)
    beta1, beta2 = config.get("betas", (0.9, 0.999))
    for g in grads:
        opt.step(p_ref, g)
        kernels.adam_update(
            p, cp.asarray(g), m, v, lr, state, scalars,
            betas=(beta1, beta2), eps=config.get("eps", 1e-8),
            weight_decay=config["weight_decay"], decoupled=cls is AdamW,
        )  # fmt: skip
    ref_state = opt.state_dict()["state"]
    rtol = 1e-6 if np.dtype(dtype) == np.float32 else 1e-14
    np.testing.assert_allclose(p.get(), p_ref, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(m.get(), ref_state["exp_avg"], rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(v.get(), ref_state["exp_avg_sq"], rtol=rtol, atol=rtol * 1e-4)
    assert int(state.get()[0]) == OPT_STEPS


@gpu
def test_optimizer_steps_replay_from_a_cuda_graph(cp: Any, rng: np.random.Generator) -> None:
    """SGD (momentum) and AdamW captured once, replayed with a changing device lr."""
    n, dtype = 10007, np.float32
    params, grads = _opt_data(n, dtype, rng)
    g = cp.empty(n, dtype)
    lrs = [0.1, 0.05, 0.025, 0.0125, 0.01, 0.01]
    sgd_ref, p_sgd_ref = SGD(lr=lrs[0], momentum=0.9), params.copy()
    adam_ref, p_adam_ref = AdamW(lr=lrs[0], weight_decay=0.1), params.copy()
    p_sgd, buf = cp.asarray(params), cp.empty(n, dtype)
    p_adam, m, v = cp.asarray(params), cp.zeros(n, dtype), cp.zeros(n, dtype)
    lr, s_sgd, s_adam = cp.empty(1, dtype), cp.zeros(2, np.int32), cp.zeros(2, np.int32)
    scalars = cp.empty(3, dtype)

    def step() -> None:
        kernels.sgd_step(p_sgd, g, buf, lr, s_sgd, momentum=0.9)
        kernels.adam_update(
            p_adam, g, m, v, lr, s_adam, scalars, betas=(0.9, 0.999), eps=1e-8,
            weight_decay=0.1, decoupled=True,
        )  # fmt: skip

    # compile and load outside the capture (no compilation may happen inside it)
    for name in ("sgd_step", "adam_prepare", "adam_step"):
        kernels.get_kernel(name, dtype).kernel  # noqa: B018 - the property loads it
    kernels.mse_grad(g, g, cp.empty_like(g), None, scale=1.0)  # warms the grid helper
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        step()
        graph = stream.end_capture()
    for k, grad in enumerate(grads):
        sgd_ref.lr = adam_ref.lr = lrs[k]
        sgd_ref.step(p_sgd_ref, grad)
        adam_ref.step(p_adam_ref, grad)
        with stream:
            g.set(grad, stream=stream)
            lr.fill(lrs[k])
            graph.launch(stream)
        stream.synchronize()
    np.testing.assert_array_equal(p_sgd.get(), p_sgd_ref)
    np.testing.assert_allclose(p_adam.get(), p_adam_ref, rtol=1e-6, atol=1e-8)
    assert int(s_sgd.get()[0]) == int(s_adam.get()[0]) == OPT_STEPS


@gpu
def test_argument_checks_raise_package_errors(cp: Any) -> None:
    z = cp.zeros((4, 3), np.float32)
    with pytest.raises(DTypeError, match=r"bias_act_forward: bias is float64 but z is float32"):
        kernels.bias_act_forward("relu", z, cp.zeros(3, np.float64), z)
    with pytest.raises(DTypeError, match=r"z must be float32 or float64, got int32"):
        kernels.bias_act_forward("relu", z.astype(np.int32), None, z)
    with pytest.raises(ShapeError, match=r"bias must have shape \(3,\)"):
        kernels.bias_act_forward("relu", z, cp.zeros(4, np.float32), z)
    with pytest.raises(ShapeError, match="must be C-contiguous"):
        kernels.act_backward("tanh", z.T, z.T.copy(), cp.empty((3, 4), np.float32))
    with pytest.raises(ShapeError, match="z must be 2-D"):
        kernels.bias_act_forward("relu", z.ravel(), None, z.ravel())
    with pytest.raises(DeviceError, match="saved is a numpy array"):
        kernels.act_backward("tanh", z, np.zeros((4, 3), np.float32), cp.empty_like(z))
    with pytest.raises(ConfigError, match=r"(dz and delta|delta and dz) share memory"):
        kernels.act_backward_colsum("tanh", z, z.copy(), z, cp.empty(3, np.float32))
    with pytest.raises(ConfigError, match="needs saved"):
        kernels.act_backward("gelu", z, None, cp.empty_like(z))
    with pytest.raises(ConfigError, match="unknown activation"):
        kernels.act_backward("swish", z, z.copy(), cp.empty_like(z))
    logits = cp.zeros((4, 3), np.float32)
    with pytest.raises(DTypeError, match="labels must be int64"):
        kernels.softmax_xent_labels(
            logits, cp.zeros(4, np.int32), cp.empty_like(logits), cp.empty(4, np.float32)
        )
    with pytest.raises(ShapeError, match="value must have one element"):
        kernels.mse_grad(z, z, cp.empty_like(z), cp.empty_like(z), scale=1.0, value=z)
    p = cp.zeros(5, np.float32)
    with pytest.raises(ConfigError, match="needs a momentum_buffer"):
        kernels.sgd_step(p, p.copy(), None, cp.ones(1, np.float32), cp.zeros(2, np.int32),
                         momentum=0.9)  # fmt: skip
    with pytest.raises(DTypeError, match="step_state must be int32"):
        kernels.sgd_step(p, p.copy(), None, cp.ones(1, np.float32), cp.zeros(2, np.int64))
    with pytest.raises(ShapeError, match="lr must have one element"):
        kernels.sgd_step(p, p.copy(), None, cp.ones(2, np.float32), cp.zeros(2, np.int32))
    with pytest.raises(DTypeError, match="lr is float64 but params is float32"):
        kernels.sgd_step(p, p.copy(), None, cp.ones(1, np.float64), cp.zeros(2, np.int32))
    with pytest.raises(ShapeError, match="scalars must have shape"):
        kernels.adam_step(p, p.copy(), p.copy(), p.copy(), cp.zeros(2, np.float32),
                          betas=(0.9, 0.999), eps=1e-8)  # fmt: skip


@gpu
def test_arrays_on_two_devices_raise(cp: Any) -> None:
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    with cp.cuda.Device(0):
        z = cp.zeros((4, 3), np.float32)
    with cp.cuda.Device(1):
        out = cp.zeros((4, 3), np.float32)
    with pytest.raises(DeviceError, match=r"out is on cuda:1 but z is on cuda:0"):
        kernels.bias_act_forward("relu", z, None, out)
