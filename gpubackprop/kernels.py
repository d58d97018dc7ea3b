"""The fused CUDA kernels: sources, compilation, argument checks and launches.

The CUDA C++ sources live in ``kernels/`` (one templated ``.cu`` file per family,
the activation functors in ``activations.cuh``). This module reads them once per
process, inlines their ``#include "..."`` headers (so CuPy's on-disk cache sees
every byte that was compiled), and builds one :class:`cupy.RawModule` per family
and dtype through NVRTC, with every template instantiation named in
``name_expressions``. Kernels are cached by (kernel, dtype, activation).

Each wrapper checks every argument *before* launching: a cupy array (else
:class:`DeviceError` for a NumPy array, :class:`DTypeError` for anything else),
all on one device (:class:`DeviceError`), float32 or float64 and all the same
(:class:`DTypeError`), the expected shape and C-contiguous (:class:`ShapeError`),
and no output overlapping another buffer unless that alias is documented
(:class:`ConfigError`). Messages name the kernel and the argument. Launches go to
the current CuPy stream of the arrays' device, so they can be captured into a
CUDA graph; no wrapper synchronises or reads device memory back, and none
allocates unless a workspace is left for it to allocate (see :func:`sum_reduce`).

The math is the NumPy reference's (:mod:`gpubackprop.backend.numpy_ops`,
:mod:`gpubackprop.activations`, :mod:`gpubackprop.optim`); the tests compare them.

Source lookup: ``gpubackprop/_kernels/`` first (a copy packaged into wheels), then
``kernels/`` next to the package (a checkout or an editable install).

Only the GPU backend imports this module, and only its launch functions import
CuPy (lazily), so the source and name helpers work without CuPy (the CPU tests
and ``kernels/check.sh`` use them).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .activations import ActivationSpec, get_activation
from .arrays import Array, cupy_import_error, cupy_module, is_cupy_array
from .errors import ConfigError, DeviceError, DTypeError, ShapeError

__all__ = [
    "CTYPES",
    "FAMILIES",
    "KERNELS",
    "LaunchArgs",
    "act_backward",
    "act_backward_colsum",
    "activation_types",
    "adam_prepare",
    "adam_step",
    "adam_update",
    "bce_logits",
    "bias_act_forward",
    "column_sum",
    "column_sum_lanes",
    "get_kernel",
    "instantiation_source",
    "kernel_dir",
    "kernel_name",
    "matrix_argument",
    "mse_grad",
    "name_expressions",
    "sgd_step",
    "softmax_xent_labels",
    "softmax_xent_probs",
    "source",
    "sum_reduce",
    "sum_reduce_workspace_size",
    "write_instantiation_sources",
]

#: where the sources are looked for, in this order
PACKAGED_KERNEL_DIR = Path(__file__).resolve().parent / "_kernels"
REPO_KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernels"

#: family -> source file
FAMILIES: dict[str, str] = {
    "dense": "dense.cu", "losses": "losses.cu", "optim": "optim.cu",
    "norm": "norm.cu", "dropout": "dropout.cu", "recurrent": "recurrent.cu",
}
#: NumPy dtype -> C++ element type
CTYPES: dict[np.dtype, str] = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
#: kernel -> (family, templated over the activation functor)
KERNELS: dict[str, tuple[str, bool]] = {
    "bias_act_forward": ("dense", True),
    "act_backward": ("dense", True),
    "act_backward_colsum": ("dense", True),
    "column_sum": ("dense", False),
    "softmax_xent_labels": ("losses", False),
    "softmax_xent_probs": ("losses", False),
    "mse_grad": ("losses", False),
    "bce_logits": ("losses", False),
    "sum_reduce": ("losses", False),
    "sgd_step": ("optim", False),
    "adam_prepare": ("optim", False),
    "adam_step": ("optim", False),
    # launched by gpubackprop.kernels_norm
    "layer_norm_forward": ("norm", False),
    "layer_norm_backward": ("norm", False),
    "dropout_forward": ("dropout", False),
    "dropout_backward": ("dropout", False),
    # launched by gpubackprop.kernels_recurrent
    "lstm_cell_forward": ("recurrent", False),
    "lstm_cell_backward": ("recurrent", False),
    "gru_cell_forward": ("recurrent", False),
    "gru_cell_backward": ("recurrent", False),
}
NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++17",)

_ACTIVATIONS_HEADER = "activations.cuh"
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)
_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once[ \t]*$", re.MULTILINE)
_ACT_LIST = re.compile(r"#define\s+GBP_FOR_EACH_ACTIVATION\(X\)((?:[^\n]*\\\n)*[^\n]*)")
_ACT_ENTRY = re.compile(r"X\(\s*(\w+)\s*,\s*(\w+)\s*\)")

_INT32_MAX = 2**31 - 1
_BLOCK = 256  # threads per block of the elementwise kernels
_BLOCKS_PER_SM = 8  # grid cap of the grid-stride kernels, per multiprocessor
_WARPS = _BLOCK // 32  # softmax: rows per block (one warp per row)
_STRIP_COLS = 32  # column reductions: columns per block (blockDim.x)
_MAX_ROW_LANES = 32  # column reductions: largest blockDim.y
_ROWS_PER_LANE = 16  # column reductions: rows per thread before K doubles
_SUM_BLOCK = 512  # sum_reduce: threads per block
_SUM_SINGLE_PASS_MAX = 1 << 16  # sum_reduce: one block up to this many elements
_SUM_MAX_PARTIALS = 1024  # sum_reduce: most blocks (partials) of the first pass
_SUM_PER_THREAD = 16  # sum_reduce: elements per thread the first pass aims at
_ADAM_SCALARS = 3  # adam_prepare writes -step_size, sqrt(1 - beta2^t), 1 - lr*wd


# --- sources ---------------------------------------------------------------------------
def kernel_dirs() -> tuple[Path, ...]:
    """The folders searched for the sources: the packaged copy, then the repository's."""
    return (PACKAGED_KERNEL_DIR, REPO_KERNEL_DIR)


