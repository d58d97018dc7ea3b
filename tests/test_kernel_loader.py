"""Tests of the kernel loader (gpubackprop.kernels) and the CUDA sources, no GPU needed.

* Without nvcc: the loader finds the sources, every activation of the Python table
  has a functor with the same ``needs_input``, the name expressions cover every
  kernel, every wrapper launches with the kernel's C++ signature (stand-in device
  arrays), the argument checks that need no GPU raise the package's errors, and
  ``import gpubackprop`` never imports the kernels.
* With nvcc on PATH: ``kernels/check.sh`` passes (with this interpreter) and fails
  when the loader does not import; the kernels that claim NumPy's bits compile,
  with the loader's NVRTC options plus CuPy's ``-ftz=true``, to PTX without a
  single flush-to-zero instruction.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpubackprop import kernels, kernels_norm, kernels_recurrent
from gpubackprop.activations import ACTIVATIONS
from gpubackprop.errors import ConfigError, DeviceError, DTypeError, ShapeError

from .kernel_helpers import ACT_NAMES, DTYPE_IDS, DTYPES, NVCC, needs_nvcc


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
    # a numpy.dtype (what the wrappers pass) names the C type: float64 == 'float' in NumPy
    assert kernels.kernel_name("column_sum", np.dtype(np.float64)) == "gbp::column_sum<double>"
    assert kernels.kernel_name("column_sum", np.dtype(np.float32)) == "gbp::column_sum<float>"
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
        elif ctype in ("unsigned char*", "unsigned long long*"):
            want = np.uint8 if ctype == "unsigned char*" else np.uint64
            assert isinstance(arg, _FakeDeviceArray) and arg.dtype == want, what
        elif ctype == "T":
            assert type(arg) is dtype.type, what
        else:
            scalar = {
                "int": np.int32, "long long": np.int64, "double": np.float64,
                "unsigned long long": np.uint64,
            }[ctype]
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
    vec = _dev(rows, dt)
    kernels_norm.layer_norm_forward(z, _dev(cols, dt), _dev(cols, dt), m, vec, _dev(rows, dt), 1e-5)
    for dx in (m, None):
        kernels_norm.layer_norm_backward(
            z, _dev((rows, cols), dt), _dev(cols, dt), vec, _dev(rows, dt), dx, _dev(cols, dt),
            _dev(cols, dt),
        )
    mask, rng_state = _dev((rows, cols), np.uint8), _dev(3, np.uint64)
    kernels_norm.dropout_forward(z, m, mask, rng_state, threshold=2**31, scale=2.0)
    kernels_norm.dropout_backward(z, mask, m, scale=2.0)
    b, h = 33, 65  # the recurrent cells: (rows, H) states, (rows, G·H) gates
    g4, g3, s = _dev((b, 4 * h), dt), _dev((b, 3 * h), dt), [_dev((b, h), dt) for _ in range(5)]
    kernels_recurrent.lstm_cell_forward(g4, _dev((b, 4 * h), dt), *s[:4])
    kernels_recurrent.lstm_cell_backward(g4, *s, _dev((b, 4 * h), dt))
    kernels_recurrent.gru_cell_forward(g3, _dev((b, 3 * h), dt), _dev(3 * h, dt), *s[:3])
    kernels_recurrent.gru_cell_backward(g3, *s, _dev((b, 3 * h), dt), _dev((b, 3 * h), dt))
    params = _kernel_parameters()
    assert set(params) == set(kernels.KERNELS)
    launched = set()
    for name, grid, block, args in fake_device:
        kernel = name.split("<")[0].removeprefix("gbp::")
        launched.add(kernel)
        assert name.startswith(f"gbp::{kernel}<{kernels.CTYPES[dt]}"), name  # array.dtype in
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


# --- with nvcc: check.sh and the PTX --------------------------------------------------------
def _check_script() -> Path:
    script = kernels.kernel_dir() / "check.sh"
    if not script.is_file():  # a packaged copy may ship the sources only
        script = kernels.REPO_KERNEL_DIR / "check.sh"
    if not script.is_file():
        pytest.skip("kernels/check.sh is not installed here")
    return script


def _run_check(python: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run(
        ["bash", str(_check_script())], capture_output=True, text=True, timeout=600, env=env
    )


@needs_nvcc
def test_check_sh_compiles_every_kernel() -> None:
    """kernels/check.sh with this interpreter: every family with every name expression
    of the loader's table, for sm_80 and sm_90 (about 10 s on 2 cores)."""
    done = _run_check(sys.executable)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout
    assert done.stdout.count("ok    ") == 2 * len(kernels.FAMILIES)


