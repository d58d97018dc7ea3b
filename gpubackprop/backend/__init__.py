"""Device dispatch: ``get_backend("cpu" | "cuda" | "cuda:N" | "auto")``.

A :class:`Backend` owns the array module (NumPy or CuPy), the ops of the engine
(:class:`~.numpy_ops.NumpyOps` or :class:`~.cupy_ops.CupyOps`) and the device.
Arrays never cross devices behind the user's back: :meth:`Backend.check_array`
raises :class:`~gpubackprop.errors.DeviceError` for an array of another device,
and :meth:`Backend.asarray` is the one explicit copy onto the device.
:meth:`Backend.adopt` takes arrays of other libraries (PyTorch, JAX, ...) in
through DLPack, without a copy.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from .. import arrays
from ..arrays import Array, array_device, array_module, has_gpu, is_cupy_array
from ..errors import ConfigError, DeviceError, DTypeError
from . import cpu_blas, cpu_kernels
from .numpy_ops import NumpyOps

_DEVICE_RE = re.compile(r"^cuda(?::(\d+))?$")
#: DLPack device types (``DLDeviceType``): host memory, and CUDA device or managed memory
_DLPACK_CPU = 1
_DLPACK_CUDA = (2, 13)

#: the context of a CPU backend's :meth:`Backend.activate`: shared, it does nothing
NO_CONTEXT = contextlib.nullcontext()
#: float32 GEMM precisions a backend offers (see :meth:`Backend.with_precision`)
PRECISIONS = ("fp32", "tf32")


@dataclass(frozen=True)
class Backend:
    """Where a model's arrays live and the ops that run on them.

    Attributes:
        device: ``"cpu"`` or ``"cuda:N"``.
        xp: the array module, ``numpy`` or ``cupy``.
        ops: the engine's ops for that module.
        reason: why this device was chosen (for ``"auto"``, which one and why).
        precision: GEMM precision of ``ops`` for float32: ``"fp32"`` (IEEE) or
            ``"tf32"`` (TF32 tensor cores on a GPU; the CPU has no such mode and
            computes in IEEE float32 either way). See :meth:`with_precision`.
    """

    device: str
    xp: ModuleType
    ops: NumpyOps
    reason: str = field(default="", compare=False)
    precision: str = "fp32"
    #: True on a GPU (a field, not a property: the engine reads it at every step)
    is_gpu: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_gpu", self.device != "cpu")

    @property
    def device_id(self) -> int | None:
        return int(self.device.split(":")[1]) if self.is_gpu else None

    def activate(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which new arrays are made on this device (no-op on CPU)."""
        if not self.is_gpu:
            return NO_CONTEXT
        return self.xp.cuda.Device(self.device_id)

    def is_native(self, x: Any) -> bool:
        """True if ``x`` is an array of this backend's module on this device."""
        if self.is_gpu:
            return is_cupy_array(x) and x.device.id == self.device_id
        return isinstance(x, np.ndarray)

    def adopt(self, x: Any, what: str) -> Any:
        """``x`` as a NumPy or CuPy array when it comes from another library, by DLPack.

        NumPy and CuPy arrays (and anything without ``__dlpack__`` and
        ``__dlpack_device__``, such as a list) come back unchanged. An object that
        speaks DLPack (a PyTorch tensor, a JAX array, ...) becomes a view of the
        same memory, no copy: ``np.from_dlpack(x)`` for host memory,
        ``cupy.from_dlpack(x)`` for CUDA memory. Its device is then checked as any
        array's is (:meth:`check_array`), and its dtype kept: a conversion to the
        model's dtype, where one is needed, is the caller's (and is a copy).

        Raises DeviceError for memory of a kind this backend cannot read (a CUDA
        tensor where CuPy is not installed, another accelerator), naming the
        tensor's device and this one; DTypeError when DLPack refuses the tensor
        (a PyTorch tensor that requires grad: pass ``x.detach()``; bfloat16).
        ``what`` names the argument, e.g. ``"Sequential.forward: x"``.
        """
        if isinstance(x, np.ndarray) or is_cupy_array(x):
            return x
        if not (hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__")):
            return x
        kind, index = (int(v) for v in x.__dlpack_device__())
        xp = np if kind == _DLPACK_CPU else None
        if kind in _DLPACK_CUDA:
            xp = arrays.cupy_module()
            if xp is None:
                raise DeviceError(
                    f"{what} is a {type(x).__name__} on cuda:{index} but the model lives on "
                    f"{self.device} and CuPy is not installed to read CUDA memory; "
                    "copy it to the host first (for a PyTorch tensor: x.cpu())"
                )
        if xp is None:
            raise DeviceError(
                f"{what} is a {type(x).__name__} on DLPack device type {kind} (neither the "
                f"host nor CUDA) but the model lives on {self.device}"
            )
        try:
            return xp.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            hint = (
                "; pass x.detach() (DLPack cannot share a tensor that requires grad)"
                if getattr(x, "requires_grad", False) else ""
            )
            raise DTypeError(
                f"{what}: a {type(x).__name__} could not be read through DLPack "
                f"({type(exc).__name__}: {exc}){hint}"
            ) from exc

    def check_array(self, x: Any, what: str) -> None:
        """Raise DeviceError unless ``x`` is an array on this device.

        ``what`` names the argument and its owner, e.g. ``"Sequential.forward: x"``.
        """
        if self.is_native(x):
            return
        if is_cupy_array(x) or isinstance(x, np.ndarray):
            where = array_device(x)
            hint = (
                "copy it with model.to_device(x)"
                if self.is_gpu
                else "copy it to the host with cupy.asnumpy(x)"
            )
            raise DeviceError(
                f"{what} is an array on {where} but the model lives on {self.device}; "
                f"gpubackprop never copies between devices implicitly: {hint}"
            )
        raise DeviceError(
            f"{what} must be an array on {self.device}, got {type(x).__name__}"
        )

    def asarray(self, x: Any, dtype: Any = None) -> Array:
        """Copy ``x`` (NumPy array, list, array of this device, or an array of another
        library: see :meth:`adopt`) onto this device."""
        x = self.adopt(x, "array")
        with self.activate():
            if self.is_gpu and is_cupy_array(x) and x.device.id != self.device_id:
                raise DeviceError(
                    f"array is on {array_device(x)}, this backend is {self.device}; "
                    "copy between GPUs explicitly"
                )
            if not self.is_gpu and is_cupy_array(x):
                return np.asarray(x.get(), dtype=dtype)
            return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x: Array) -> np.ndarray:
        """A NumPy copy (or the array itself on the CPU)."""
        return x.get() if is_cupy_array(x) else np.asarray(x)

    def with_precision(self, precision: str) -> Backend:
        """This device with float32 GEMMs in ``precision`` (``"fp32"`` or ``"tf32"``).

        On a GPU, ``"tf32"`` gives ops whose cuBLAS handle runs float32 GEMMs on
        TF32 tensor cores (inputs rounded to a 10-bit mantissa, float32
        accumulation; about 1e-3 relative error); elementwise kernels are the same.
        On the CPU the precision is recorded and has no effect.
        """
        if precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}"
            )
        if precision == self.precision:
            return self
        if not self.is_gpu:
            return Backend(self.device, self.xp, self.ops, self.reason, precision)
        assert self.device_id is not None
        return _cuda_backend(self.device_id, self.reason, precision)

    def synchronize(self) -> None:
        """Wait for queued GPU work (no-op on CPU)."""
        if self.is_gpu:
            self.xp.cuda.Stream.null.synchronize()


