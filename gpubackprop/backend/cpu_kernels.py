"""The CPU's fused LSTM / GRU cell: ``kernels/cpu_recurrent.cpp``, built with the host
C++ compiler at first use and loaded with ctypes.

The pointwise part of one recurrent step is 10-17 NumPy passes over (B, H) views in
the reference (:meth:`~gpubackprop.backend.numpy_ops.NumpyOps.lstm_cell_forward` and
its three siblings). The compiled cell does the same math in ONE pass: the per-element
functions of ``kernels/recurrent_math.cuh``, the very code each thread of the CUDA
kernels runs, in a SIMD loop along each row (glibc's libmvec gives the vector exp and
tanh). On the LSTM language model of ``bench/cpu_step.py`` (B64, H512, float32, a
Xeon with AVX-512) a forward step's cell went from 240 to 100 µs and a backward
step's from 270 to 90 µs (bench/README.md).

It is built the way NVRTC builds the CUDA kernels on a GPU: from the sources shipped
with the package, once per machine and source version, into a cache folder
(``GPUBACKPROP_CACHE_DIR``, default ``$XDG_CACHE_HOME/gpubackprop`` or
``~/.cache/gpubackprop``), with::

    c++ -std=c++17 -O3 -march=native -fopenmp-simd -fno-math-errno -fPIC -shared ...

The compiler is ``$CXX`` when set, else the first of ``c++``, ``g++``, ``clang++`` on
the PATH. It needs Linux on x86-64 with glibc 2.35 or newer (libmvec's vector tanh):
the one platform tested.

Which cell: the environment variable ``GPUBACKPROP_CPU_KERNELS``, read when the CPU
backend is first made:

- ``auto`` (default): the compiled cell when this platform and a compiler allow it, else
  the NumPy passes (``python -m gpubackprop info`` says which, and why);
- ``compiled``: the compiled cell, or a :class:`~gpubackprop.errors.ConfigError` saying
  why not;
- ``numpy``: the NumPy passes.

A build that fails where the platform and a compiler are there (the compiler's error, an
unwritable cache folder) raises a :class:`~gpubackprop.errors.ConfigError` with the
compiler's output under ``compiled``; under ``auto`` the same message comes as a
``RuntimeWarning`` and the CPU uses the NumPy passes (``info`` shows the failure): the
cell is a speed path, and a model should still train without it.

The compiled cell takes float32/float64 arrays of one dtype, C-contiguous, with the
reference's shapes, outputs writeable and apart from every other argument (``gates``
is updated in place, as in the reference); anything else goes to the NumPy passes. The
two agree to rounding, not bit for bit (libmvec's exp and tanh against NumPy's, and
fused multiply-adds).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .choice import read_choice

#: the environment variable that picks the CPU cell
ENV = "GPUBACKPROP_CPU_KERNELS"
#: its accepted values
CHOICES = ("auto", "numpy", "compiled")
#: the environment variable of the build cache folder
CACHE_ENV = "GPUBACKPROP_CACHE_DIR"
#: the C++ source, in the kernel folder (:func:`gpubackprop.kernels.kernel_dir`)
SOURCE = "cpu_recurrent.cpp"
#: the compiler's flags (the library's file name hashes them with the sources)
COMPILE_FLAGS = (
    "-std=c++17", "-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fPIC",
    "-shared",
)
#: libraries linked: libmvec has the vector exp and tanh
LINK_LIBRARIES = ("-lmvec", "-lm")
#: the oldest glibc whose libmvec has tanh and tanhf
MIN_GLIBC = (2, 35)
#: compiler commands tried, in order, when ``CXX`` is not set
COMPILERS = ("c++", "g++", "clang++")
#: the first line of each failed build of this process under ``auto`` (info shows the last)
BUILD_FAILURES: list[str] = []

_INT64 = ctypes.c_int64
_POINTER = ctypes.c_void_p
_SUFFIX: dict[np.dtype[Any], str] = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
# (C name, number of array arguments) of each op
_OPS = {
    "lstm_cell_forward": 6, "lstm_cell_backward": 7, "gru_cell_forward": 6,
    "gru_cell_backward": 8,
}


def platform_problem() -> str | None:
    """Why this platform cannot run the compiled cell, or None when it can."""
    system, machine = platform.system(), platform.machine().lower()
    if system != "Linux" or machine not in ("x86_64", "amd64"):
        return f"the compiled cell is built for Linux x86-64 only (this is {system} {machine})"
    libc, version = platform.libc_ver()
    try:
        numbers = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        numbers = ()
    if libc != "glibc" or numbers < MIN_GLIBC:
        found = f"{libc} {version}".strip() or "no glibc"
        need = ".".join(str(v) for v in MIN_GLIBC)
        return f"the compiled cell needs glibc >= {need} (libmvec's vector tanh); found {found}"
    return None


def find_compiler() -> list[str] | None:
    """The C++ compiler command: ``$CXX`` (split like a shell word list) when set, else
    the first of :data:`COMPILERS` on the PATH; None when there is none."""
    configured = os.environ.get("CXX", "").strip()
    if configured:
        return shlex.split(configured)
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return [path]
    return None


def cache_dir() -> Path:
    """Where built libraries are kept: ``$GPUBACKPROP_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/gpubackprop``, else ``~/.cache/gpubackprop``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gpubackprop"