@needs_nvcc
def test_check_sh_fails_when_the_loader_does_not_import(tmp_path: Path) -> None:
    """Nothing checked is a failure, not a pass with a skipped part."""
    no_python = tmp_path / "python"
    no_python.write_text("#!/bin/sh\necho 'No module named numpy' >&2\nexit 1\n")
    no_python.chmod(0o755)
    done = _run_check(str(no_python))
    assert done.returncode != 0
    assert "FAILED" in done.stderr and "does not import" in done.stderr
    assert "passed" not in done.stdout


#: the float kernels that claim the NumPy reference's bits, subnormals included:
#: (kernel, activation); the bias add is the only arithmetic of the identity's forward
EXACT_FLOAT_KERNELS: list[tuple[str, str | None]] = [
    ("sgd_step", None),
    ("adam_prepare", None),
    ("adam_step", None),
    ("mse_grad", None),
    ("bias_act_forward", "identity"),
]
#: a float kernel that does flush (plain float sums): shows that -ftz=true took effect
FLUSHING_CONTROL = "sum_reduce"
_PTX_ENTRY = re.compile(r"^\.(?:visible|weak)\s+\.entry\s+(\w+)\(", re.MULTILINE)
_PTX_FUNCTION = re.compile(r"^(?:\.(?:visible|weak|extern)\s+)?\.(?:entry|func)\b", re.MULTILINE)


def _ptx_entries(ptx: str) -> dict[str, str]:
    """Mangled kernel name -> its PTX body (up to the next .entry or .func)."""
    starts = [m.start() for m in _PTX_FUNCTION.finditer(ptx)] + [len(ptx)]
    bodies = {}
    for match in _PTX_ENTRY.finditer(ptx):
        end = min(s for s in starts if s > match.start())
        bodies[match.group(1)] = ptx[match.start() : end]
    return bodies


@needs_nvcc
def test_exact_float_kernels_do_not_flush_subnormals(tmp_path: Path) -> None:
    """CuPy appends -ftz=true after the loader's NVRTC options: under it a float
    add, multiply, compare or conversion written plainly (or with __fadd_rn & co.)
    becomes an ``.ftz`` instruction that flushes subnormals, and NumPy's bits are
    lost. The kernels that claim those bits must compile to PTX without any."""
    assert NVCC is not None
    families: dict[str, list[str]] = {}
    for kernel, activation in [*EXACT_FLOAT_KERNELS, (FLUSHING_CONTROL, None)]:
        expression = kernels.kernel_name(kernel, np.float32, activation)
        families.setdefault(kernels.KERNELS[kernel][0], []).append(expression)
    found: dict[str, str] = {}
    for family, expressions in families.items():
        src, ptx = tmp_path / f"{family}.cu", tmp_path / f"{family}.ptx"
        src.write_text(kernels.instantiation_source(family, expressions))
        options = [*kernels.NVRTC_OPTIONS, "-ftz=true", "-arch=sm_90"]
        done = subprocess.run(
            [NVCC, *options, "-ptx", str(src), "-o", str(ptx)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        found.update(_ptx_entries(ptx.read_text()))
    assert len(found) == len(EXACT_FLOAT_KERNELS) + 1, sorted(found)

    def flushing(kernel: str) -> list[str]:
        (name,) = [n for n in found if f"{len(kernel)}{kernel}If" in n]
        return [line.strip() for line in found[name].splitlines() if ".ftz" in line]

    assert flushing(FLUSHING_CONTROL), f"{FLUSHING_CONTROL}<float>: no .ftz: was -ftz=true ignored?"
    for kernel, _ in EXACT_FLOAT_KERNELS:
        bad = flushing(kernel)
        assert not bad, f"{kernel}<float>: {len(bad)} .ftz instructions: {bad[:5]}"
