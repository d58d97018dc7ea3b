"""The CPU GEMM: NumPy's ``matmul`` (the OpenBLAS NumPy ships) or Intel MKL's ``cblas_?gemm``.

The CPU ops (:class:`gpubackprop.backend.numpy_ops.NumpyOps`) compute every
out = op(A)·op(B) with ``numpy.matmul`` unless a faster GEMM is selected here. MKL
is the one on offer: PyTorch's CPU build uses it. On the LSTM language model of
``bench/cpu_step.py`` (2 threads, a Xeon with AVX-512) the GEMMs were 180-204 ms of a
256-282 ms step through NumPy's OpenBLAS and 142-167 ms of 211-251 ms through MKL
(bench/README.md). MKL comes from the ``mkl`` wheel (``pip install "gpubackprop[mkl]"``;
the extra is for Linux x86-64, the one platform tested), loaded with ctypes: its
``mkl_rt`` runtime and the documented CBLAS entry points, no compiled code of ours.

Which GEMM: the environment variable ``GPUBACKPROP_CPU_BLAS``, read when the CPU
backend is first made:

- ``auto`` (default): MKL when the ``mkl`` package is installed, else NumPy;
- ``mkl``: MKL, or a :class:`~gpubackprop.errors.ConfigError` saying how to install it;
- ``numpy``: NumPy's ``matmul``.

The MKL path takes 2-D float32/float64 operands whose rows or columns are contiguous
(a transposed view is a transpose flag, not a copy) and an output with contiguous
rows; anything else (a batch of matrices, other dtypes, overlapping or unaligned
arrays, a zero-sized dimension, sizes past 32-bit ints) goes to ``numpy.matmul``, which
computes the same product. The two round differently (another summation order): the
products agree to rounding, not bit for bit.

Threads: MKL uses its own OpenMP threads (``MKL_NUM_THREADS``, or threadpoolctl,
which sees it as a BLAS library; one per core by default).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .choice import read_choice

#: the environment variable that picks the CPU GEMM
ENV = "GPUBACKPROP_CPU_BLAS"
#: its accepted values
CHOICES = ("auto", "numpy", "mkl")

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_INT_MAX = 2**31 - 1


def find_mkl_runtime() -> Path | None:
    """The ``mkl_rt`` library of an installed ``mkl`` package, or None."""
    try:
        files = importlib.metadata.files("mkl") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        name = Path(str(entry)).name
        if name.startswith(("libmkl_rt.so", "mkl_rt")) and not name.endswith(".lib"):
            path = Path(str(entry.locate())).resolve()
            if path.exists():
                return path
    return None


def _operand(a: np.ndarray) -> tuple[int, int] | None:
    """(CBLAS transpose flag, leading dimension) of a 2-D operand seen as row-major,
    or None when neither its rows nor its columns are contiguous."""
    item = a.itemsize
    rows, cols = a.shape
    s0, s1 = a.strides
    if s1 == item and s0 % item == 0 and s0 >= cols * item:
        return _NO_TRANS, max(s0 // item, 1)
    if s0 == item and s1 % item == 0 and s1 >= rows * item:
        return _TRANS, max(s1 // item, 1)
    if a.flags.c_contiguous:  # a size-1 dimension may carry any stride
        return _NO_TRANS, max(cols, 1)
    if a.flags.f_contiguous:
        return _TRANS, max(rows, 1)
    return None


class MklGemm:
    """out = a·b through MKL's ``cblas_sgemm`` / ``cblas_dgemm`` (row-major, β = 0).

    Args:
        library: the path of MKL's ``mkl_rt`` runtime (:func:`find_mkl_runtime`).
    """

    def __init__(self, library: Path) -> None:
        self.library = library
        self._lib = ctypes.CDLL(str(library))
        size = ctypes.c_int
        pointer = ctypes.c_void_p
        for symbol, scalar in (("cblas_sgemm", ctypes.c_float), ("cblas_dgemm", ctypes.c_double)):
            fn = getattr(self._lib, symbol)
            fn.restype = None
            fn.argtypes = [size, size, size, size, size, size, scalar, pointer, size,
                           pointer, size, scalar, pointer, size]
        self._gemm = {np.dtype(np.float32): self._lib.cblas_sgemm,
                      np.dtype(np.float64): self._lib.cblas_dgemm}

    @property
    def version(self) -> str:
        """MKL's version string, e.g. ``Intel(R) oneAPI Math Kernel Library Version 2026.2``."""
        buffer = ctypes.create_string_buffer(256)
        self._lib.MKL_Get_Version_String(buffer, len(buffer))
        return buffer.value.decode(errors="replace").strip()

    def __call__(self, a: Any, b: Any, out: Any) -> bool:
        """out = a·b when MKL can take these arrays (see the module docstring); returns
        whether it did (False: nothing was written, use ``numpy.matmul``)."""
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                and isinstance(out, np.ndarray)):
            return False
        gemm = self._gemm.get(out.dtype)
        if (gemm is None or a.dtype != out.dtype or b.dtype != out.dtype
                or a.ndim != 2 or b.ndim != 2 or out.ndim != 2):
            return False
        m, k = a.shape
        n = b.shape[1]
        if (b.shape[0] != k or out.shape != (m, n) or min(m, n, k) == 0
                or max(m, n, k) > _INT_MAX or not out.flags.writeable):
            return False
        if not (a.flags.aligned and b.flags.aligned and out.flags.aligned):
            return False
        item = out.itemsize
        if out.strides[1] != item or (m > 1 and out.strides[0] < n * item):
            return False
        ldc = out.strides[0] // item if m > 1 else n
        layout_a, layout_b = _operand(a), _operand(b)
        if layout_a is None or layout_b is None or max(layout_a[1], layout_b[1], ldc) > _INT_MAX:
            return False
        if np.may_share_memory(out, a) or np.may_share_memory(out, b):
            return False
        gemm(_ROW_MAJOR, layout_a[0], layout_b[0], m, n, k, 1.0, a.ctypes.data, layout_a[1],
             b.ctypes.data, layout_b[1], 0.0, out.ctypes.data, ldc)
        return True


def select(choice: str | None = None) -> MklGemm | None:
    """The CPU GEMM for ``choice`` (None: the ``GPUBACKPROP_CPU_BLAS`` variable, default
    ``auto``): an :class:`MklGemm`, or None for ``numpy.matmul``."""
    choice, source = read_choice(ENV, CHOICES, choice)
    if choice == "numpy":
        return None
    library = find_mkl_runtime()
    if library is None:
        if choice == "mkl":
            raise ConfigError(
                f"{source}=mkl but the mkl package is not installed: "
                'pip install "gpubackprop[mkl]" (Linux x86-64), or set it to numpy'
            )
        return None
    try:
        return MklGemm(library)
    except (OSError, AttributeError) as exc:
        if choice == "mkl":
            raise ConfigError(f"{source}=mkl but {library} does not load: {exc}") from exc
        raise ConfigError(
            f"the mkl package is installed but {library} does not load ({exc}); "
            f"set {ENV}=numpy to use NumPy's BLAS"
        ) from exc


def describe(gemm: MklGemm | None) -> str:
    """One line for ``python -m gpubackprop info``: which GEMM the CPU ops use."""
    if gemm is None:
        return f"numpy.matmul (NumPy's BLAS; {ENV}={os.environ.get(ENV, 'auto')})"
    return f"{gemm.version} via the mkl package ({ENV}={os.environ.get(ENV, 'auto')})"


__all__ = ["CHOICES", "ENV", "MklGemm", "describe", "find_mkl_runtime", "select"]