def kernel_dir() -> Path:
    """The first folder of :func:`kernel_dirs` that holds every family and the header.

    Raises FileNotFoundError naming the folders tried.
    """
    wanted = (*FAMILIES.values(), _ACTIVATIONS_HEADER)
    for folder in kernel_dirs():
        if all((folder / name).is_file() for name in wanted):
            return folder
    tried = ", ".join(str(d) for d in kernel_dirs())
    raise FileNotFoundError(
        f"gpubackprop: the CUDA kernel sources ({', '.join(wanted)}) were not found; "
        f"tried {tried}. Reinstall gpubackprop (the wheel ships them in gpubackprop/_kernels)."
    )


def _inline(path: Path, seen: set[Path]) -> str:
    """``path``'s text with each ``#include "x"`` replaced by x's text (each file once)."""
    seen.add(path)

    def replace(match: re.Match[str]) -> str:
        target = (path.parent / match.group(1)).resolve()
        if target in seen:
            return f"// (already included: {match.group(1)})"
        if not target.is_file():
            raise FileNotFoundError(f"gpubackprop: {path.name} includes {target}, not found")
        body = _PRAGMA_ONCE.sub("", _inline(target, seen))
        return f"// ---- begin {match.group(1)} ----\n{body}\n// ---- end {match.group(1)} ----"

    return _INCLUDE.sub(replace, path.read_text(encoding="utf-8"))


@functools.cache
def source(family: str) -> str:
    """The complete source of one family, headers inlined, as NVRTC compiles it."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown kernel family {family!r}; expected one of {list(FAMILIES)}")
    return _inline((kernel_dir() / FAMILIES[family]).resolve(), set())


@functools.cache
def activation_types() -> dict[str, str]:
    """Python activation name -> C++ functor type, read from ``GBP_FOR_EACH_ACTIVATION``."""
    text = (kernel_dir() / _ACTIVATIONS_HEADER).read_text(encoding="utf-8")
    block = _ACT_LIST.search(text)
    if block is None:
        raise FileNotFoundError(
            f"gpubackprop: {_ACTIVATIONS_HEADER} has no GBP_FOR_EACH_ACTIVATION(X) list"
        )
    return dict(_ACT_ENTRY.findall(block.group(1)))


def _ctype(dtype: Any) -> str:
    """'float' / 'double' for float32 / float64 (or those C names themselves).

    The C names are matched as strings only: ``numpy.dtype('float64') == 'float'``
    is true (NumPy reads 'float' as float64), so a dtype must go through CTYPES.
    """
    if isinstance(dtype, str) and dtype in CTYPES.values():
        return dtype
    try:
        key = np.dtype(dtype)
    except TypeError as exc:
        raise DTypeError(f"kernels: dtype must be float32 or float64, got {dtype!r}") from exc
    if key not in CTYPES:
        raise DTypeError(f"kernels: dtype must be float32 or float64, got {key}")
    return CTYPES[key]


def _functor(activation: str | ActivationSpec | None) -> str:
    """The C++ functor type of an activation (name, table entry, or None = identity)."""
    act = activation if isinstance(activation, ActivationSpec) else get_activation(activation)
    types = activation_types()
    if act.name not in types:
        raise ConfigError(
            f"kernels: activation {act.name!r} has no CUDA functor in {_ACTIVATIONS_HEADER}"
        )
    return types[act.name]


def kernel_name(kernel: str, dtype: Any, activation: str | ActivationSpec | None = None) -> str:
    """The C++ name expression of one instantiation, e.g.
    ``gbp::act_backward<float, gbp::act::Sigmoid>`` or ``gbp::column_sum<double>``
    (NVRTC matches this string exactly)."""
    if kernel not in KERNELS:
        raise ConfigError(f"unknown kernel {kernel!r}; expected one of {list(KERNELS)}")
    if KERNELS[kernel][1]:
        return f"gbp::{kernel}<{_ctype(dtype)}, gbp::act::{_functor(activation)}>"
    return f"gbp::{kernel}<{_ctype(dtype)}>"


def name_expressions(family: str, dtype: Any) -> tuple[str, ...]:
    """Every instantiation of one family for one dtype (each activation for the
    activation-templated kernels)."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown kernel family {family!r}; expected one of {list(FAMILIES)}")
    return tuple(
        kernel_name(kernel, dtype, act)
        for kernel, (fam, per_activation) in KERNELS.items()
        if fam == family
        for act in (activation_types() if per_activation else [None])
    )


