"""Finite-difference gradient checks for models, layers, losses and graph functions.

Every kind of target is checked the same way (:func:`gradcheck`): the analytic
gradients of its backward pass against :func:`central_difference` in float64, entry
by entry; without a loss, L = Σ output ⊙ R for a fixed random R exercises every output.

A model is checked in the mode it is in (training by default). Layers with a random
generator (Dropout) get their generator state back before every forward pass: the
finite differences and the analytic gradient all see the same mask (a fixed counter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .arrays import Array
from .backend import backend_of
from .errors import ConfigError, DTypeError, GradcheckError
from .graph import Tensor, as_tensor, gradients
from .layers import Layer
from .losses import Loss, get_loss
from .model import Sequential


def _layer_model(layer: Layer, seed: int) -> Sequential:
    """The model a bare layer is checked in: its own if built standalone, else a new float64 one."""
    if layer.standalone:
        return Sequential.over_built_layer(layer)  # built for graph use: its own buffers
    if layer.owner is not None:
        raise ConfigError(f"{layer.label} belongs to a model: gradcheck that model instead")
    return Sequential([layer], device="cpu", dtype="float64", seed=seed)


@dataclass
class GradcheckEntry:
    """The result for one tensor: worst absolute/relative error over ``checked`` entries."""

    name: str
    checked: int
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple[int, ...]
    analytic: float
    numeric: float
    ok: bool


@dataclass
class GradcheckReport:
    """All tensors checked; truthy when every one passed. ``str()`` gives a table."""

    entries: list[GradcheckEntry] = field(default_factory=list)
    eps: float = 1e-6
    atol: float = 1e-6
    rtol: float = 1e-5

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entries)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        rows = [f"{'tensor':<14}{'checked':>8}{'max abs err':>14}{'max rel err':>14}  result"]
        for e in self.entries:
            fail = f"FAIL at {e.worst_index}: {e.analytic:.6g} vs {e.numeric:.6g}"
            rows.append(f"{e.name:<14}{e.checked:>8}{e.max_abs_error:>14.3e}"
                        f"{e.max_rel_error:>14.3e}  {'ok' if e.ok else fail}")
        return "\n".join(rows)


def central_difference(
    f: Callable[[], float], array: Array, indices: Sequence[tuple[int, ...]], eps: float
) -> np.ndarray:
    """∂f/∂array[i] ≈ (f(array + ε eᵢ) − f(array − ε eᵢ)) / 2ε for each i of ``indices``.

    ``array`` (NumPy or CuPy) is perturbed in place, one entry at a time, and
    restored; ``f`` reads it. Returns the numeric entries, in the order of ``indices``.
    """
    numeric = np.empty(len(indices))
    for k, i in enumerate(indices):
        saved = float(array[i])
        array[i] = saved + eps
        plus = f()
        array[i] = saved - eps
        minus = f()
        array[i] = saved
        numeric[k] = (plus - minus) / (2.0 * eps)
    return numeric


def _check_entries(
    report: GradcheckReport, name: str, analytic: np.ndarray, f: Callable[[], float],
    array: Array, limit: int | None, rng: np.random.Generator,
) -> None:
    """Append to ``report`` the comparison of ``analytic`` with the central differences of
    ``f`` over ``array`` (every entry, or a random subset of ``limit``)."""
    size = int(array.size)
    picked = np.arange(size) if limit is None or limit >= size else rng.choice(size, limit, False)
    idx = [tuple(int(v) for v in np.unravel_index(i, array.shape)) for i in np.sort(picked)]
    n = central_difference(f, array, idx, report.eps)
    a = np.array([analytic[i] for i in idx])
    abs_err = np.abs(a - n)
    rel_err = abs_err / np.maximum(np.abs(n), 1e-300)
    excess = abs_err - (report.atol + report.rtol * np.abs(n))
    worst = int(np.argmax(excess)) if len(idx) else 0
    report.entries.append(GradcheckEntry(
        name=name,
        checked=len(idx),
        max_abs_error=float(abs_err.max(initial=0.0)),
        max_rel_error=float(rel_err.max(initial=0.0)),
        worst_index=idx[worst] if idx else (),
        analytic=float(a[worst]) if len(idx) else 0.0,
        numeric=float(n[worst]) if len(idx) else 0.0,
        ok=bool(np.all(excess <= 0.0)) and bool(np.all(np.isfinite(a))),
    ))


def _check_model(
    model: Sequential, x: Any, y: Any, loss: Loss | None, report: GradcheckReport, *,
    max_checks: int | None, check_input: bool, rng: np.random.Generator,
) -> None:
    if model.dtype != np.float64:
        raise DTypeError(
            f"gradcheck needs a float64 model (finite differences in float32 are too "
            f"coarse); got {model.dtype.name}: build it with dtype='float64'"
        )
    backend = model.backend
    check_input = check_input and model.input_kind != "tokens"  # ids have no gradient
    xb = model.prepare_input(model.to_device(x))
    if loss is None:
        out_shape = model.output_shape(xb.shape)
        projection = backend.asarray(rng.standard_normal(out_shape))
    else:
        batch = model.prepare_batch(xb, backend.asarray(y), loss)
        xb, target = batch.x, batch.y

    generators = model.generator_states()

    def value_and_grad() -> tuple[float, Array]:
        """(L, ∂L/∂out): L = loss(model(x), y), or Σ model(x) ⊙ R without a loss. Every
        call starts from the same generator states: a Dropout layer in training mode
        draws the same mask each time, so L is one function of the parameters."""
        model.set_generator_states(generators)
        out = model.forward_batch(xb)
        if loss is None:
            return float(backend.xp.vdot(out, projection)), projection
        grad = backend.xp.empty_like(out)
        return float(loss.write_value_and_grad(backend, out, target, grad)), grad

    input_grad = model.backward_batch(value_and_grad()[1], check_input)
    analytic = {k: backend.to_numpy(v).copy() for k, v in model.gradients().items()}
    tensors = dict(model.parameters())
    if check_input:
        analytic["input"] = backend.to_numpy(input_grad).copy()
        tensors["input"] = xb
    for name, tensor in tensors.items():
        _check_entries(report, name, analytic[name], lambda: value_and_grad()[0], tensor,
                       max_checks, rng)


def _check_loss(
    loss: Loss, pred: Any, target: Any, report: GradcheckReport, *,
    max_checks: int | None, rng: np.random.Generator,
) -> None:
    pred = np.array(pred, dtype=np.float64) if not hasattr(pred, "dtype") else pred.copy()
    if pred.dtype != np.float64:
        raise DTypeError(f"gradcheck of a loss needs float64 predictions, got {pred.dtype}")
    analytic = backend_of(pred).to_numpy(loss.value_and_gradient(pred, target)[1])
    _check_entries(report, loss.name, analytic, lambda: loss(pred, target), pred, max_checks, rng)


def graph_gradcheck(
    f: Callable[..., Any],
    *inputs: Any,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    max_checks_per_tensor: int | None = None,
    seed: int = 0,
    raise_exception: bool = True,
) -> GradcheckReport:
    """Check the backprop gradients of a graph function against central differences.

    ∂L/∂x_i ≈ (L(x + ε eᵢ) − L(x − ε eᵢ)) / 2ε, passing where
    |analytic − numeric| ≤ atol + rtol·|numeric|. ``f(*tensors)`` returns a Tensor;
    L is it when it has one element, else L = Σ f ⊙ R for a fixed random R.

    ``inputs`` are float64 arrays (copied into new leaves) or float64 Tensors (used
    as they are, perturbed in place and restored, so a layer's ``weight_tensor``
    can be checked too). Returns a :class:`GradcheckReport` (one entry per input);
    raises GradcheckError on failure if ``raise_exception``.
    """
    rng = np.random.default_rng(seed)
    tensors: list[Tensor] = []
    for i, item in enumerate(inputs):
        given = as_tensor(item)
        if given.dtype != np.float64:
            raise DTypeError(
                f"graph_gradcheck needs float64 inputs (finite differences in float32 are "
                f"too coarse); input {i} is {given.dtype}"
            )
        if given is not item:  # an array: check a copy, leave the caller's alone
            tensors.append(Tensor(given.data.copy(), requires_grad=True, name=f"input {i}"))
        elif item.requires_grad:
            tensors.append(item)
        else:
            tensors.append(Tensor(item.data, requires_grad=True, name=item.name))
    out = as_tensor(f(*tensors), tensors[0])
    backend = out.backend
    projection = None
    if out.size != 1:
        projection = backend.asarray(rng.standard_normal(out.shape), dtype=out.dtype)

    def value() -> float:
        y = as_tensor(f(*tensors), tensors[0]).data
        return float(y.reshape(-1)[0] if projection is None else backend.xp.vdot(y, projection))

    report = GradcheckReport(eps=eps, atol=atol, rtol=rtol)
    for i, (t, g) in enumerate(zip(tensors, gradients(out, tensors, projection), strict=True)):
        analytic = np.zeros(t.shape) if g is None else t.backend.to_numpy(g)
        name = t.name if t.name is not None else f"input {i}"
        _check_entries(report, name, analytic, value, t.data, max_checks_per_tensor, rng)
    if raise_exception and not report.ok:
        raise GradcheckError("graph gradient check failed:\n" + str(report))
    return report


def gradcheck(
    target: Sequential | Layer | Loss | Callable[..., Any],
    x: Any,
    y: Any = None,
    loss: Loss | str | None = None,
    *,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    max_checks_per_tensor: int | None = None,
    check_input: bool = True,
    seed: int = 0,
    raise_exception: bool = True,
) -> GradcheckReport:
    """Check a backward pass against central finite differences (float64).

    Args:
        target: a float64 :class:`Sequential`; a :class:`Layer` not yet in a
            model (it is wrapped in a float64 CPU model); a :class:`Loss`
            (then ``x`` is the prediction and ``y`` the target); or a function
            of Tensors returning a scalar Tensor (a graph function: ``x`` and
            ``y``, when given, are its inputs; see :func:`graph_gradcheck`).
        x: the input batch (the prediction for a loss).
        y: the target for L (with ``loss``).
        loss: the loss L; without one, L = Σ output ⊙ R for a fixed random R.
        eps: the finite-difference step ε.
        atol: an entry passes where |analytic − numeric| ≤ atol + rtol·|numeric|.
        rtol: see ``atol``.
        max_checks_per_tensor: check a random subset of this many entries per
            tensor (None: every entry).
        check_input: also check ∂L/∂x (not for the token ids of an Embedding model).
        seed: seeds R and the subset.
        raise_exception: raise :class:`GradcheckError` (with the table) on failure.

    Returns:
        A :class:`GradcheckReport`, truthy when every checked entry passed.
    """
    if isinstance(target, Layer):
        target = _layer_model(target, seed)
    if not isinstance(target, (Loss, Sequential)):
        if not callable(target):
            raise ConfigError(
                f"gradcheck takes a Sequential, a Layer or a Loss, got {type(target).__name__}"
            )
        if loss is not None:
            raise ConfigError("gradcheck of a graph function takes no loss: return a scalar")
        return graph_gradcheck(
            target, *(v for v in (x, y) if v is not None), eps=eps, atol=atol, rtol=rtol,
            max_checks_per_tensor=max_checks_per_tensor, seed=seed,
            raise_exception=raise_exception,
        )
    rng = np.random.default_rng(seed)
    report = GradcheckReport(eps=eps, atol=atol, rtol=rtol)
    resolved = target if isinstance(target, Loss) else None if loss is None else get_loss(loss)
    if resolved is not None and y is None:
        raise ConfigError(f"gradcheck with a loss ({resolved.name}) needs the target y")
    if isinstance(target, Loss):
        _check_loss(target, x, y, report, max_checks=max_checks_per_tensor, rng=rng)
    else:
        _check_model(target, x, y, resolved, report, max_checks=max_checks_per_tensor,
                     check_input=check_input, rng=rng)
    if raise_exception and not report.ok:
        raise GradcheckError("gradient check failed:\n" + str(report))
    return report


__all__ = [
    "GradcheckEntry", "GradcheckReport", "central_difference", "gradcheck", "graph_gradcheck",
]
