"""Flat parameters: one buffer with named views, the work-buffer cache, init, dtype.

Every model here (``Sequential``, ``RNN``, ``CharRNN``, a layer given parameters
of its own by ``Layer.build``) keeps all its parameters in ONE flat array and all
gradients in another; each named parameter is a live view (a reshaped slice)::

    flat_params = [ W_0 (out, in) | b_0 (out,) | W_1 ... ]       params["0.weight"] = view

so one optimizer pass updates everything and a checkpoint is a handful of arrays.
Initial values are drawn on the host in float64 (so the same seed gives the same
weights on every device) and copied once in the model's dtype.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .arrays import Array
from .backend import PRECISIONS, Backend
from .errors import ConfigError, DeviceMemoryError, DTypeError

#: the dtypes a model may have
DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
#: how many shapes a :class:`Workspaces` keeps before it drops the oldest
MAX_CACHED_SHAPES = 4

Shapes = Iterable[tuple[str, tuple[int, ...]]]


def resolve_dtype(dtype: Any) -> np.dtype:
    """np.float32 / np.float64 from a name or dtype; DTypeError for anything else."""
    if dtype is None:
        raise DTypeError("dtype must be 'float32' or 'float64', got None")
    try:
        resolved = np.dtype(dtype)
    except TypeError as exc:
        raise DTypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from exc
    if resolved.name not in DTYPES:
        raise DTypeError(f"dtype must be 'float32' or 'float64', got {resolved.name}")
    return resolved


def resolve_precision(precision: Any, dtype: np.dtype) -> str:
    """``"fp32"`` or ``"tf32"`` (the float32 GEMM precision); ConfigError for anything
    else, DTypeError for ``"tf32"`` with float64 (TF32 is a float32 mode)."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}"
        )
    if precision == "tf32" and dtype != np.float32:
        raise DTypeError(
            f"precision='tf32' is a mode of float32 GEMMs, but the model's dtype is "
            f"{dtype.name}; use dtype='float32' or precision='fp32'"
        )
    return str(precision)


def seeded_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A generator from a seed, or the generator itself (to draw on from it)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@contextlib.contextmanager
def device_allocation(what: str, nbytes: int) -> Iterator[None]:
    """Turn a CuPy out-of-memory error inside the block into :class:`DeviceMemoryError`.

    ``what`` names the step (layer and buffer) and ``nbytes`` the bytes asked for;
    no-op on the CPU, where NumPy raises MemoryError itself.
    """
    try:
        yield
    except MemoryError as exc:  # cupy.cuda.memory.OutOfMemoryError subclasses MemoryError
        if isinstance(exc, DeviceMemoryError) or type(exc).__module__.split(".")[0] != "cupy":
            raise
        raise DeviceMemoryError(
            f"{what}: out of device memory allocating {nbytes:,} bytes "
            f"({nbytes / 2**20:.1f} MiB); nothing was changed, a smaller batch may fit "
            f"({exc})"
        ) from exc


def split_flat(
    flat_params: Array, flat_grads: Array, shapes: Shapes
) -> tuple[OrderedDict[str, Array], OrderedDict[str, Array]]:
    """Named views ``(params, grads)`` of consecutive slices of two flat buffers."""
    params: OrderedDict[str, Array] = OrderedDict()
    grads: OrderedDict[str, Array] = OrderedDict()
    offset = 0
    for name, shape in shapes:
        end = offset + math.prod(shape)
        params[name] = flat_params[offset:end].reshape(shape)
        grads[name] = flat_grads[offset:end].reshape(shape)
        offset = end
    return params, grads


def allocate_flat(
    backend: Backend, dtype: np.dtype, shapes: Shapes, what: str = "flat buffers"
) -> tuple[Array, Array, OrderedDict[str, Array], OrderedDict[str, Array]]:
    """One zeroed flat parameter buffer and one flat gradient buffer, with named views.

    Returns ``(flat_params, flat_grads, params, grads)``; ``params[name]`` is the
    slice of ``flat_params`` reshaped to its shape (a live view), in ``shapes`` order.
    ``what`` names the owner in an out-of-memory error.
    """
    shapes = list(shapes)
    total = sum(math.prod(shape) for _, shape in shapes)
    with backend.activate(), device_allocation(
        f"{what}: flat parameter and gradient buffers ({total:,} parameters each)",
        2 * total * dtype.itemsize,
    ):
        flat_params = backend.xp.zeros(total, dtype=dtype)
        flat_grads = backend.xp.zeros(total, dtype=dtype)
    return (flat_params, flat_grads, *split_flat(flat_params, flat_grads, shapes))