@functools.cache
def cpu_gemm() -> cpu_blas.MklGemm | None:
    """The GEMM of the CPU ops, chosen once per process (:func:`.cpu_blas.select`: the
    ``GPUBACKPROP_CPU_BLAS`` variable); None is NumPy's matmul."""
    return cpu_blas.select()


@functools.cache
def cpu_cells() -> cpu_kernels.CompiledCells | None:
    """The LSTM / GRU cell of the CPU ops, chosen (and built, the first time on a machine)
    once per process (:func:`.cpu_kernels.select`: the ``GPUBACKPROP_CPU_KERNELS``
    variable); None is the NumPy passes."""
    return cpu_kernels.select()


@functools.cache
def _cpu_backend(reason: str) -> Backend:
    return Backend("cpu", np, NumpyOps(cpu_gemm(), cpu_cells()), reason)


def _cupy() -> ModuleType:
    cp = arrays.cupy_module()
    assert cp is not None  # a CUDA backend is made only once has_gpu() said yes
    return cp


@functools.cache
def _cupy_ops(device_id: int, precision: str = "fp32") -> NumpyOps:
    """One ops object (cuBLAS handle, scratch buffers) per GPU and GEMM precision,
    shared by its backends."""
    from .cupy_ops import CupyOps  # only with a GPU

    return CupyOps(_cupy(), device_id, precision)


@functools.cache
def _cuda_backend(device_id: int, reason: str, precision: str = "fp32") -> Backend:
    return Backend(
        f"cuda:{device_id}", _cupy(), _cupy_ops(device_id, precision), reason, precision
    )


