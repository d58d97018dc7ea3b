"""The core of :mod:`gpubackprop.graph`: :class:`Tensor`, :class:`Gate`, the gates of Tensor's
operators and methods, and the engine (topological order, backprop, Jacobians).

A gradient has the shape and dtype of its variable; a second ``backward()`` adds
into ``.grad`` (call :func:`zero_grad` between passes). Gates of several tensors
(concatenate, stack, the fused loss) are in :mod:`gpubackprop.graph.functions`,
layers as gates in :mod:`gpubackprop.graph.layer_gates`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..activations import ACTIVATIONS
from ..arrays import Array
from ..backend import Backend, backend_of, is_cupy_array
from ..errors import (
    ConfigError,
    DeviceError,
    DTypeError,
    NumpyOnTensorError,
    ShapeError,
    TensorIndexError,
)

if TYPE_CHECKING:
    from ..layers import Layer


# --- gates --------------------------------------------------------------------------------
class Gate:
    """One node of a graph: a forward on arrays and its backward, as in the seed notes.

    Subclasses set :attr:`name` and define :meth:`forward` (save what backward
    needs on ``self``) and :meth:`backward`. Calling a gate on tensors applies it:
    ``MyGate()(x, y)`` returns the output Tensor. A gate object is one node, used
    once; create a new one for every application.
    """

    name = "gate"

    def __init__(self) -> None:
        self.backend: Backend | None = None

    @property
    def xp(self) -> ModuleType:
        """The array module of the inputs' device (NumPy or CuPy)."""
        assert self.backend is not None
        return self.backend.xp

    def describe(self) -> str:
        """How pictures and errors name this node (e.g. ``"sum(axis=0)"``)."""
        return self.name

    def forward(self, *inputs: Array) -> Array:
        """z = f(inputs) on arrays; keep on ``self`` what :meth:`backward` needs."""
        raise NotImplementedError

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        """∂L/∂input_i = ∂L/∂z · ∂z/∂input_i for each i with ``needs[i]`` (else None).

        ``grad`` (∂L/∂z, read-only) has the output's shape and dtype; each returned
        gradient must have its input's shape.
        """
        raise NotImplementedError

    def __call__(self, *inputs: Any) -> Tensor:
        """Apply the gate: z = forward(inputs), recorded in the graph.

        Arrays and Python scalars among the inputs are wrapped as constants on the
        first Tensor's device; all inputs must live on one device (DeviceError).
        """
        if self.backend is not None:
            raise ConfigError(
                f"the {self.describe()} gate object was already applied; a gate is one node "
                "of the graph: create a new one for each use"
            )
        like = next((v for v in inputs if isinstance(v, Tensor)), None)
        tensors = tuple(as_tensor(v, like) for v in inputs)
        backend = _check_devices(self.describe(), tensors)
        self.backend = backend
        with backend.activate():
            out = self.forward(*(t.data for t in tensors))
        return Tensor._from_gate(out, backend, self, tensors)


def _unbroadcast(xp: ModuleType, g: Array, shape: tuple[int, ...]) -> Array:
    """Σ of g over the axes broadcasting added or stretched, so the result has ``shape``.

    If x of shape ``shape`` was broadcast to g.shape in the forward, every copy
    of an element contributed to L, so ∂L/∂x sums the copies' gradients.
    """
    if tuple(g.shape) == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    return xp.sum(g, axis=axes, keepdims=True).reshape(shape)


class _FunctionGate(Gate):
    """z = xp.function(inputs) (elementwise ones broadcast as NumPy does); keeps inputs and z.

    A subclass names the array module's ``function`` and gives :meth:`partial`; the
    backward sums each partial over the broadcast axes back to its input's shape.
    """

    function = ""

    def forward(self, *inputs: Array) -> Array:
        self.inputs = inputs
        try:
            self.out = getattr(self.xp, self.function)(*inputs)
        except ValueError:
            shapes = " and ".join(str(tuple(x.shape)) for x in inputs)
            raise ShapeError(
                f"{self.name}: shapes {shapes} do not broadcast "
                "(NumPy rules: trailing axes must be equal or 1)"
            ) from None
        return self.out

    def partial(self, i: int, grad: Array) -> Array:
        """∂L/∂z · ∂z/∂input_i, before the sum over the broadcast axes."""
        raise NotImplementedError

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        return [_unbroadcast(self.xp, self.partial(i, grad), tuple(x.shape)) if need else None
                for i, (x, need) in enumerate(zip(self.inputs, needs, strict=True))]


class AddGate(_FunctionGate):
    """z = a + b, the distributor: ∂L/∂a = ∂L/∂b = ∂L/∂z (summed to each shape)."""

    name = "add"
    function = "add"

    def partial(self, i: int, grad: Array) -> Array:
        return grad


class SubGate(_FunctionGate):
    """z = a − b: ∂L/∂a = ∂L/∂z, ∂L/∂b = −∂L/∂z (summed to each shape)."""

    name = "sub"
    function = "subtract"

    def partial(self, i: int, grad: Array) -> Array:
        return grad if i == 0 else -grad


class MulGate(_FunctionGate):
    """z = a · b, the switcher: ∂L/∂a = b · ∂L/∂z, ∂L/∂b = a · ∂L/∂z."""

    name = "mul"
    function = "multiply"

    def partial(self, i: int, grad: Array) -> Array:
        return grad * self.inputs[1 - i]