def _cpu_flags() -> str:
    """The CPU's feature flags (part of the build key: -march=native follows the CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def build_key(compiler: Sequence[str], source_dir: Path) -> str:
    """The hash naming a build: the sources (:data:`SOURCE` and every ``.cuh`` of the
    kernel folder), the compiler's version output, the flags and the CPU's features."""
    digest = hashlib.sha256()
    for path in [*sorted(source_dir.glob("*.cuh")), source_dir / SOURCE]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    try:
        version = subprocess.run(
            [*compiler, "--version"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"the C++ compiler {shlex.join(compiler)} does not run: {exc}") from exc
    for part in (version, *COMPILE_FLAGS, *LINK_LIBRARIES, _cpu_flags()):
        digest.update(part.encode())
    return digest.hexdigest()[:20]


def build(compiler: Sequence[str], source_dir: Path | None = None,
          cache: Path | None = None) -> Path:
    """The compiled cell library for this machine: from the cache when it is there, else
    compiled into it (written to a temporary name, then renamed: two processes building at
    once both end with a whole file). Raises :class:`ConfigError` with the compiler's
    output when the build fails."""
    if source_dir is None:
        from ..kernels import kernel_dir  # here: a plain import loads no kernel module

        source_dir = kernel_dir()
    cache = cache_dir() if cache is None else cache
    if not (source_dir / SOURCE).is_file():
        raise ConfigError(f"{SOURCE} is missing from {source_dir}: reinstall gpubackprop, or "
                          f"set {ENV}=numpy")
    target = cache / f"cpu_cells-{build_key(compiler, source_dir)}.so"
    if target.is_file():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=cache)
    except OSError as exc:
        raise ConfigError(
            f"the compiled CPU cell cannot be built into {cache} ({exc}); set {CACHE_ENV} to "
            f"a writable folder, or {ENV}=numpy"
        ) from exc
    os.close(handle)
    command = [*compiler, *COMPILE_FLAGS, "-I", str(source_dir), str(source_dir / SOURCE),
               "-o", temporary, *LINK_LIBRARIES]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise ConfigError(
                f"building the compiled CPU cell failed ({shlex.join(command)}, exit "
                f"{done.returncode}):\n{(done.stderr or done.stdout).strip()}\n"
                f"Set {ENV}=numpy to use the NumPy passes."
            )
        os.replace(temporary, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"building the compiled CPU cell failed: {exc}") from exc
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def _span(a: np.ndarray) -> tuple[int, int]:
    """[first byte, past the last byte) of a C-contiguous array."""
    start: int = a.ctypes.data
    return start, start + a.nbytes


class CompiledCells:
    """The compiled cell's four ops; each returns whether it ran (False: nothing was
    written, use the NumPy passes). The math and the arguments are the reference's
    (:class:`~gpubackprop.backend.numpy_ops.NumpyOps`).

    Args:
        library: the built library (:func:`build`).
    """

    def __init__(self, library: Path) -> None:
        self.library = library
        lib = ctypes.CDLL(str(library))
        self._functions: dict[tuple[str, np.dtype[Any]], Any] = {}
        for op, count in _OPS.items():
            for dtype, suffix in _SUFFIX.items():
                function = getattr(lib, f"gbp_{op}_{suffix}")
                function.restype = None
                function.argtypes = [_POINTER] * count + [_INT64, _INT64]
                self._functions[(op, dtype)] = function

    def _call(self, op: str, arrays: Sequence[Any], outputs: Sequence[int],
              shapes: Sequence[tuple[int, ...]], rows: int, hidden: int) -> bool:
        """Run ``op`` when every array is a C-contiguous NumPy array of one float dtype
        with its shape, the outputs (indices) writeable and apart from the others."""
        dtype = getattr(arrays[0], "dtype", None)
        function = self._functions.get((op, dtype)) if isinstance(dtype, np.dtype) else None
        if function is None:
            return False
        for a, shape in zip(arrays, shapes, strict=True):
            if (not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape
                    or not a.flags.c_contiguous or not a.flags.aligned):
                return False
        if rows * hidden == 0:
            return False
        spans = [_span(a) for a in arrays]
        for k in outputs:
            if not arrays[k].flags.writeable:
                return False
            start, stop = spans[k]
            for m, (other_start, other_stop) in enumerate(spans):
                if m != k and start < other_stop and other_start < stop:
                    return False
        function(*(span[0] for span in spans), rows, hidden)
        return True

    def lstm_cell_forward(self, gates: Any, hh: Any, c_prev: Any, c: Any, h: Any,
                          tanh_c: Any) -> bool:
        """``NumpyOps.lstm_cell_forward`` (:mod:`gpubackprop.backend.numpy_ops`) in one pass."""
        rows, hidden = c_prev.shape if _is2d(c_prev) else (0, 0)
        g, s = (rows, 4 * hidden), (rows, hidden)
        return self._call("lstm_cell_forward", (gates, hh, c_prev, c, h, tanh_c),
                          (0, 3, 4, 5), (g, g, s, s, s, s), rows, hidden)

    def lstm_cell_backward(self, gates: Any, c_prev: Any, tanh_c: Any, dh_out: Any,
                           dh_next: Any, dc: Any, dgates: Any) -> bool:
        """``NumpyOps.lstm_cell_backward`` (:mod:`gpubackprop.backend.numpy_ops`) in one pass."""
        rows, hidden = dc.shape if _is2d(dc) else (0, 0)
        g, s = (rows, 4 * hidden), (rows, hidden)
        return self._call("lstm_cell_backward", (gates, c_prev, tanh_c, dh_out, dh_next, dc,
                                                 dgates),
                          (5, 6), (g, s, s, s, s, s, g), rows, hidden)

    def gru_cell_forward(self, gates: Any, hh: Any, bias_hh: Any, h_prev: Any, h: Any,
                         hn: Any) -> bool:
        """``NumpyOps.gru_cell_forward`` (:mod:`gpubackprop.backend.numpy_ops`) in one pass."""
        rows, hidden = h_prev.shape if _is2d(h_prev) else (0, 0)
        g, s = (rows, 3 * hidden), (rows, hidden)
        return self._call("gru_cell_forward", (gates, hh, bias_hh, h_prev, h, hn),
                          (0, 4, 5), (g, g, (3 * hidden,), s, s, s), rows, hidden)

    def gru_cell_backward(self, gates: Any, hn: Any, h_prev: Any, dh_out: Any, dh_rec: Any,
                          dh_carry: Any, dgx: Any, dgh: Any) -> bool:
        """``NumpyOps.gru_cell_backward`` (:mod:`gpubackprop.backend.numpy_ops`) in one pass."""
        rows, hidden = h_prev.shape if _is2d(h_prev) else (0, 0)
        g, s = (rows, 3 * hidden), (rows, hidden)
        return self._call("gru_cell_backward", (gates, hn, h_prev, dh_out, dh_rec, dh_carry,
                                                dgx, dgh),
                          (5, 6, 7), (g, s, s, s, s, s, g, g), rows, hidden)


def _is2d(a: Any) -> bool:
    return isinstance(a, np.ndarray) and a.ndim == 2


def select(choice: str | None = None) -> CompiledCells | None:
    """The CPU cell for ``choice`` (None: the ``GPUBACKPROP_CPU_KERNELS`` variable, default
    ``auto``): :class:`CompiledCells`, or None for the NumPy passes. Builds the library on
    first use (about a second; cached afterwards)."""
    choice, source = read_choice(ENV, CHOICES, choice)
    if choice == "numpy":
        return None
    problem = unavailable_reason()
    if problem is not None:
        if choice == "compiled":
            raise ConfigError(f"{source}=compiled but {problem}; set it to numpy")
        return None
    compiler = find_compiler()
    assert compiler is not None  # unavailable_reason checked
    try:
        return _load(build(compiler))
    except ConfigError as exc:
        if choice == "compiled":
            raise
        BUILD_FAILURES.append(str(exc).splitlines()[0])
        warnings.warn(f"{exc}\nThe CPU uses the NumPy passes of the LSTM/GRU cell "
                      f"({ENV}=numpy: no build tried).", RuntimeWarning, stacklevel=2)
        return None


def _load(library: Path) -> CompiledCells:
    try:
        return CompiledCells(library)
    except (OSError, AttributeError) as exc:
        raise ConfigError(
            f"the compiled CPU cell {library} does not load ({exc}); delete it to rebuild, "
            f"or set {ENV}=numpy"
        ) from exc


def unavailable_reason() -> str | None:
    """Why ``auto`` would use the NumPy passes here (the platform, no compiler), or None."""
    problem = platform_problem()
    if problem is None and find_compiler() is None:
        problem = (f"no C++ compiler was found (set CXX, or install one of "
                   f"{', '.join(COMPILERS)})")
    return problem


def describe(cells: CompiledCells | None) -> str:
    """One line for ``python -m gpubackprop info``: which LSTM / GRU cell the CPU ops use."""
    setting = os.environ.get(ENV, "auto")
    if cells is not None:
        return f"compiled LSTM/GRU cell ({cells.library.name}; {ENV}={setting})"
    reason = None
    if setting.strip().lower() != "numpy":
        reason = unavailable_reason() or (f"the build failed: {BUILD_FAILURES[-1]}"
                                          if BUILD_FAILURES else None)
    return f"NumPy passes of the LSTM/GRU cell ({ENV}={setting}{'; ' + reason if reason else ''})"


__all__ = [
    "BUILD_FAILURES",
    "CACHE_ENV",
    "CHOICES",
    "COMPILERS",
    "COMPILE_FLAGS",
    "ENV",
    "LINK_LIBRARIES",
    "MIN_GLIBC",
    "SOURCE",
    "CompiledCells",
    "build",
    "build_key",
    "cache_dir",
    "describe",
    "find_compiler",
    "platform_problem",
    "select",
    "unavailable_reason",
]