def initialise(
    backend: Backend,
    flat_params: Array,
    shapes: Shapes,
    init: Callable[[OrderedDict[str, np.ndarray]], None],
) -> None:
    """Fill ``flat_params`` with initial values: ``init(host)`` writes each named
    float64 host view, then the whole buffer is copied to the device in its dtype."""
    host = np.zeros(flat_params.size, dtype=np.float64)
    views, _ = split_flat(host, host, shapes)
    init(views)
    with backend.activate():
        flat_params[...] = backend.asarray(host.astype(flat_params.dtype))


def he_or_xavier(
    rng: np.random.Generator, init: str, fan_out: int, fan_in: int
) -> np.ndarray:
    """A (fan_out, fan_in) weight: He normal, std √(2/fan_in), for ``init == "he"``
    (the relu family); else Xavier uniform, limit √(6/(fan_in+fan_out))."""
    if init == "he":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), (fan_out, fan_in))
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_out, fan_in))


class FlatParameters:
    """What every owner of one flat parameter buffer (``flat_params``, on ``backend``)
    tells about itself: its device and its parameter count."""

    backend: Backend
    flat_params: Array
    #: the seed the parameters were initialised from (None: fresh entropy)
    seed: Any = None
    #: the index, within the global batch, of the first row of the batches its layers
    #: process (a data-parallel shard's start; Dropout's counters start there): 0 but
    #: where :attr:`Sequential.row_offset <gpubackprop.Sequential.row_offset>` is set
    row_offset: int = 0

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def num_parameters(self) -> int:
        return int(self.flat_params.size)


class Workspaces:
    """Work buffers per key (e.g. the batch size), allocated on first use, then reused.

    A training step at a seen shape allocates nothing. At most
    :data:`MAX_CACHED_SHAPES` keys are kept; the oldest is dropped for a new one.
    ``label`` names the owner in an out-of-memory error.
    """

    def __init__(self, backend: Backend, label: Callable[[], str]) -> None:
        self.backend = backend
        self.label = label
        self.cache: dict[Hashable, dict[str, Array]] = {}

    def get(
        self, key: Hashable, shapes: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        dtype: Any = None,
    ) -> dict[str, Array]:
        """The buffers for ``key``: name -> an empty array of ``shapes[name]``, which is
        a shape (of ``dtype``) or, without ``dtype``, a pair (shape, dtype). ``shapes``
        may be a function giving that mapping, called only when ``key`` is new."""
        ws = self.cache.get(key)
        if ws is None:
            if callable(shapes):
                shapes = shapes()
            if len(self.cache) >= MAX_CACHED_SHAPES:
                self.cache.pop(next(iter(self.cache)))
            specs = {n: (s, dtype) for n, s in shapes.items()} if dtype is not None else shapes
            nbytes = sum(math.prod(s) * np.dtype(d).itemsize for s, d in specs.values())
            what = f"{self.label()}: work buffers {sorted(shapes)} (key {key})"
            with self.backend.activate(), device_allocation(what, nbytes):
                ws = {
                    name: self.backend.xp.empty(shape, dtype=d)
                    for name, (shape, d) in specs.items()
                }
            self.cache[key] = ws
        return ws

    def arrays(self) -> Iterator[Array]:
        """Every cached buffer."""
        for ws in self.cache.values():
            yield from ws.values()


__all__ = [
    "DTYPES",
    "FlatParameters",
    "Workspaces",
    "allocate_flat",
    "device_allocation",
    "he_or_xavier",
    "initialise",
    "resolve_dtype",
    "resolve_precision",
    "seeded_rng",
    "split_flat",
]