class DivGate(_FunctionGate):
    """z = a / b: ∂L/∂a = ∂L/∂z / b, ∂L/∂b = −∂L/∂z · a / b²."""

    name = "div"
    function = "true_divide"

    def partial(self, i: int, grad: Array) -> Array:
        a, b = self.inputs
        return grad / b if i == 0 else -grad * a / (b * b)


class MaximumGate(_FunctionGate):
    """z = max(a, b) elementwise, the router: ∂L/∂z goes to the larger input.

    ∂L/∂a = ∂L/∂z · [a ≥ b], ∂L/∂b = ∂L/∂z · [a < b]: on a tie the whole gradient
    goes to ``a`` (the first argument), so it is routed, never split.
    """

    name = "max"
    function = "maximum"

    def partial(self, i: int, grad: Array) -> Array:
        a_wins = self.inputs[0] >= self.inputs[1]
        return self.xp.where(a_wins, grad, 0) if i == 0 else self.xp.where(a_wins, 0, grad)


class NegGate(_FunctionGate):
    """z = −x: ∂L/∂x = −∂L/∂z."""

    name = "neg"
    function = "negative"

    def partial(self, i: int, grad: Array) -> Array:
        return -grad


class ExpGate(_FunctionGate):
    """y = eˣ: ∂L/∂x = ∂L/∂y · y."""

    name = "exp"
    function = "exp"

    def partial(self, i: int, grad: Array) -> Array:
        return grad * self.out


class LogGate(_FunctionGate):
    """y = ln x: ∂L/∂x = ∂L/∂y / x."""

    name = "log"
    function = "log"

    def partial(self, i: int, grad: Array) -> Array:
        return grad / self.inputs[0]



class PowGate(Gate):
    """z = xᵖ for a Python number p: ∂L/∂x = ∂L/∂z · p xᵖ⁻¹."""

    name = "pow"

    def __init__(self, exponent: float) -> None:
        super().__init__()
        if isinstance(exponent, bool) or not isinstance(exponent, (int, float)):
            raise ConfigError(
                f"** takes a Python number as the exponent, got {type(exponent).__name__}"
            )
        self.exponent = exponent

    def describe(self) -> str:
        return f"** {self.exponent}"

    def forward(self, x: Array) -> Array:
        self.x = x
        return x**self.exponent

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        p = self.exponent
        return (grad * (p * self.x ** (p - 1)),)


class MatMulGate(Gate):
    """Z = A B (NumPy's matmul): ∂L/∂A = ∂L/∂Z Bᵀ, ∂L/∂B = Aᵀ ∂L/∂Z.

    A 1-D A is a row (1, n) and a 1-D B a column (n, 1), with that axis dropped
    from Z, as in NumPy; batch axes broadcast, and their gradients are summed back.
    """

    name = "matmul"

    def forward(self, a: Array, b: Array) -> Array:
        sa, sb = tuple(a.shape), tuple(b.shape)
        if not sa or not sb:
            raise ShapeError(
                f"matmul: both operands need at least one axis, got shapes {sa} and {sb} "
                "(use * to scale by a scalar)"
            )
        k_b = sb[0] if len(sb) == 1 else sb[-2]
        if sa[-1] != k_b:
            raise ShapeError(
                f"matmul: shapes {sa} and {sb} do not align: the first has {sa[-1]} columns, "
                f"the second {k_b} rows"
            )
        try:
            out = self.xp.matmul(a, b)
        except ValueError:
            raise ShapeError(f"matmul: the batch axes of shapes {sa} and {sb} do not broadcast"
                             ) from None
        self.a, self.b = a, b
        return out

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        xp = self.xp
        a = self.a[None, :] if self.a.ndim == 1 else self.a
        b = self.b[:, None] if self.b.ndim == 1 else self.b
        g = grad[..., None] if self.b.ndim == 1 else grad  # restore the dropped axes
        if self.a.ndim == 1:
            g = g[..., None, :]
        da = xp.matmul(g, xp.swapaxes(b, -1, -2)) if needs[0] else None
        db = xp.matmul(xp.swapaxes(a, -1, -2), g) if needs[1] else None
        return [None if d is None else _unbroadcast(xp, d, m.shape).reshape(given.shape)
                for d, m, given in ((da, a, self.a), (db, b, self.b))]


class TransposeGate(_FunctionGate):
    """Z = Xᵀ (all axes reversed): ∂L/∂X = (∂L/∂Z)ᵀ."""

    name = "T"
    function = "transpose"

    def partial(self, i: int, grad: Array) -> Array:
        return grad.T


class ReshapeGate(Gate):
    """Z = reshape(X, shape): ∂L/∂X = reshape(∂L/∂Z, X.shape)."""

    name = "reshape"

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def describe(self) -> str:
        return f"reshape{self.shape}"

    def forward(self, x: Array) -> Array:
        self.in_shape = tuple(x.shape)
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ShapeError(
                f"reshape: cannot reshape shape {self.in_shape} ({x.size} elements) "
                f"into {self.shape}"
            ) from None

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        return (grad.reshape(self.in_shape),)


