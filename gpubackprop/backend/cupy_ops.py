"""The engine's ops on the GPU.

:class:`CupyOps` inherits every op from the NumPy reference
(:class:`~gpubackprop.backend.numpy_ops.NumpyOps`), run with CuPy as the array
module: matmuls go to cuBLAS through ``cupy.matmul``, elementwise work to CuPy
ufuncs, column sums to CuPy's deterministic reduction. Fused CUDA kernels from
``kernels/`` override single ops here; the math stays the reference's.
"""

from __future__ import annotations

from types import ModuleType

from .numpy_ops import NumpyOps


class CupyOps(NumpyOps):
    """The reference ops over CuPy arrays (one instance per process)."""

    def __init__(self, cupy: ModuleType) -> None:
        self.xp = cupy


__all__ = ["CupyOps"]
