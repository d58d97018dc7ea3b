"""Finite-difference gradient checks for models, layers and losses.

``gb.gradcheck(target, x, y, loss)`` compares the analytic gradients of the
backward pass with central differences in float64::

    ∂L/∂θ_i ≈ (L(θ + ε e_i) − L(θ − ε e_i)) / 2ε

and passes where |analytic − numeric| ≤ atol + rtol · |numeric| for every
checked entry. Without a loss, L = Σ output ⊙ R with a fixed random R, which
exercises every output's gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError, DTypeError, GradcheckError
from .layers import Layer
from .losses import Loss, get_loss
from .model import Sequential


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
        head = f"{'tensor':<14}{'checked':>8}{'max abs err':>14}{'max rel err':>14}  result"
        rows = [head]
        for e in self.entries:
            verdict = (
                "ok" if e.ok
                else f"FAIL at {e.worst_index}: {e.analytic:.6g} vs {e.numeric:.6g}"
            )
            rows.append(
                f"{e.name:<14}{e.checked:>8}{e.max_abs_error:>14.3e}"
                f"{e.max_rel_error:>14.3e}  {verdict}"
            )
        return "\n".join(rows)


def _compare(
    name: str, analytic: np.ndarray, numeric: np.ndarray, idx: list[tuple[int, ...]],
    atol: float, rtol: float,
) -> GradcheckEntry:
    a = np.array([analytic[i] for i in idx])
    n = np.array([numeric[i] for i in idx])
    abs_err = np.abs(a - n)
    rel_err = abs_err / np.maximum(np.abs(n), 1e-300)
    excess = abs_err - (atol + rtol * np.abs(n))
    worst = int(np.argmax(excess)) if len(idx) else 0
    return GradcheckEntry(
        name=name,
        checked=len(idx),
        max_abs_error=float(abs_err.max(initial=0.0)),
        max_rel_error=float(rel_err.max(initial=0.0)),
        worst_index=idx[worst] if idx else (),
        analytic=float(a[worst]) if len(idx) else 0.0,
        numeric=float(n[worst]) if len(idx) else 0.0,
        ok=bool(np.all(excess <= 0.0)) and bool(np.all(np.isfinite(a))),
    )


def _indices(shape: tuple[int, ...], limit: int | None, rng: np.random.Generator) -> list:
    size = int(np.prod(shape))
    flat = np.arange(size) if limit is None or limit >= size else rng.choice(size, limit, False)
    return [tuple(int(v) for v in np.unravel_index(i, shape)) for i in np.sort(flat)]


def _check_model(
    model: Sequential, x: Any, y: Any, loss: Loss | None, *, eps: float, atol: float,
    rtol: float, max_checks: int | None, check_input: bool, rng: np.random.Generator,
) -> GradcheckReport:
    if model.dtype != np.float64:
        raise DTypeError(
            f"gradcheck needs a float64 model (finite differences in float32 are too "
            f"coarse); got {model.dtype.name}: build it with dtype='float64'"
        )
    backend = model.backend
    xb = model.prepare_input(model.to_device(x))
    if loss is not None:
        yb = model.prepare_batch(xb, backend.asarray(y), loss).y
        projection = None
    else:
        out_shape = (xb.shape[0], model.output_width(xb.shape[1]))
        projection = backend.asarray(rng.standard_normal(out_shape))

    def value() -> float:
        out = model.forward_batch(xb)
        if projection is None:
            assert loss is not None
            return float(loss.write_value_and_grad(backend, out, yb, backend.xp.empty_like(out)))
        return float(backend.xp.vdot(out, projection))

    # analytic
    out = model.forward_batch(xb)
    if projection is None:
        assert loss is not None
        grad_out = backend.xp.empty_like(out)
        loss.write_value_and_grad(backend, out, yb, grad_out)
    else:
        grad_out = projection
    input_grad = model.backward_batch(grad_out, need_input_grad=check_input)
    analytic = {k: backend.to_numpy(v).copy() for k, v in model.gradients().items()}
    if check_input:
        analytic["input"] = backend.to_numpy(input_grad).copy()

    tensors = dict(model.parameters())
    if check_input:
        tensors["input"] = xb
    report = GradcheckReport(eps=eps, atol=atol, rtol=rtol)
    for name, tensor in tensors.items():
        idx = _indices(tuple(tensor.shape), max_checks, rng)
        numeric = np.zeros(tensor.shape)
        for i in idx:
            saved = float(tensor[i])
            tensor[i] = saved + eps
            plus = value()
            tensor[i] = saved - eps
            minus = value()
            tensor[i] = saved
            numeric[i] = (plus - minus) / (2.0 * eps)
        report.entries.append(_compare(name, analytic[name], numeric, idx, atol, rtol))
    return report


def _check_loss(
    loss: Loss, pred: Any, target: Any, *, eps: float, atol: float, rtol: float,
    max_checks: int | None, rng: np.random.Generator,
) -> GradcheckReport:
    pred = np.array(pred, dtype=np.float64) if not hasattr(pred, "dtype") else pred.copy()
    if pred.dtype != np.float64:
        raise DTypeError(f"gradcheck of a loss needs float64 predictions, got {pred.dtype}")
    _, analytic = loss.value_and_gradient(pred, target)
    analytic = np.asarray(analytic.get() if hasattr(analytic, "get") else analytic)
    idx = _indices(tuple(pred.shape), max_checks, rng)
    numeric = np.zeros(pred.shape)
    for i in idx:
        saved = float(pred[i])
        pred[i] = saved + eps
        plus = loss(pred, target)
        pred[i] = saved - eps
        minus = loss(pred, target)
        pred[i] = saved
        numeric[i] = (plus - minus) / (2.0 * eps)
    report = GradcheckReport(eps=eps, atol=atol, rtol=rtol)
    report.entries.append(_compare(loss.name, analytic, numeric, idx, atol, rtol))
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
            ``y``, when given, are its inputs; see :func:`gpubackprop.graph_gradcheck`).
        x: the input batch (the prediction for a loss).
        y, loss: target and loss for L; without a loss, L = Σ output ⊙ R for
            a fixed random R.
        eps: the finite-difference step ε.
        atol, rtol: pass where |analytic − numeric| ≤ atol + rtol·|numeric|.
        max_checks_per_tensor: check a random subset of this many entries per
            tensor (None: every entry).
        check_input: also check ∂L/∂x.
        seed: seeds R and the subset.
        raise_exception: raise :class:`GradcheckError` (with the table) on failure.

    Returns:
        A :class:`GradcheckReport`, truthy when every checked entry passed.
    """
    rng = np.random.default_rng(seed)
    if callable(target) and not isinstance(target, (Loss, Layer, Sequential)):
        if loss is not None:
            raise ConfigError("gradcheck of a graph function takes no loss: return a scalar")
        from .graph import graph_gradcheck  # graph imports this module

        inputs = [v for v in (x, y) if v is not None]
        return graph_gradcheck(
            target, *inputs, eps=eps, atol=atol, rtol=rtol,
            max_checks_per_tensor=max_checks_per_tensor, seed=seed,
            raise_exception=raise_exception,
        )
    if isinstance(target, Loss):
        if y is None:
            raise ConfigError("gradcheck of a loss needs the target y")
        report = _check_loss(
            target, x, y, eps=eps, atol=atol, rtol=rtol, max_checks=max_checks_per_tensor,
            rng=rng,
        )
    else:
        if isinstance(target, Layer):
            if target.standalone:
                target = Sequential.over_built_layer(target)  # built for graph use
            elif target.owner is not None:
                raise ConfigError(
                    f"{target.label} belongs to a model: gradcheck that model instead"
                )
            else:
                target = Sequential([target], device="cpu", dtype="float64", seed=seed)
        if not isinstance(target, Sequential):
            raise ConfigError(
                f"gradcheck takes a Sequential, a Layer or a Loss, got {type(target).__name__}"
            )
        resolved = None if loss is None else get_loss(loss)
        if resolved is not None and y is None:
            raise ConfigError("gradcheck with a loss needs the target y")
        report = _check_model(
            target, x, y, resolved, eps=eps, atol=atol, rtol=rtol,
            max_checks=max_checks_per_tensor, check_input=check_input, rng=rng,
        )
    if raise_exception and not report.ok:
        raise GradcheckError("gradient check failed:\n" + str(report))
    return report


__all__ = ["GradcheckEntry", "GradcheckReport", "gradcheck"]
