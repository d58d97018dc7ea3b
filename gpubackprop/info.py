"""``python -m gpubackprop info``: what a bug report needs in one screen.

Versions (and why CuPy does not import, if it does not), whether the system shows
an NVIDIA GPU at all, the CUDA runtime, driver and GPUs, the devices gpubackprop can
use, which one ``device="auto"`` picks and why, which GEMM the CPU ops use (NumPy's
or MKL's, :mod:`gpubackprop.backend.cpu_blas`), which LSTM / GRU cell (compiled or
NumPy passes, :mod:`gpubackprop.backend.cpu_kernels`), and what data-parallel training
(:mod:`gpubackprop.distributed`) will find: mpi4py, mpiexec, NCCL.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, TextIO

import numpy as np

from . import arrays
from .backend import (
    available_devices,
    cpu_blas,
    cpu_cells,
    cpu_gemm,
    cpu_kernels,
    get_backend,
    nvidia_gpu_visible,
)
from .distributed.transport import MPI_MISSING, find_mpiexec, nccl_problem
from .errors import ConfigError
from .version import __version__


def format_cuda_version(code: int) -> str:
    """CUDA's integer version (``12040``) as ``"12.4"``: major = code // 1000,
    minor = (code mod 1000) // 10."""
    return f"{code // 1000}.{code % 1000 // 10}"


def _cuda_rows(cp: ModuleType) -> list[tuple[str, str]]:
    """CUDA runtime, driver and one row per GPU; a failing query reports its error."""
    runtime = cp.cuda.runtime
    rows: list[tuple[str, str]] = []
    for label, query in (
        ("CUDA runtime", runtime.runtimeGetVersion),
        ("CUDA driver", runtime.driverGetVersion),
    ):
        try:
            rows.append((label, format_cuda_version(int(query()))))
        except Exception as exc:  # no driver, or a runtime that does not match it
            rows.append((label, f"unavailable ({type(exc).__name__}: {exc})"))
    count = arrays.gpu_count()
    if count == 0:
        rows.append(("GPUs", "none visible to CuPy"))
    for i in range(count):
        props = runtime.getDeviceProperties(i)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        memory = props["totalGlobalMem"] / 2**30
        rows.append((f"GPU cuda:{i}", f"{name} ({memory:.1f} GiB)"))
    return rows


def _distributed_rows(with_cupy: bool) -> list[tuple[str, str]]:
    """mpi4py's version, where ``mpiexec`` is, and (with CuPy) whether NCCL works: what
    :func:`gpubackprop.distributed.init` will find. MPI itself is not initialised."""
    try:
        import mpi4py

        mpi = str(mpi4py.__version__)
    except ImportError:
        mpi = f"not installed ({MPI_MISSING})"
    rows = [("mpi4py", mpi), ("mpiexec", find_mpiexec() or "not found")]
    if with_cupy:
        rows.append(("NCCL", nccl_problem(1) or "available"))
    return rows


def _cpu_fast_path_row(describe: Callable[[Any], str], choose: Callable[[], Any]) -> str:
    """One CPU fast path's row (the GEMM, the cell): its choice described, or why it
    cannot be made."""
    try:
        return describe(choose())
    except ConfigError as exc:
        return f"unavailable ({exc})"


def collect_info() -> list[tuple[str, str]]:
    """The report as ``(label, value)`` rows, in print order."""
    import scipy

    rows = [
        ("gpubackprop", __version__),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("NumPy", np.__version__),
        ("SciPy", scipy.__version__),
        ("CPU GEMM", _cpu_fast_path_row(cpu_blas.describe, cpu_gemm)),
        ("CPU cell", _cpu_fast_path_row(cpu_kernels.describe, cpu_cells)),
    ]
    seen = "yes" if nvidia_gpu_visible() else "none visible on this machine"
    rows.append(("NVIDIA GPU", seen))
    cp = arrays.cupy_module()
    if cp is None:
        rows.append(("CuPy", f"not importable ({arrays.cupy_import_error()})"))
    else:
        rows.append(("CuPy", cp.__version__))
        rows += _cuda_rows(cp)
    rows += _distributed_rows(cp is not None)
    backend = get_backend("auto")
    rows += [
        ("devices", ", ".join(available_devices())),
        ("auto device", f"{backend.device} ({backend.reason})"),
    ]
    return rows


def print_info(file: TextIO | None = None) -> None:
    """Print :func:`collect_info` as aligned ``label: value`` lines."""
    rows = collect_info()
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        print(f"{label + ':':<{width}} {value}", file=file)


__all__ = ["collect_info", "format_cuda_version", "print_info"]