def nvidia_gpu_visible() -> bool:
    """Whether the system shows an NVIDIA GPU at all, asked without CUDA or CuPy.

    Linux: a ``/dev/nvidiaN`` device node or a ``/proc/driver/nvidia/gpus`` entry, or
    ``/dev/dxg`` (WSL 2); elsewhere (Windows): ``nvidia-smi`` on the PATH, which the
    driver installs. macOS has no CUDA GPUs.
    """
    if sys.platform.startswith("linux"):
        return bool(
            glob.glob("/dev/nvidia[0-9]*")
            or glob.glob("/proc/driver/nvidia/gpus/*")
            or os.path.exists("/dev/dxg")
        )
    return sys.platform != "darwin" and shutil.which("nvidia-smi") is not None


def _why_no_gpu() -> str:
    """Why there is no CUDA device: first whether any NVIDIA GPU is visible, then CuPy."""
    err = arrays.cupy_import_error()
    if not nvidia_gpu_visible():
        cupy = " (CuPy is installed)" if err is None else f"; CuPy is not importable either: {err}"
        return f"no NVIDIA GPU is visible on this machine{cupy}"
    if err is not None:
        return f"CuPy is not importable ({err}); install gpubackprop[cuda12] or [cuda13]"
    return "CuPy is installed but sees no CUDA device"


#: the GPU ``"cuda"`` and ``"auto"`` mean (:func:`set_default_gpu`), and why
_DEFAULT_GPU: list[tuple[int, str]] = [(0, "")]


def set_default_gpu(index: int, why: str) -> None:
    """Make ``"cuda"`` and ``"auto"`` mean GPU ``index`` in this process from now on
    (``why`` goes into ``backend.reason``): how :func:`gpubackprop.distributed.init`
    gives each rank its own GPU, ``cuda:local_rank``. ``"cuda:N"`` is unchanged."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise DeviceError(f"set_default_gpu: index must be an int >= 0, got {index!r}")
    _DEFAULT_GPU[0] = (index, why)


def get_backend(device: str | Backend = "auto") -> Backend:
    """The backend for a device name.

    ``"cpu"``: NumPy. ``"cuda"`` / ``"cuda:N"``: CuPy on GPU N (0 by default, or the
    one :func:`set_default_gpu` chose); raises DeviceError if CuPy or the GPU is
    missing — there is no silent CPU fallback. ``"auto"``: that GPU when CuPy and a
    GPU are there, else the CPU; ``backend.reason`` says which was picked and why.
    """
    if isinstance(device, Backend):
        return device
    if not isinstance(device, str):
        raise DeviceError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}"
        )
    name = device.strip().lower()
    if name == "cpu":
        return _cpu_backend("asked for 'cpu'")
    default, why = _DEFAULT_GPU[0]
    if name == "auto":
        if has_gpu():
            count = arrays.gpu_count()
            if default >= count:
                raise DeviceError(
                    f"device 'auto' means cuda:{default} here ({why}) but only {count} "
                    f"GPU(s) are visible"
                )
            reason = why or "CuPy and a GPU are present"
            return _cuda_backend(default, f"auto picked cuda:{default} ({reason})")
        return _cpu_backend(f"auto picked cpu: {_why_no_gpu()}")
    match = _DEVICE_RE.match(name)
    if match is None:
        raise DeviceError(
            f"unknown device {device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'"
        )
    device_id = int(match.group(1) or default)
    if not has_gpu():
        raise DeviceError(f"device {device!r} was asked for but {_why_no_gpu()}")
    count = arrays.gpu_count()
    if device_id >= count:
        raise DeviceError(
            f"device {device!r} was asked for but only {count} GPU(s) are visible "
            f"(cuda:0 .. cuda:{count - 1})"
        )
    return _cuda_backend(device_id, f"asked for {device!r}")


def backend_of(x: Array) -> Backend:
    """The backend an existing array belongs to."""
    if is_cupy_array(x):
        return _cuda_backend(x.device.id, "from the array's device")
    return _cpu_backend("from the array's device")


def available_devices() -> list[str]:
    """Every device gpubackprop can use here: ``["cpu", "cuda:0", ...]``."""
    return ["cpu"] + [f"cuda:{i}" for i in range(arrays.gpu_count())]


__all__ = [
    "NO_CONTEXT",
    "PRECISIONS",
    "Backend",
    "array_device",
    "array_module",
    "available_devices",
    "backend_of",
    "cpu_cells",
    "cpu_gemm",
    "get_backend",
    "has_gpu",
    "is_cupy_array",
    "nvidia_gpu_visible",
    "set_default_gpu",
]