def normalize_axes(axis: int | Sequence[int] | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Sorted non-negative axes (every axis for None); ShapeError for an axis out of range."""
    ndim = len(shape)
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = set()
    for a in axes:
        if not -ndim <= int(a) < ndim:
            raise ShapeError(f"axis {a} is out of range for a tensor of shape {shape}")
        out.add(int(a) % ndim)
    return tuple(sorted(out))


class SumGate(Gate):
    """y = Σ_axis x: every x summed into y gets ∂L/∂y, so ∂L/∂x = broadcast(∂L/∂y, x.shape)."""

    name = "sum"

    def __init__(self, axis: int | Sequence[int] | None, keepdims: bool) -> None:
        super().__init__()
        self.axis = axis
        self.keepdims = bool(keepdims)

    def describe(self) -> str:
        return self.name if self.axis is None else f"{self.name}(axis={self.axis})"

    def forward(self, x: Array) -> Array:
        self.in_shape = tuple(x.shape)
        self.axes = normalize_axes(self.axis, self.in_shape)
        self.count = math.prod(self.in_shape[a] for a in self.axes)
        return getattr(x, self.name)(axis=self.axes, keepdims=self.keepdims)  # x.sum / x.mean

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        kept = tuple(1 if i in self.axes else n for i, n in enumerate(self.in_shape))
        return (self.xp.broadcast_to(grad.reshape(kept), self.in_shape),)


class MeanGate(SumGate):
    """y = (1/n) Σ_axis x, n = number of elements summed: ∂L/∂x = broadcast(∂L/∂y) / n."""

    name = "mean"

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        (g,) = super().backward(grad, needs)
        return (g / self.count,)


class MaxGate(SumGate):
    """y = max_axis x: ∂L/∂x = ∂L/∂y · [x = y] / k, k = the number of maxima in x's slice.

    The gradient goes to the maximum (the router); k tied maxima split it evenly, each
    getting ∂L/∂y / k, as in PyTorch's ``amax`` (so the rule is symmetric in the ties).
    """

    name = "max"

    def describe(self) -> str:
        return f"{self.name}(axis={self.axis})"

    def forward(self, x: Array) -> Array:
        try:
            self.out = super().forward(x)  # x.max / x.min
        except ValueError:
            raise ShapeError(
                f"{self.describe()}: shape {tuple(x.shape)} has no elements along the "
                "reduced axes, so there is no extremum"
            ) from None
        self.x = x
        return self.out

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        kept = tuple(1 if i in self.axes else n for i, n in enumerate(self.in_shape))
        winners = self.x == self.out.reshape(kept)
        share = grad.reshape(kept) / winners.sum(axis=self.axes, keepdims=True).astype(grad.dtype)
        return (self.xp.where(winners, share, 0),)


class MinGate(MaxGate):
    """y = min_axis x: ∂L/∂x = ∂L/∂y · [x = y] / k, k tied minima splitting it evenly."""

    name = "min"


class SoftmaxGate(Gate):
    """y = softmax(x) along ``axis``: y_i = e^(x_i − m) / Σ_j e^(x_j − m), m = max_j x_j.

    Shifting by m changes nothing mathematically and keeps every e^(·) ≤ 1 (no overflow).
    From ∂y_i/∂x_j = y_i (δ_ij − y_j): ∂L/∂x = y ⊙ (∂L/∂y − Σ_axis(∂L/∂y ⊙ y)).
    """

    name = "softmax"

    def __init__(self, axis: int | Sequence[int]) -> None:
        super().__init__()
        self.axis = axis

    def describe(self) -> str:
        return f"{self.name}(axis={self.axis})"

    def forward(self, x: Array) -> Array:
        self.axes = normalize_axes(self.axis, tuple(x.shape))
        z = x.astype(np.result_type(x.dtype, 1.0), copy=False)
        try:
            z = z - z.max(axis=self.axes, keepdims=True)
        except ValueError:
            raise ShapeError(f"{self.describe()}: shape {tuple(x.shape)} has no elements along "
                             "the axis") from None
        return self.normalize(z, self.xp.log(self.xp.exp(z).sum(axis=self.axes, keepdims=True)))

    def normalize(self, z: Array, log_total: Array) -> Array:
        """y from the shifted inputs z = x − m and log Σ e^z; keeps what backward needs."""
        self.y = self.xp.exp(z - log_total)
        return self.y

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        return (self.y * (grad - (grad * self.y).sum(axis=self.axes, keepdims=True)),)


class LogSoftmaxGate(SoftmaxGate):
    """y = log softmax(x) = (x − m) − log Σ_j e^(x_j − m) along ``axis`` (m = max_j x_j).

    No exp of a large number and no log of 0: the shifted log-sum-exp is ≥ 0 and finite.
    ∂L/∂x = ∂L/∂y − softmax(x) ⊙ Σ_axis ∂L/∂y, with softmax(x) = e^y kept from the forward.
    """

    name = "log_softmax"

    def normalize(self, z: Array, log_total: Array) -> Array:
        out = z - log_total
        self.p = self.xp.exp(out)
        return out

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        return (grad - self.p * grad.sum(axis=self.axes, keepdims=True),)


class IndexGate(Gate):
    """z = x[index] (NumPy indexing): ∂L/∂x = zeros, then ∂L/∂z added where each z came from.

    Basic indices (ints, slices, ``...``, None) and boolean masks pick each element of x
    at most once, so the gradient is written in place: ∂L/∂x[index] = ∂L/∂z. Integer
    arrays may pick an element several times (``x[[0, 0, 1]]``), and every pick adds its
    gradient: ∂L/∂x_p = Σ_{i: position(z_i) = p} ∂L/∂z_i, a scatter-add, computed by
    :func:`scatter_add` without atomics: the same bits every run on a GPU too.
    """

    name = "index"

    def __init__(self, index: tuple[Any, ...]) -> None:
        super().__init__()
        self.index = index

    def describe(self) -> str:
        return "[" + ", ".join(_index_text(part) for part in self.index) + "]"

    def forward(self, x: Array) -> Array:
        self.in_shape = tuple(x.shape)
        try:
            return x[self.index]
        except IndexError as exc:
            raise TensorIndexError(
                f"Tensor{self.describe()}: {exc} (the tensor has shape {self.in_shape})"
            ) from None

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        xp = self.xp
        picks_twice = any(_is_array(p) and p.dtype.kind in "iu" for p in self.index)
        if not picks_twice:
            out = xp.zeros(self.in_shape, dtype=grad.dtype)
            out[self.index] = grad
            return (out,)
        size = math.prod(self.in_shape)
        positions = xp.arange(size).reshape(self.in_shape)[self.index]
        return (scatter_add(xp, positions.reshape(-1), grad.reshape(-1), size
                            ).reshape(self.in_shape),)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or is_cupy_array(value)


def _index_text(part: Any) -> str:
    """One index component as pictures show it: ``0``, ``1:3``, ``...``, ``None``, ``int[5]``."""
    if isinstance(part, slice):
        text = ":".join("" if v is None else str(v) for v in (part.start, part.stop, part.step))
        return text.removesuffix(":")
    if part is Ellipsis:
        return "..."
    if _is_array(part):
        return ("bool" if part.dtype.kind == "b" else "int") + str(list(part.shape))
    return str(part)


def scatter_add(xp: ModuleType, positions: Array, values: Array, size: int) -> Array:
    """out = zeros(size); out[p] += v for every pair (p, v) of ``positions``, ``values`` (1-D).

    Repeated positions accumulate. On NumPy arrays it is the backend's ordered
    scatter-add (:meth:`~gpubackprop.backend.numpy_ops.NumpyOps.scatter_add_rows`, the
    Embedding's backward: ``np.add.at``, in order), so the same bits every run. CuPy's
    scatter-add uses float atomics, whose order (and so the last bits) changes from run
    to run, and the GPU backend's one-hot GEMM would need size × picks elements; for any
    other array module a stable sort groups equal positions, a segmented scan
    (Hillis–Steele: ⌈log₂ k⌉ steps of shifted adds for at most k repeats) sums each
    group, and each group's total is written once.
    """
    if xp is np:  # 100× faster than the sort on the CPU (1M picks: 2.6 vs 295 ms)
        rows = np.empty((size, 1), dtype=values.dtype)
        return backend_of(values).ops.scatter_add_rows(positions, values[:, None], rows)[:, 0]
    out = xp.zeros(size, dtype=values.dtype)
    if positions.size == 0:
        return out
    order = xp.argsort(positions, kind="stable")
    pos, partial = positions[order], values[order]
    first = xp.concatenate([xp.ones(1, dtype=bool), pos[1:] != pos[:-1]])
    starts = xp.flatnonzero(first)
    rank = xp.arange(pos.size) - starts[xp.cumsum(first) - 1]  # place within the group
    step, longest = 1, int(rank.max()) + 1
    while step < longest:  # partial[i] = Σ of its group's values up to i
        shifted = xp.concatenate([xp.zeros(step, dtype=partial.dtype), partial[:-step]])
        partial = partial + xp.where(rank >= step, shifted, 0)
        step *= 2
    last = xp.concatenate([starts[1:] - 1, xp.asarray([pos.size - 1])])
    out[pos[last]] = partial[last]
    return out


class ActivationGate(Gate):
    """y = f(x) for an activation of the table in :mod:`gpubackprop.activations`.

    One fused gate: ∂L/∂x = ∂L/∂y ⊙ f′, with f′ from the output where it can
    (σ′ = y(1 − y), tanh′ = 1 − y², relu′ = [y > 0]), the same functions the
    Dense layer uses.
    """

    def __init__(self, activation: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}")
        self.spec = ACTIVATIONS[activation]
        self.name = activation

    def forward(self, x: Array) -> Array:
        z = x.astype(np.result_type(x.dtype, 1.0), copy=False)
        y = self.xp.empty_like(z)
        self.spec.forward(self.xp, z, y)
        self.saved = z if self.spec.needs_input else y
        return y

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        out = self.xp.empty_like(self.saved)
        return (self.spec.backward(self.xp, grad, self.saved, out),)


# --- tensors ------------------------------------------------------------------------------
def _binary(gate: type[Gate], reflected: bool = False) -> Callable[[Tensor, Any], Tensor]:
    """The operator ``self ∘ other`` (``other ∘ self`` if ``reflected``) as a new ``gate``."""
    if reflected:
        return lambda self, other: gate()(other, self)
    return lambda self, other: gate()(self, other)


#: the ufuncs behind NumPy's operators: ``array + t`` reaches Tensor.__array_ufunc__ as np.add
_OPERATOR_GATES: dict[str, type[Gate]] = {
    "add": AddGate, "subtract": SubGate, "multiply": MulGate, "divide": DivGate,
    "true_divide": DivGate, "matmul": MatMulGate,  # true_divide: its name before NumPy 2
}

#: what to write instead of a NumPy function on a Tensor
_INSTEAD = {
    "exp": "t.exp()", "log": "t.log()", "tanh": "t.tanh()", "negative": "-t",
    "power": "t ** p (p a Python number)", "maximum": "gb.maximum(a, b)",
    "sum": "t.sum(axis)", "mean": "t.mean(axis)", "max": "t.max(axis)", "amax": "t.max(axis)",
    "min": "t.min(axis)", "amin": "t.min(axis)", "concatenate": "gb.concatenate(tensors, axis)",
    "stack": "gb.stack(tensors, axis)", "reshape": "t.reshape(shape)", "transpose": "t.T",
    "dot": "a @ b", "matmul": "a @ b",
}


def _numpy_message(name: str) -> str:
    """The NumpyOnTensorError text for ``np.<name>`` applied to a Tensor."""
    instead = _INSTEAD.get(name, "a Tensor method (see help(gb.Tensor))")
    return (f"np.{name} on a gpubackprop Tensor would bypass the graph (no gate, no gradient): "
            f"use {instead}; t.data (no copy) or t.numpy() (a host copy) is the plain array")


def _array_ufunc(tensor: Tensor, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
    """NumPy's ``__array_ufunc__`` of a Tensor: the operator ufuncs (``array * t`` calls
    np.multiply) become their gates, any other ufunc raises NumpyOnTensorError."""
    gate = _OPERATOR_GATES.get(ufunc.__name__)
    if gate is None or method != "__call__" or kwargs:
        raise NumpyOnTensorError(_numpy_message(ufunc.__name__))
    return gate()(*inputs)


class _UfuncHook:
    """``Tensor.__array_ufunc__``, which NumPy and CuPy read in different places (NEP 13).

    NumPy reads it on the class and gets :func:`_array_ufunc`: ``array + t`` records an
    add gate, ``np.exp(t)`` raises :class:`NumpyOnTensorError` naming ``t.exp()``. CuPy
    reads it on the instance and sees None, so ``cupy_array + t`` defers to
    ``Tensor.__radd__`` (CuPy's ufuncs never call another type's ``__array_ufunc__``).
    """

    def __get__(self, instance: Tensor | None, owner: type) -> Callable[..., Any] | None:
        return _array_ufunc if instance is None else None


def _device_index(tensor: Tensor, index: Any) -> tuple[Any, ...]:
    """``index`` as a tuple of components for ``tensor.data[...]``: Tensors as their arrays,
    lists as integer (or boolean) arrays on the tensor's device; arrays must live there."""
    xp = tensor.backend.xp
    parts = []
    for part in index if isinstance(index, tuple) else (index,):
        if isinstance(part, Tensor):
            _check_devices("Tensor[index]", (tensor, part))
            part = part.data
        elif isinstance(part, list):
            host = np.asarray(part)
            with tensor.backend.activate():
                part = xp.asarray(host if host.size else host.astype(np.intp))
        elif _is_array(part) and not tensor.backend.is_native(part):
            raise DeviceError(
                f"Tensor[index]: the index array lives on {backend_of(part).device} but the "
                f"tensor on {tensor.device}; move the index (gpubackprop never copies implicitly)"
            )
        parts.append(part)
    return tuple(parts)


class Tensor:
    """An array in a computational graph: its value, its gradient and its history.

    Args:
        data: a NumPy or CuPy array (wrapped without a copy; the tensor lives on the
            array's device), or a Python scalar / list (a NumPy array on the CPU).
        requires_grad: whether ``backward()`` computes ∂L/∂this (needs a float dtype).
        name: a label for pictures (:func:`gpubackprop.to_dot`) and error messages.

    Attributes:
        data: the value.
        grad: ∂L/∂data after ``backward()`` (``None`` before), always of shape
            ``data.shape`` and dtype ``data.dtype``; accumulates over backward calls.
        gate: the :class:`Gate` that produced this tensor (``None`` for a leaf).
        parents: the gate's input tensors.
        backend: the device's :class:`~gpubackprop.Backend`.

    Operators: ``+ - * /`` (NumPy broadcasting), unary ``-``, ``** scalar``, ``@``,
    indexing ``t[...]``; methods ``.T``, ``.reshape``, ``.sum``, ``.mean``, ``.max``,
    ``.min``, ``.exp``, ``.log``, ``.tanh``, ``.sigmoid``, ``.relu``, ``.softmax``,
    ``.log_softmax``; ``float(t)`` and ``.item()`` for one element. Python scalars and
    arrays mix in as constants (``array * t`` too). A NumPy function on a Tensor
    (``np.exp(t)``, ``np.asarray(t)``) raises NumpyOnTensorError naming what to use.
    """

    __slots__ = ("backend", "data", "gate", "grad", "name", "parents", "requires_grad")
    __array_ufunc__ = _UfuncHook()  # array * t records a gate; np.exp(t) says to use t.exp()
    __array_priority__ = 1000

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        """``np.sum(t)``, ``np.concatenate([t, u])``, …: NumpyOnTensorError naming the gate."""
        raise NumpyOnTensorError(_numpy_message(func.__name__))

    def __array__(self, dtype: Any = None, copy: Any = None) -> Array:
        """``np.asarray(t)`` would be an object array or a silent copy: NumpyOnTensorError."""
        raise NumpyOnTensorError(
            "np.asarray / np.array of a Tensor: use t.data (the array itself, no copy, on the "
            "tensor's device) or t.numpy() (a host copy); the graph stays with the Tensor"
        )

    def __init__(self, data: Any, requires_grad: bool = False, *, name: str | None = None) -> None:
        if not (isinstance(data, np.ndarray) or is_cupy_array(data)):
            data = np.asarray(data)
        if data.dtype.kind not in "biuf":
            raise DTypeError(f"Tensor: data must be a real numeric array, got dtype {data.dtype}")
        if requires_grad and data.dtype.kind != "f":
            raise DTypeError(
                f"Tensor: requires_grad=True needs a float dtype, got {data.dtype} "
                "(gradients of integers are not defined)"
            )
        self.data = data
        self.requires_grad = bool(requires_grad)
        self.name = name
        self.grad: Array | None = None
        self.gate: Gate | None = None
        self.parents: tuple[Tensor, ...] = ()
        self.backend: Backend = backend_of(data)

    @classmethod
    def _from_gate(cls, data: Array, backend: Backend, gate: Gate, parents: tuple[Tensor, ...]
                   ) -> Tensor:
        """A gate's output (no validation: the gate made the array on ``backend``)."""
        out = cls.__new__(cls)
        out.data = data
        out.requires_grad = any(p.requires_grad for p in parents)
        out.name = None
        out.grad = None
        out.gate = gate
        out.parents = parents
        out.backend = backend
        return out

    # --- description --------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of ``data`` (and of ``grad``)."""
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return int(self.data.ndim)

    @property
    def size(self) -> int:
        """Number of elements, Π shape."""
        return int(self.data.size)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of ``data`` (and of ``grad``)."""
        return self.data.dtype

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda:N"``."""
        return self.backend.device

    @property
    def is_leaf(self) -> bool:
        """True for a tensor made by the user (no gate produced it)."""
        return self.gate is None

    def __repr__(self) -> str:
        op = "" if self.gate is None else f", gate={self.gate.describe()!r}"
        grad = ", requires_grad=True" if self.requires_grad else ""
        name = "" if self.name is None else f", name={self.name!r}"
        return (f"Tensor(shape={self.shape}, dtype={self.dtype.name}, device={self.device!r}"
                f"{grad}{op}{name})")

    def item(self) -> float:
        """The value of a one-element tensor as a Python float (else a ShapeError)."""
        return self._one_value("item()")

    def __float__(self) -> float:
        return self._one_value("float(t)")

    def _one_value(self, what: str) -> float:
        """The single element as a Python float; ``what`` names the caller in the ShapeError."""
        if self.size != 1:
            raise ShapeError(
                f"{what}: the tensor has {self.size} elements (shape {self.shape}); only a "
                "one-element tensor has a single value"
            )
        return float(self.data.reshape(-1)[0])

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor (shape ()): it has no axis to count")
        return self.shape[0]

    def __iter__(self) -> Iterator[Tensor]:
        """t[0], t[1], … along the first axis, one index gate each."""
        return (self[i] for i in range(len(self)))

    def numpy(self) -> np.ndarray:
        """A host (NumPy) copy of ``data``."""
        return np.array(self.backend.to_numpy(self.data))

    # --- backprop -------------------------------------------------------------------------
    def backward(self, grad: Any = None) -> None:
        """Backprop from this tensor: add ∂L/∂t into ``t.grad`` for every t that requires it.

        L is this tensor when it has one element (then ∂L/∂L = 1); otherwise pass
        ``grad`` = ∂L/∂self (the shape of self), i.e. L = Σ grad ⊙ self. Calling it
        again adds the same gradients once more; call :func:`zero_grad` to start from zero.
        """
        if not self.requires_grad:
            raise ConfigError(
                "backward(): this tensor does not require grad (no input of the graph that "
                "produced it was created with requires_grad=True)"
            )
        seed = self._seed(grad)
        order = topological_order(self, grad_only=True)
        grads = _backprop(self, seed, order)
        with self.backend.activate():
            for node in order:  # the first time: grad = a fresh C-contiguous copy
                g = grads[id(node)]
                if node.grad is None:
                    node.grad = node.backend.xp.array(g, dtype=node.dtype, order="C")
                else:
                    node.grad += g

    def _seed(self, grad: Any) -> Array:
        """∂L/∂self: ones for a one-element tensor, else the ``grad`` argument, checked."""
        xp = self.backend.xp
        with self.backend.activate():
            if grad is None:
                if self.size != 1:
                    raise ShapeError(
                        f"backward() without a gradient needs a scalar (one-element) tensor, "
                        f"got shape {self.shape}; pass grad=∂L/∂t of shape {self.shape}"
                    )
                return xp.ones(self.shape, dtype=self.dtype)
            seed = as_tensor(grad, self)
            _check_devices("backward", (self, seed))
            if seed.shape != self.shape:
                raise ShapeError(
                    f"backward(): grad has shape {seed.shape} but the tensor has shape "
                    f"{self.shape}; a gradient has the shape of its variable"
                )
            return xp.asarray(seed.data, dtype=self.dtype)

    def zero_grad(self) -> None:
        """grad ← 0 in place (nothing to do before the first backward, when grad is None)."""
        if self.grad is not None:
            self.grad[...] = 0

    # --- gates as operators: a new gate object per use -----------------------------------
    __add__ = _binary(AddGate)
    __radd__ = _binary(AddGate, reflected=True)
    __sub__ = _binary(SubGate)
    __rsub__ = _binary(SubGate, reflected=True)
    __mul__ = _binary(MulGate)
    __rmul__ = _binary(MulGate, reflected=True)
    __truediv__ = _binary(DivGate)
    __rtruediv__ = _binary(DivGate, reflected=True)
    __matmul__ = _binary(MatMulGate)
    __rmatmul__ = _binary(MatMulGate, reflected=True)

    def __neg__(self) -> Tensor:
        return NegGate()(self)

    def __pow__(self, exponent: float) -> Tensor:
        return PowGate(exponent)(self)

    @property
    def T(self) -> Tensor:
        """The transpose (all axes reversed); ∂L/∂x = (∂L/∂xᵀ)ᵀ."""
        return TransposeGate()(self)

    def reshape(self, *shape: int | Sequence[int]) -> Tensor:
        """The same elements in a new shape; ∂L/∂x = reshape(∂L/∂y, x.shape)."""
        return ReshapeGate(tuple(int(s) for s in np.ravel(shape)))(self)  # (3, 4) or ((3, 4),)

    def sum(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        """y = Σ_axis x; ∂L/∂x = ∂L/∂y broadcast back over the summed axes."""
        return SumGate(axis, keepdims)(self)

    def mean(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        """y = (1/n) Σ_axis x (n = elements summed); ∂L/∂x = ∂L/∂y / n, broadcast back."""
        return MeanGate(axis, keepdims)(self)

    def exp(self) -> Tensor:
        """y = eˣ; ∂L/∂x = ∂L/∂y · y."""
        return ExpGate()(self)

    def log(self) -> Tensor:
        """y = ln x; ∂L/∂x = ∂L/∂y / x."""
        return LogGate()(self)

    def tanh(self) -> Tensor:
        """y = tanh x; ∂L/∂x = ∂L/∂y · (1 − y²)."""
        return ActivationGate("tanh")(self)

    def sigmoid(self) -> Tensor:
        """y = σ(x) = 1 / (1 + e⁻ˣ), one fused gate; ∂L/∂x = ∂L/∂y · y (1 − y)."""
        return ActivationGate("sigmoid")(self)

    def relu(self) -> Tensor:
        """y = max(x, 0); ∂L/∂x = ∂L/∂y · [y > 0]."""
        return ActivationGate("relu")(self)

    def __getitem__(self, index: Any) -> Tensor:
        """x[index] as NumPy indexes (ints, slices, ``...``, None, integer arrays, boolean
        masks; lists become arrays); ∂L/∂x = ∂L/∂y added back where each element came from
        (repeated integer indices accumulate). See :class:`IndexGate`."""
        return IndexGate(_device_index(self, index))(self)

    def max(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        """y = max_axis x; ∂L/∂x = ∂L/∂y at the maximum, split evenly among ties."""
        return MaxGate(axis, keepdims)(self)

    def min(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        """y = min_axis x; ∂L/∂x = ∂L/∂y at the minimum, split evenly among ties."""
        return MinGate(axis, keepdims)(self)

    def softmax(self, axis: int = -1) -> Tensor:
        """y = e^(x − m) / Σ_axis e^(x − m), m = max; ∂L/∂x = y ⊙ (∂L/∂y − Σ_axis ∂L/∂y ⊙ y)."""
        return SoftmaxGate(axis)(self)

    def log_softmax(self, axis: int = -1) -> Tensor:
        """y = x − m − log Σ_axis e^(x − m); ∂L/∂x = ∂L/∂y − softmax(x) Σ_axis ∂L/∂y."""
        return LogSoftmaxGate(axis)(self)


def as_tensor(value: Any, like: Tensor | None = None) -> Tensor:
    """``value`` as a Tensor: Tensors as they are, anything else a constant.

    Given ``like``, a Python scalar is *weak* (as in NumPy 2): it becomes a 0-d
    array of result_type(like.dtype, value) on like's device, so ``t32 * 0.5``
    stays float32. Arrays keep their own device and dtype (a mismatch is caught
    by the gate); without ``like`` a scalar or list becomes a NumPy array.
    """
    if isinstance(value, Tensor):
        return value
    scalar = isinstance(value, (bool, int, float)) and not isinstance(value, np.generic)
    if like is not None and scalar:
        dtype = np.result_type(like.dtype, value)
        with like.backend.activate():
            return Tensor(like.backend.xp.asarray(value, dtype=dtype))
    return Tensor(value)


def _check_devices(what: str, tensors: Sequence[Tensor]) -> Backend:
    """The inputs' common backend; DeviceError naming both devices if they differ."""
    backend = tensors[0].backend
    for t in tensors[1:]:
        if t.backend.device != backend.device:
            raise DeviceError(
                f"{what}: inputs live on {backend.device} and {t.backend.device}; "
                "gpubackprop never copies between devices implicitly: move one of them "
                "first (e.g. cupy.asarray / cupy.asnumpy)"
            )
    return backend


# --- functions ----------------------------------------------------------------------------
def maximum(a: Any, b: Any) -> Tensor:
    """z = max(a, b) elementwise (broadcasting), the router gate.

    ∂L/∂a = ∂L/∂z · [a ≥ b], ∂L/∂b = ∂L/∂z · [a < b] (a tie routes to ``a``).
    """
    return MaximumGate()(a, b)


def zero_grad(*items: Tensor | Layer) -> None:
    """grad ← 0 for each tensor, and for each layer's parameter tensors.

    Gradients accumulate over ``backward()`` calls (∂L₁/∂t + ∂L₂/∂t + …); call this
    before a backward pass that should start from zero.
    """
    for item in items:
        if isinstance(item, Tensor):
            item.zero_grad()
        else:
            for t in item.parameter_tensors().values():
                t.zero_grad()


def topological_order(root: Tensor, *, grad_only: bool = False) -> list[Tensor]:
    """Every tensor ``root`` depends on, each after all of its inputs (root last).

    An iterative depth-first search (an explicit stack, no recursion), so graphs
    of any depth work. With ``grad_only``, only tensors that require grad (the
    ones backward visits). Forward order = this list; backward = it reversed.
    """
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in reversed(node.parents):  # the first input is visited first
            if id(parent) not in visited and (parent.requires_grad or not grad_only):
                stack.append((parent, False))
    return order


def _backprop(root: Tensor, seed: Array, order: list[Tensor]) -> dict[int, Array]:
    """∂L/∂t for every t in ``order`` (keyed by id), L = Σ seed ⊙ root.

    Reverse topological order: when a node is reached, every gate that reads it
    has already added its share into ``grads``; the node's gate then passes
    ∂L/∂node on to its inputs. Nothing is written into ``.grad``.
    """
    grads: dict[int, Array] = {id(root): seed}
    with root.backend.activate():
        for node in reversed(order):
            if node.gate is None:
                continue
            parents = node.parents
            needs = tuple(p.requires_grad for p in parents)
            upstream = node.gate.backward(grads[id(node)], needs)
            for i, (parent, g) in enumerate(zip(parents, upstream, strict=True)):
                if not needs[i]:
                    continue
                if g is None or tuple(g.shape) != parent.shape:
                    got = None if g is None else tuple(g.shape)
                    raise ShapeError(
                        f"{node.gate.describe()} gate: the gradient for input {i} has shape "
                        f"{got}, but the input has shape {parent.shape}; a gradient always "
                        "has the shape of its variable"
                    )
                if g.dtype != parent.dtype:
                    g = g.astype(parent.dtype)
                key = id(parent)
                grads[key] = g if key not in grads else grads[key] + g
    return grads


def gradients(output: Tensor, inputs: Sequence[Tensor], grad: Any = None) -> list[Array | None]:
    """∂L/∂t for each tensor t of ``inputs`` by backprop, without touching any ``.grad``.

    L = output when it has one element, else L = Σ grad ⊙ output (as in
    :meth:`Tensor.backward`). An input L does not depend on gets None (all of
    them when the output does not require grad).
    """
    if not output.requires_grad:
        return [None] * len(inputs)
    found = _backprop(output, output._seed(grad), topological_order(output, grad_only=True))
    return [found.get(id(t)) for t in inputs]


def jacobian(f: Callable[[Tensor], Any], x: Any) -> Array:
    """The Jacobian J[i, j] = ∂y_i/∂x_j of y = f(x), by backprop: one backward per row.

    Row i is the gradient of y_i (seed eᵢ). For tensors of any shape, i and j
    index ``y.reshape(-1)`` and ``x.reshape(-1)`` (C order), so J has shape
    (y.size, x.size). ``x`` is an array or Tensor (its values are used in a new
    leaf); ``f`` maps a Tensor to a Tensor. The result is an array on x's device.
    """
    leaf = Tensor(as_tensor(x).data, requires_grad=True)
    y = as_tensor(f(leaf), leaf)
    xp = leaf.backend.xp
    with leaf.backend.activate():
        jac = xp.zeros((y.size, leaf.size), dtype=np.result_type(y.dtype, leaf.dtype))
        if not y.requires_grad:
            return jac
        order = topological_order(y, grad_only=True)
        for i in range(y.size):
            seed = xp.zeros(y.size, dtype=y.dtype)
            seed[i] = 1
            g = _backprop(y, seed.reshape(y.shape), order).get(id(leaf))
            if g is not None:
                jac[i] = g.reshape(-1)
    return jac


__all__ = [
    "ActivationGate", "AddGate", "DivGate", "ExpGate", "Gate", "IndexGate", "LogGate",
    "LogSoftmaxGate", "MatMulGate", "MaxGate", "MaximumGate", "MeanGate", "MinGate", "MulGate",
    "NegGate", "PowGate", "ReshapeGate", "SoftmaxGate", "SubGate", "SumGate", "Tensor",
    "TransposeGate", "as_tensor", "gradients", "jacobian", "maximum", "normalize_axes",
    "scatter_add", "topological_order", "zero_grad",
]