def instantiation_source(family: str, expressions: Iterable[str] | None = None) -> str:
    """:func:`source` plus the address of each name expression, for ``nvcc -c``.

    ``expressions``: by default every :func:`name_expressions` of the family for
    every dtype of :data:`CTYPES`. Taking an address instantiates the template as
    NVRTC's name expressions do, so ``kernels/check.sh``, which compiles this, fails
    on a typo in the sources and on a name expression that does not match a kernel:
    the loader's table is the one list of instantiations that NVRTC and nvcc both get.
    """
    if expressions is None:
        expressions = [e for ctype in CTYPES.values() for e in name_expressions(family, ctype)]
    refs = ",\n".join(f"    (void*)&{expr}" for expr in expressions)
    return (
        f"{source(family)}\n\n"
        f"// name expressions of gpubackprop.kernels ({family})\n"
        f"[[maybe_unused]] static void* const gbp_name_expressions[] = {{\n{refs}\n}};\n"
    )


def write_instantiation_sources(folder: str | Path) -> list[Path]:
    """Write :func:`instantiation_source` of every family into ``folder``
    (``<family>.cu``) and return the paths (used by ``kernels/check.sh``)."""
    paths = [Path(folder) / f"{family}.cu" for family in FAMILIES]
    for path in paths:
        path.write_text(instantiation_source(path.stem), encoding="utf-8")
    return paths


# --- compilation (needs CuPy) ------------------------------------------------------
def _cupy() -> ModuleType:
    cp = cupy_module()
    if cp is None:
        raise DeviceError(
            f"gpubackprop.kernels needs CuPy and a CUDA GPU; cupy import failed: "
            f"{cupy_import_error()}"
        )
    return cp


@functools.cache
def _module(family: str, ctype: str) -> Any:
    """One RawModule per family and dtype (compiled lazily, cached on disk by CuPy)."""
    return _cupy().RawModule(
        code=source(family), options=NVRTC_OPTIONS, name_expressions=name_expressions(family, ctype)
    )


@functools.cache
def _function(family: str, ctype: str, expression: str) -> Any:
    return _module(family, ctype).get_function(expression)


def get_kernel(kernel: str, dtype: Any, activation: str | ActivationSpec | None = None) -> Any:
    """The compiled :class:`cupy.RawKernel` of one instantiation (cached per process)."""
    expression = kernel_name(kernel, dtype, activation)  # validates all three
    return _function(KERNELS[kernel][0], _ctype(dtype), expression)


@functools.cache
def _sm_count(device_id: int) -> int:
    return int(_cupy().cuda.Device(device_id).attributes["MultiProcessorCount"])


def column_sum_lanes(rows: int) -> int:
    """blockDim.y (K) of the column reductions: a power of two <= 32 with about
    16 rows per thread. A function of ``rows`` only, so the summation order (and the
    bits) depend on the shape alone."""
    lanes = 1
    while lanes < _MAX_ROW_LANES and lanes * _ROWS_PER_LANE < rows:
        lanes *= 2
    return lanes


