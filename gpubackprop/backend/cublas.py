"""cuBLAS GEMMs on a handle of our own, callable inside a CUDA-graph capture.

CuPy refuses every cuBLAS call while its stream is capturing (it rebinds its
handle to the current stream before each call). This module opens the same
``libcublas`` CuPy loaded, through ctypes, creates a handle of its own, and
binds it to a stream *and a fixed workspace* before any capture begins, so the
GEMMs issued during capture are recorded into the graph (see GPU-NOTES.md).
The eager GPU path uses the same handle, so eager and captured steps issue the
very same cuBLAS calls and give the same bits.

Row-major C (M×N) = op(A) · op(B) is cuBLAS's column-major Cᵀ = op(B)ᵀ · op(A)ᵀ:
the operands are passed swapped, each with ``ld`` = its row length, and a
transpose is a flag, never a copy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import pointer
from types import ModuleType

import numpy as np

from ..arrays import Array
from ..errors import DTypeError, ShapeError

_OP_N, _OP_T = 0, 1
#: cublasMath_t for each precision: "fp32" is CUBLAS_DEFAULT_MATH (IEEE float32 GEMMs,
#: no TF32, as PyTorch and CuPy by default); "tf32" is CUBLAS_TF32_TENSOR_OP_MATH (float32
#: GEMMs on the tensor cores with 10-bit-mantissa inputs and float32 accumulation).
#: Double-precision GEMMs are the same in both modes.
MATH_MODES = {"fp32": 0, "tf32": 3}
_WORKSPACE_BYTES = 32 * 1024 * 1024  # what cuBLAS asks for on Hopper


def _find_libcublas(cp: ModuleType) -> ctypes.CDLL:
    """The libcublas CuPy itself loaded (same process, same library)."""
    cp.cuda.device.get_cublas_handle()  # makes CuPy load libcublas now
    candidates: list[str] = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if "/" in line else ""
                name = os.path.basename(path)
                if name.startswith("libcublas.so") and path not in candidates:
                    candidates.append(path)
    except OSError:
        pass
    found = ctypes.util.find_library("cublas")
    candidates += [c for c in (found, "libcublas.so.13", "libcublas.so.12") if c]
    errors = []
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            lib.cublasSgemm_v2  # noqa: B018 - probe the symbol
            return lib
        except (OSError, AttributeError) as exc:
            errors.append(f"{candidate}: {exc}")
    raise OSError("could not open libcublas through ctypes: " + "; ".join(errors or ["none"]))


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"cuBLAS {call} failed with status {status}")


class CublasHandle:
    """A cuBLAS handle with its own workspace, for one GPU.

    :meth:`gemm` runs on CuPy's current stream; :meth:`bind` (re)binds the
    handle to that stream and to the fixed workspace, and must run outside a
    capture (the capture code calls it before ``begin_capture``). ``precision``
    (``"fp32"`` or ``"tf32"``) sets the handle's math mode (:data:`MATH_MODES`).
    """

    def __init__(self, cp: ModuleType, precision: str = "fp32") -> None:
        if precision not in MATH_MODES:
            raise ValueError(f"precision must be one of {sorted(MATH_MODES)}, got {precision!r}")
        self.cp = cp
        self.precision = precision
        self.lib = _find_libcublas(cp)
        i, p, sz = ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
        pf, pd = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_double)
        # (transb, transa, n, m, k, alpha, B, ldb, A, lda, beta, C, ldc) after the handle
        signatures = {
            "cublasCreate_v2": [ctypes.POINTER(p)],
            "cublasSetStream_v2": [p, p],
            "cublasSetWorkspace_v2": [p, p, sz],
            "cublasSetMathMode": [p, i],
            "cublasGetMathMode": [p, ctypes.POINTER(i)],
            "cublasSgemm_v2": [p, i, i, i, i, i, pf, p, i, p, i, pf, p, i],
            "cublasDgemm_v2": [p, i, i, i, i, i, pd, p, i, p, i, pd, p, i],
        }
        for name, argtypes in signatures.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = argtypes, i
        handle = ctypes.c_void_p()
        _check(self.lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        self.handle = handle
        _check(self.lib.cublasSetMathMode(handle, MATH_MODES[precision]), "cublasSetMathMode")
        self.workspace = cp.empty(_WORKSPACE_BYTES, dtype=cp.uint8)
        self._stream_ptr: int | None = None
        # dtype -> (alpha = 1, beta = 0, the GEMM), the scalars passed by pointer
        f32, f64 = ctypes.c_float, ctypes.c_double
        self._scalars = {
            np.dtype(np.float32): (pointer(f32(1.0)), pointer(f32(0.0)), self.lib.cublasSgemm_v2),
            np.dtype(np.float64): (pointer(f64(1.0)), pointer(f64(0.0)), self.lib.cublasDgemm_v2),
        }

    @property
    def math_mode(self) -> int:
        """The handle's cublasMath_t as cuBLAS reports it (0 default, 3 TF32)."""
        mode = ctypes.c_int()
        _check(self.lib.cublasGetMathMode(self.handle, ctypes.byref(mode)), "cublasGetMathMode")
        return int(mode.value)

    def bind(self) -> None:
        """Bind to CuPy's current stream and the fixed workspace (never during capture)."""
        stream = self.cp.cuda.get_current_stream().ptr
        _check(self.lib.cublasSetStream_v2(self.handle, stream), "cublasSetStream")
        # SetStream resets the workspace to cuBLAS's own pool: set ours again.
        _check(
            self.lib.cublasSetWorkspace_v2(self.handle, self.workspace.data.ptr, _WORKSPACE_BYTES),
            "cublasSetWorkspace",
        )
        self._stream_ptr = stream

    def gemm(
        self, a: Array, b: Array, out: Array, *, trans_a: bool = False, trans_b: bool = False
    ) -> Array:
        """out = op(a) · op(b) for C-contiguous 2-D float32/float64 arrays."""
        dtype = out.dtype
        if dtype not in self._scalars or a.dtype != dtype or b.dtype != dtype:
            raise DTypeError(
                f"gemm: operands must share float32/float64, got {a.dtype}, {b.dtype}, {dtype}"
            )
        for name, arr in (("a", a), ("b", b), ("out", out)):
            if arr.ndim != 2 or not arr.flags.c_contiguous:
                raise ShapeError(f"gemm: {name} must be a C-contiguous matrix, got {arr.shape}")
        m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
        k2, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if k != k2 or out.shape != (m, n):
            raise ShapeError(
                f"gemm: op(a) is {m}x{k}, op(b) is {k2}x{n}, out is {tuple(out.shape)}"
            )
        if self.cp.cuda.get_current_stream().ptr != self._stream_ptr:
            self.bind()
        one, zero, fn = self._scalars[dtype]
        if m == 0 or n == 0:  # nothing to write; cuBLAS would reject ld = 0
            return out
        if k == 0:
            out.fill(0)
            return out
        ops = (_OP_T if trans_b else _OP_N, _OP_T if trans_a else _OP_N)
        swapped = (b.data.ptr, b.shape[1], a.data.ptr, a.shape[1])  # each with ld = its row
        _check(fn(self.handle, *ops, n, m, k, one, *swapped, zero, out.data.ptr, n), "gemm")
        return out


__all__ = ["MATH_MODES", "CublasHandle"]
