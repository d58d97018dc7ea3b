"""Arrays of either library: the shared ``Array`` type and the one place that imports CuPy.

``Array`` is how every module of gpubackprop annotates an array that may be a
NumPy or a CuPy ``ndarray`` (CuPy is optional, so it cannot be named in a type).

Nothing here imports CuPy at module import time: :func:`cupy_module` does it on
first use, so ``import gpubackprop`` never pulls CuPy in and a CPU-only machine
never pays for it.
"""

from __future__ import annotations

import functools
import sys
from types import ModuleType
from typing import Any

import numpy as np

#: A NumPy or CuPy ndarray (CuPy is optional, so the annotation stays open).
Array = Any


@functools.cache
def cupy_module() -> ModuleType | None:
    """Import and return ``cupy``, or ``None`` where it is not installed or broken."""
    try:
        import cupy
    except Exception:  # ImportError, or a CuPy build that fails against this CUDA
        return None
    return cupy


@functools.cache
def cupy_import_error() -> str | None:
    """Why CuPy could not be imported (``None`` when it imports fine)."""
    try:
        import cupy  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def gpu_count() -> int:
    """Number of CUDA devices CuPy sees (0 without CuPy, a driver or a GPU)."""
    cp = cupy_module()
    if cp is None:
        return 0
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def has_gpu() -> bool:
    """True where CuPy is installed and at least one CUDA device answers."""
    return gpu_count() > 0


def is_cupy_array(x: Any) -> bool:
    """True for a ``cupy.ndarray``; never imports CuPy to find out."""
    if "cupy" not in sys.modules:
        return False
    cp = sys.modules["cupy"]
    return isinstance(x, cp.ndarray)


def array_module(x: Any) -> ModuleType:
    """``cupy`` for a CuPy array, else ``numpy``."""
    if is_cupy_array(x):
        return sys.modules["cupy"]
    return np


def array_device(x: Any) -> str:
    """The device an array lives on, written as gpubackprop writes devices."""
    if is_cupy_array(x):
        return f"cuda:{x.device.id}"
    return "cpu"


def as_rows(a: Array) -> Array:
    """``a`` of shape (*lead, F) as a (prod(lead), F) matrix: ``a`` itself when 2-D, else
    a reshape view (no copy for a C-contiguous array)."""
    return a if a.ndim == 2 else a.reshape(-1, a.shape[-1])