def sum_reduce_workspace_size(n: int) -> int:
    """Partials the two-pass :func:`sum_reduce` of n elements needs (0: one pass).
    A function of n only, so the summation order is fixed by the size."""
    if n <= _SUM_SINGLE_PASS_MAX:
        return 0
    return min(_SUM_MAX_PARTIALS, -(-n // (_SUM_BLOCK * _SUM_PER_THREAD)))


# --- argument checks -------------------------------------------------------------------
class _Args:
    """Checks the arguments of one launch and remembers device, dtype and buffers."""

    def __init__(self, kernel: str) -> None:
        self.kernel = kernel
        self.device_id: int | None = None
        self.device_arg = ""
        self.dtype: np.dtype | None = None
        self.dtype_arg = ""
        # (name, first byte, end byte, shape, is output)
        self.buffers: list[tuple[str, int, int, tuple[int, ...], bool]] = []

    def array(
        self,
        name: str,
        x: Any,
        *,
        shape: tuple[int, ...] | None = None,
        ndim: int | None = None,
        dtype: Any = None,
        output: bool = False,
    ) -> Array:
        """Check one array argument. ``dtype=None``: float32/float64, shared by every
        such argument; else exactly ``dtype``."""
        who = f"kernels.{self.kernel}"
        if not is_cupy_array(x):
            if isinstance(x, np.ndarray):
                raise DeviceError(
                    f"{who}: {name} is a numpy array (on cpu); the kernel needs a cupy array "
                    f"on the GPU (copy it with cupy.asarray first)"
                )
            raise DTypeError(f"{who}: {name} must be a cupy.ndarray, got {type(x).__name__}")
        device_id = int(x.device.id)
        if self.device_id is None:
            self.device_id, self.device_arg = device_id, name
        elif device_id != self.device_id:
            raise DeviceError(
                f"{who}: {name} is on cuda:{device_id} but {self.device_arg} is on "
                f"cuda:{self.device_id}; all arguments must be on one device"
            )
        if dtype is None:
            if x.dtype not in CTYPES:
                raise DTypeError(f"{who}: {name} must be float32 or float64, got {x.dtype}")
            if self.dtype is None:
                self.dtype, self.dtype_arg = x.dtype, name
            elif x.dtype != self.dtype:
                raise DTypeError(
                    f"{who}: {name} is {x.dtype} but {self.dtype_arg} is {self.dtype}; "
                    f"the float arguments must share one dtype"
                )
        elif x.dtype != np.dtype(dtype):
            raise DTypeError(f"{who}: {name} must be {np.dtype(dtype)}, got {x.dtype}")
        if ndim is not None and x.ndim != ndim:
            raise ShapeError(f"{who}: {name} must be {ndim}-D, got shape {x.shape}")
        if shape is not None and tuple(x.shape) != tuple(shape):
            raise ShapeError(f"{who}: {name} must have shape {tuple(shape)}, got {x.shape}")
        if not x.flags.c_contiguous:
            raise ShapeError(
                f"{who}: {name} must be C-contiguous, got strides {x.strides} for shape "
                f"{x.shape} (pass a contiguous copy, e.g. cupy.ascontiguousarray)"
            )
        if x.size:
            start = int(x.data.ptr)
            self.buffers.append((name, start, start + int(x.nbytes), tuple(x.shape), output))
        return x

    def optional(self, name: str, x: Any, **kwargs: Any) -> Array | None:
        """As :meth:`array`, but None passes (a null pointer for the kernel)."""
        return None if x is None else self.array(name, x, **kwargs)

    def no_overlap(self, *allowed: tuple[str, str]) -> None:
        """No output may share memory with another argument, except the ``allowed``
        pairs, and those only as the very same buffer (same start, same shape)."""
        ok = {frozenset(pair) for pair in allowed}
        for i, (name, start, end, shape, output) in enumerate(self.buffers):
            for other, o_start, o_end, o_shape, o_output in self.buffers[i + 1 :]:
                if not (output or o_output) or start >= o_end or o_start >= end:
                    continue
                same_only = frozenset((name, other)) in ok
                if same_only and start == o_start and shape == o_shape:
                    continue
                hint = " (they may only be the very same array)" if same_only else ""
                raise ConfigError(
                    f"kernels.{self.kernel}: {name} and {other} share memory; "
                    f"an output must not overlap another argument{hint}"
                )

    def scalar(self, value: float) -> np.generic:
        """A float scalar as the kernel's element type T."""
        assert self.dtype is not None
        return self.dtype.type(value)

    def scalars(self, *values: float) -> tuple[np.generic, ...]:
        """:meth:`scalar` of each value."""
        return tuple(self.scalar(v) for v in values)

    def launch(self, kernel: Any, grid: int, block: tuple[int, ...], args: tuple[Any, ...]) -> None:
        """Launch on the current stream of the arguments' device."""
        cp = _cupy()
        if cp.cuda.runtime.getDevice() == self.device_id:
            kernel((grid,), block, args)
        else:
            with cp.cuda.Device(self.device_id):
                kernel((grid,), block, args)

    def grid_stride(
        self,
        kernel: Any,
        items: int,
        args: tuple[Any, ...],
        *,
        per_block: int = _BLOCK,
        per_sm: int = _BLOCKS_PER_SM,
        block: tuple[int, ...] = (_BLOCK,),
    ) -> None:
        """Launch a grid-stride loop over ``items`` (one launch, even for 0 items):
        enough blocks of ``per_block`` items to cover them, capped at ``per_sm`` blocks
        per multiprocessor (the loop covers the rest)."""
        assert self.device_id is not None
        grid = max(1, min(-(-items // per_block), _sm_count(self.device_id) * per_sm))
        self.launch(kernel, grid, block, args)

    def columns(self, kernel: Any, rows: int, cols: int, args: tuple[Any, ...]) -> None:
        """Launch a column reduction: blocks of (32, K) threads, one per strip of 32
        columns at a time (K = :func:`column_sum_lanes`); nothing for 0 columns."""
        if cols:
            strips = -(-cols // _STRIP_COLS)
            block = (_STRIP_COLS, column_sum_lanes(rows))
            self.grid_stride(kernel, strips, args, per_block=1, per_sm=32, block=block)


#: the argument checker and launcher of every wrapper, public for the launcher modules
#: beside this one (gpubackprop.kernels_norm, gpubackprop.kernels_recurrent)
LaunchArgs = _Args


def _matrix(args: _Args, name: str, x: Any, **kwargs: Any) -> tuple[Array, int, int]:
    """A 2-D (rows, cols) float array and its two sizes, each within int32."""
    x = args.array(name, x, ndim=2, **kwargs)
    for axis, size in enumerate(x.shape):
        if size > _INT32_MAX:
            raise ShapeError(
                f"kernels.{args.kernel}: {name}.shape[{axis}] = {size} exceeds the int32 "
                f"limit {_INT32_MAX}"
            )
    return x, int(x.shape[0]), int(x.shape[1])


#: a checked (rows, cols) argument and its sizes, for the launcher modules beside this one
matrix_argument = _matrix


def _one(args: _Args, name: str, x: Any, *, output: bool = False) -> Array:
    """A one-element float array (a loss value, a sum, a learning rate)."""
    x = args.array(name, x, output=output)
    if x.size != 1:
        raise ShapeError(
            f"kernels.{args.kernel}: {name} must have one element, got shape {x.shape}"
        )
    return x


def _workspace(args: _Args, workspace: Any, n: int) -> Array | None:
    """An optional 1-D output for the partials of :func:`sum_reduce` over n inputs."""
    if workspace is None:
        return None
    workspace = args.array("workspace", workspace, ndim=1, output=True)
    partials = sum_reduce_workspace_size(n)
    if workspace.size < partials:
        raise ShapeError(
            f"kernels.{args.kernel}: workspace must hold at least {partials} elements "
            f"for {n} inputs, got {workspace.size}"
        )
    return workspace


# --- dense -------------------------------------------------------------------------------
def bias_act_forward(
    activation: str | ActivationSpec | None, z: Array, bias: Array | None, out: Array
) -> Array:
    """z[i, j] += b[j] (skipped when ``bias`` is None), then out[i, j] = f(z[i, j]).

    ``z``: (rows, cols); ``bias``: (cols,) or None; ``out``: (rows, cols), which may
    be ``z`` itself (then only f(z) is kept: right for activations whose derivative
    comes from the output, ``needs_input`` false). Returns ``out``.
    """
    args = _Args("bias_act_forward")
    z, rows, cols = _matrix(args, "z", z, output=True)
    bias = args.optional("bias", bias, shape=(cols,))
    out = args.array("out", out, shape=(rows, cols), output=True)
    args.no_overlap(("z", "out"))
    kernel = get_kernel("bias_act_forward", z.dtype, activation)
    if rows * cols:
        args.grid_stride(kernel, rows * cols, (z, bias, out, np.int32(rows), np.int32(cols)))
    return out


def _saved(
    args: _Args, activation: str | ActivationSpec | None, saved: Any, **kw: Any
) -> tuple[ActivationSpec, Array | None]:
    """The activation's table entry and ``saved`` (a or z) checked: None only for the identity."""
    act = activation if isinstance(activation, ActivationSpec) else get_activation(activation)
    if saved is None and not act.is_identity:
        raise ConfigError(f"kernels.{args.kernel}: {act.name} needs saved (a or z), got None")
    return act, args.optional("saved", saved, **kw)


def act_backward(
    activation: str | ActivationSpec | None, delta: Array, saved: Array | None, dz: Array
) -> Array:
    """dz = delta ⊙ f′(saved), elementwise over arrays of any shape.

    ``saved`` is the layer output a (``needs_input`` false) or the pre-activation z
    (``needs_input`` true); it may be None for the identity. ``dz`` must not overlap
    ``delta`` or ``saved`` (as in the reference). Returns ``dz``.
    """
    args = _Args("act_backward")
    delta = args.array("delta", delta)
    act, saved = _saved(args, activation, saved, shape=delta.shape)
    dz = args.array("dz", dz, shape=delta.shape, output=True)
    args.no_overlap()
    kernel = get_kernel("act_backward", delta.dtype, act)
    if delta.size:
        args.grid_stride(kernel, int(delta.size), (delta, saved, dz, np.int64(delta.size)))
    return dz


def act_backward_colsum(
    activation: str | ActivationSpec | None,
    delta: Array,
    saved: Array | None,
    dz: Array | None,
    db: Array,
) -> Array:
    """dz = delta ⊙ f′(saved) and db[j] = Σ_i dz[i, j], in one deterministic kernel.

    ``delta``: (rows, cols); ``saved``: like delta (None allowed for the identity);
    ``dz``: like delta, or None to get only db (for the identity db is the column
    sum of delta); ``db``: (cols,). Same inputs give the same bits on every run
    (fixed summation order, no atomics; see :func:`column_sum_lanes`). Returns ``db``.
    """
    args = _Args("act_backward_colsum")
    delta, rows, cols = _matrix(args, "delta", delta)
    act, saved = _saved(args, activation, saved, shape=(rows, cols))
    dz = args.optional("dz", dz, shape=(rows, cols), output=True)
    db = args.array("db", db, shape=(cols,), output=True)
    args.no_overlap()
    kernel = get_kernel("act_backward_colsum", delta.dtype, act)
    args.columns(kernel, rows, cols, (delta, saved, dz, db, np.int32(rows), np.int32(cols)))
    return db


def column_sum(x: Array, out: Array) -> Array:
    """out[j] = Σ_i x[i, j] (the bias gradient db = Δᵀ·1), deterministic.

    ``x``: (rows, cols); ``out``: (cols,). Returns ``out``.
    """
    args = _Args("column_sum")
    x, rows, cols = _matrix(args, "x", x)
    out = args.array("out", out, shape=(cols,), output=True)
    args.no_overlap()
    kernel = get_kernel("column_sum", x.dtype)
    args.columns(kernel, rows, cols, (x, out, np.int32(rows), np.int32(cols)))
    return out


# --- reductions and losses ----------------------------------------------------------------
def sum_reduce(
    x: Array, out: Array, *, scale: float = 1.0, workspace: Array | None = None
) -> Array:
    """out = scale · Σ x, in a fixed order (the bits depend on x.size only).

    ``x``: any shape, C-contiguous; ``out``: one element. Up to 65536 elements one
    block adds everything; beyond, a first launch writes
    :func:`sum_reduce_workspace_size` partials into ``workspace`` (1-D, at least that
    long, same dtype) and a second adds them. Without ``workspace`` the partials are
    allocated here, which is not allowed inside a CUDA-graph capture: pass one there.
    Returns ``out``.
    """
    args = _Args("sum_reduce")
    x = args.array("x", x)
    out = _one(args, "out", out, output=True)
    workspace = _workspace(args, workspace, int(x.size))
    args.no_overlap()
    _sum_launch(args, x, out, scale, workspace)
    return out


def _sum_launch(args: _Args, x: Array, out: Array, scale: float, workspace: Array | None) -> None:
    """out = scale · Σ x in one launch, or two through the partials in ``workspace``."""
    n = int(x.size)
    partials = sum_reduce_workspace_size(n)
    kernel = get_kernel("sum_reduce", x.dtype)
    if partials == 0:
        args.launch(kernel, 1, (_SUM_BLOCK,), (x, out, np.int64(n), args.scalar(scale)))
        return
    if workspace is None:
        with _cupy().cuda.Device(args.device_id):
            workspace = _cupy().empty((partials,), dtype=x.dtype)
    args.launch(kernel, partials, (_SUM_BLOCK,), (x, workspace, np.int64(n), args.scalar(1.0)))
    last = (workspace, out, np.int64(partials), args.scalar(scale))
    args.launch(kernel, 1, (_SUM_BLOCK,), last)


def _loss(
    args: _Args,
    kernel_args: tuple[Any, ...],
    items: int,
    terms: tuple[str, Array | None],
    value: Any,
    workspace: Any,
    scale: float,
    *,
    per_block: int = _BLOCK,
    per_sm: int = _BLOCKS_PER_SM,
) -> Array | None:
    """The common end of the loss wrappers: check ``value`` and ``workspace``, launch
    the kernel over ``items`` (rows or elements), then value = scale · Σ terms
    (``terms``: name and array of the per-row or per-element losses) when a value is
    asked for. Returns value."""
    name, per_term = terms
    value = None if value is None else _one(args, "value", value, output=True)
    if value is not None and per_term is None:
        raise ConfigError(f"kernels.{args.kernel}: a value needs {name}, got None")
    workspace = _workspace(args, workspace, items)
    args.no_overlap()
    if items:
        kernel = get_kernel(args.kernel, kernel_args[0].dtype)
        args.grid_stride(kernel, items, kernel_args, per_block=per_block, per_sm=per_sm)
    if value is None or per_term is None:
        return None
    _sum_launch(args, per_term, value, scale, workspace)
    return value


def softmax_xent_labels(
    logits: Array,
    labels: Array,
    grad: Array,
    row_loss: Array,
    value: Array | None = None,
    *,
    workspace: Array | None = None,
) -> Array | None:
    """Softmax cross-entropy from logits with integer labels y ∈ [0, C).

    row_loss[b] = logsumexp(z_b) − z_b[y_b];  grad = (softmax(z) − onehot(y)) / B;
    value (optional, one element) = Σ_b row_loss[b] / B.

    ``logits``, ``grad``: (B, C), C >= 1; ``labels``: int64 (B,); ``row_loss``: (B,).
    Labels are not range-checked here (that would read them back to the host): a
    label outside [0, C) gives a NaN row_loss (so a NaN value) and a zero gradient
    row; ``Sequential.read_loss`` checks the labels when it reads a NaN value.
    Returns value (None when not asked for).
    """
    return _softmax_xent("softmax_xent_labels", logits, labels, grad, row_loss, value, workspace)


def softmax_xent_probs(
    logits: Array,
    probs: Array,
    grad: Array,
    row_loss: Array,
    value: Array | None = None,
    *,
    workspace: Array | None = None,
) -> Array | None:
    """Softmax cross-entropy from logits against target distributions t.

    row_loss[b] = Σ_c t_bc (logsumexp(z_b) − z_bc);  grad = (softmax(z) Σ_c t_bc − t) / B;
    value (optional, one element) = Σ_b row_loss[b] / B.

    ``logits``, ``probs``, ``grad``: (B, C), C >= 1; ``row_loss``: (B,). Returns value
    (None when not asked for).
    """
    return _softmax_xent("softmax_xent_probs", logits, probs, grad, row_loss, value, workspace)


def _softmax_xent(
    kernel_name: str,
    logits: Array,
    target: Array,
    grad: Array,
    row_loss: Array,
    value: Array | None,
    workspace: Array | None,
) -> Array | None:
    """Checks and launch shared by the two softmax cross-entropy kernels (one warp per
    row); ``target`` is int64 labels (B,) or probabilities (B, C) by ``kernel_name``."""
    args = _Args(kernel_name)
    logits, rows, cols = _matrix(args, "logits", logits)
    if cols == 0:
        raise ShapeError(f"kernels.{kernel_name}: logits must have at least one column")
    if kernel_name == "softmax_xent_labels":
        target = args.array("labels", target, shape=(rows,), dtype=np.int64)
    else:
        target = args.array("probs", target, shape=(rows, cols))
    grad = args.array("grad", grad, shape=(rows, cols), output=True)
    row_loss = args.array("row_loss", row_loss, shape=(rows,), output=True)
    kernel_args = (logits, target, grad, row_loss, np.int32(rows), np.int32(cols))
    scale = 1.0 / max(rows, 1)
    terms = ("row_loss", row_loss)
    return _loss(
        args, kernel_args, rows, terms, value, workspace, scale, per_block=_WARPS, per_sm=16
    )


def mse_grad(
    pred: Array,
    target: Array,
    grad: Array,
    sq: Array | None,
    *,
    scale: float,
    value: Array | None = None,
    workspace: Array | None = None,
) -> Array | None:
    """grad = 2·scale·(p − y) and sq = (p − y)²; value (optional) = scale · Σ sq.

    MSE: scale = 1/N for the mean (N = pred.size), 1 for the sum. ``pred``,
    ``target``, ``grad``, ``sq``: one shape (``sq`` may be None when no value is
    asked for). Returns value (None when not asked for).
    """
    args = _Args("mse_grad")
    pred = args.array("pred", pred)
    target = args.array("target", target, shape=pred.shape)
    grad = args.array("grad", grad, shape=pred.shape, output=True)
    sq = args.optional("sq", sq, shape=pred.shape, output=True)
    n = int(pred.size)
    kernel_args = (pred, target, grad, sq, np.int64(n), args.scalar(scale))
    return _loss(args, kernel_args, n, ("sq (the squared errors)", sq), value, workspace, scale)


def bce_logits(
    logits: Array,
    target: Array,
    grad: Array,
    elem_loss: Array | None,
    value: Array | None = None,
    *,
    workspace: Array | None = None,
) -> Array | None:
    """Binary cross-entropy on logits z with targets y.

    elem_loss = max(z, 0) − z·y + log1p(e^{−|z|});  grad = (σ(z) − y) / N;
    value (optional) = Σ elem_loss / N,  N = logits.size.

    All arrays one shape (``elem_loss`` may be None when no value is asked for).
    Returns value (None when not asked for).
    """
    args = _Args("bce_logits")
    logits = args.array("logits", logits)
    target = args.array("target", target, shape=logits.shape)
    grad = args.array("grad", grad, shape=logits.shape, output=True)
    elem_loss = args.optional("elem_loss", elem_loss, shape=logits.shape, output=True)
    n = int(logits.size)
    kernel_args = (logits, target, grad, elem_loss, np.int64(n))
    terms = ("elem_loss", elem_loss)
    return _loss(args, kernel_args, n, terms, value, workspace, 1.0 / max(n, 1))


# --- optimizers ---------------------------------------------------------------------------
def _flat_pair(args: _Args, params: Array, grads: Array) -> tuple[Array, Array, int]:
    params = args.array("params", params, ndim=1, output=True)
    grads = args.array("grads", grads, shape=params.shape)
    return params, grads, int(params.size)


def sgd_step(
    params: Array,
    grads: Array,
    momentum_buffer: Array | None,
    lr: Array,
    step_state: Array,
    *,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> Array:
    """One SGD step over the flat buffer, in one launch (PyTorch's rule, as
    :class:`gpubackprop.optim.SGD`, bit for bit)::

        g ← g + λ·p                                  (weight_decay λ ≠ 0)
        if μ ≠ 0:  b ← g on the first step, else b ← μ·b + (1 − τ)·g
                   g ← g + μ·b  if nesterov, else g ← b
        p ← p − η·g

    ``params``, ``grads``, ``momentum_buffer``: 1-D, same size (the buffer may be
    None when μ = 0); ``lr``: one element of the params' dtype (η, read on the
    device at every launch, so a captured graph follows a schedule); ``step_state``:
    int32 (2,), zero-initialised, [steps taken, scratch]; the first step is the one
    that finds steps taken = 0, and the kernel adds 1 when done. Returns ``params``.
    """
    args = _Args("sgd_step")
    params, grads, n = _flat_pair(args, params, grads)
    if momentum != 0 and momentum_buffer is None:
        raise ConfigError("kernels.sgd_step: momentum != 0 needs a momentum_buffer, got None")
    buf = args.optional("momentum_buffer", momentum_buffer, shape=params.shape, output=True)
    lr = _one(args, "lr", lr)
    step_state = args.array("step_state", step_state, shape=(2,), dtype=np.int32, output=True)
    args.no_overlap()
    kernel = get_kernel("sgd_step", params.dtype)
    hyper = args.scalars(momentum, 1.0 - dampening, weight_decay)
    flags = (np.int32(bool(nesterov)), np.int64(n))
    # launched even for n = 0: the kernel advances the step counter
    args.grid_stride(kernel, n, (params, grads, buf, lr, step_state, *hyper, *flags))
    return params


def adam_prepare(
    step_state: Array,
    scalars: Array,
    lr: Array,
    *,
    betas: tuple[float, float],
    weight_decay: float = 0.0,
) -> Array:
    """Advance the Adam step counter and write the step's scalars (one thread).

    t ← t + 1 (``step_state[0]``), then, in double precision from ``lr[0]``:
    scalars = [−η/(1 − β₁ᵗ), √(1 − β₂ᵗ), 1 − η·λ]. ``step_state``: int32 (2,);
    ``scalars``: (3,) in the params' dtype; ``lr``: one element. Returns ``scalars``.
    """
    args = _Args("adam_prepare")
    step_state = args.array("step_state", step_state, shape=(2,), dtype=np.int32, output=True)
    scalars = args.array("scalars", scalars, shape=(_ADAM_SCALARS,), output=True)
    lr = _one(args, "lr", lr)
    args.no_overlap()
    kernel = get_kernel("adam_prepare", scalars.dtype)
    hyper = (np.float64(betas[0]), np.float64(betas[1]), np.float64(weight_decay))
    args.launch(kernel, 1, (1,), (step_state, scalars, lr, *hyper))
    return scalars


def adam_step(
    params: Array,
    grads: Array,
    exp_avg: Array,
    exp_avg_sq: Array,
    scalars: Array,
    *,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float = 0.0,
    decoupled: bool = False,
) -> Array:
    """One Adam (or AdamW, ``decoupled``) step over the flat buffer, one launch, after
    :func:`adam_prepare` (as :class:`gpubackprop.optim.Adam` / ``AdamW``)::

        AdamW: p ← p·(1 − η·λ)          Adam: g ← g + λ·p  (λ ≠ 0)
        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        p ← p − (η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)

    ``params``, ``grads``, ``exp_avg`` (m), ``exp_avg_sq`` (v): 1-D, same size;
    ``scalars``: the (3,) array :func:`adam_prepare` wrote. Returns ``params``.
    """
    args = _Args("adam_step")
    params, grads, n = _flat_pair(args, params, grads)
    exp_avg = args.array("exp_avg", exp_avg, shape=params.shape, output=True)
    exp_avg_sq = args.array("exp_avg_sq", exp_avg_sq, shape=params.shape, output=True)
    scalars = args.array("scalars", scalars, shape=(_ADAM_SCALARS,))
    args.no_overlap()
    beta1, beta2 = betas
    kernel = get_kernel("adam_step", params.dtype)
    hyper = args.scalars(beta1, beta2, 1.0 - beta1, 1.0 - beta2, eps, weight_decay)
    flags = (np.int32(bool(decoupled)), np.int64(n))
    if n:
        args.grid_stride(kernel, n, (params, grads, exp_avg, exp_avg_sq, scalars, *hyper, *flags))
    return params


def adam_update(
    params: Array,
    grads: Array,
    exp_avg: Array,
    exp_avg_sq: Array,
    lr: Array,
    step_state: Array,
    scalars: Array,
    *,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float = 0.0,
    decoupled: bool = False,
) -> Array:
    """:func:`adam_prepare` then :func:`adam_step`: one whole Adam/AdamW step, two
    launches, capturable. Returns ``params``."""
    adam_prepare(step_state, scalars, lr, betas=betas, weight_decay=weight_decay)
    return adam_step(
        params,
        grads,
        exp_avg,
        exp_avg_sq,
        scalars,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        decoupled=decoupled,
    )
