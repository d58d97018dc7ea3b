"""fit / evaluate / predict: mini-batch training loops over a Sequential model.

These accept NumPy arrays for any model and copy each batch onto the model's
device (the documented, explicit transfer of a data loader), or arrays already
on the model's device. The engine methods (``model.forward``,
``model.train_step``) do not copy between devices. ``fit`` and ``evaluate`` check
their data for NaN/Inf once (``check_data``); the metrics are :data:`METRICS`,
chosen by loss unless given (:func:`default_metrics`). The arguments are documented
on the doors, :meth:`Sequential.fit <gpubackprop.Sequential.fit>` and its siblings.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from .anomaly import check_finite_input, detect_anomaly
from .arrays import Array, array_module, as_rows
from .backend import get_backend, is_cupy_array
from .checks import check_bool, check_int
from .distributed import Communicator
from .distributed.agreement import describe_data, describe_model, describe_optimizer
from .errors import CaptureError, ConfigError, DeviceError, ShapeError
from .losses import BCEWithLogits, Loss, SoftmaxCrossEntropy, get_loss
from .model import Batch, check_optimizer
from .progress import ProgressBar

if TYPE_CHECKING:
    from .model import Sequential
    from .optim import Optimizer


@dataclass
class History:
    """What :func:`fit` measured: ``history["loss"][e]`` is the mean loss of epoch e.

    Keys: ``loss`` and each metric measured (by default chosen by the loss, see
    :func:`default_metrics`; training values run over the epoch, before each step's
    update), ``val_loss`` and ``val_<metric>`` with validation data, ``lr`` and
    ``seconds`` per epoch.
    """

    history: dict[str, list[float]] = field(default_factory=dict)

    def append(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.history.setdefault(key, []).append(float(value))

    @property
    def epochs(self) -> int:
        return len(self.history.get("loss", []))

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __repr__(self) -> str:
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in self.history.items() if v)
        return f"History(epochs={self.epochs}, {last})"


def _host_or_device(model: Sequential, x: Any, name: str) -> Any:
    """Accept NumPy (copied per batch) or arrays on the model's device; arrays of
    other libraries (PyTorch, JAX) are taken by DLPack, without a copy."""
    x = model.backend.adopt(x, f"fit/evaluate/predict: {name}")
    if is_cupy_array(x):
        model.backend.check_array(x, f"fit/evaluate/predict: {name}")
        return x
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    raise DeviceError(
        f"{name} must be a NumPy or CuPy array or an array with __dlpack__, "
        f"got {type(x).__name__}"
    )


def _inputs(model: Sequential, x: Any) -> Array:
    """Inputs as NumPy or device arrays, in the model's input dtype (its float dtype, or
    int64 token ids) and C-contiguous (once); dtypes and shapes the model refuses stay
    as they are for :meth:`~gpubackprop.Sequential.check_input` to name."""
    x = _host_or_device(model, x, "x")
    dtype = model.input_dtype
    if (
        x.dtype.kind in ("iu" if model.input_kind == "tokens" else "biuf")
        and (x.dtype != dtype or not x.flags.c_contiguous)
        and model.takes_shape(tuple(x.shape))  # a refused shape: named with its dtype
    ):
        with model.backend.activate():
            x = array_module(x).ascontiguousarray(x, dtype=dtype)
    return x


def _take(model: Sequential, data: Array, index: Any) -> Array:
    """Rows ``index`` of ``data`` on the model's device (a copy from the host if needed)."""
    part = data[index]
    if model.backend.is_native(part):
        return part
    return model.backend.asarray(part)


def _dataset(
    model: Sequential, x: Any, y: Any, loss: Loss, what: str = "x", y_name: str = "y"
) -> Batch:
    """A whole dataset checked and converted once: x in the model's dtype, y prepared
    by ``loss``. NumPy arrays stay on the host (rows are copied batch by batch);
    arrays on the model's device stay there. Batches are rows of it, not re-checked.
    """
    x = _inputs(model, x)
    y = _host_or_device(model, y, y_name)
    model.check_input(x.shape, x.dtype, what)
    model.check_input_values(x)
    if getattr(y, "ndim", 0) == 0 or len(y) != len(x):
        got = len(y) if getattr(y, "ndim", 0) else "a scalar"
        raise ShapeError(f"{loss.name}: {len(x)} rows in {what} but {got} targets")
    expected = model.output_shape(x.shape)
    backend = model.backend if model.backend.is_native(y) else get_backend("cpu")
    with backend.activate():
        y = loss.prepare_target(backend, expected, model.dtype, y)
    return Batch(x, y, loss)


def _rows(model: Sequential, data: Batch, index: Any, device_index: Any = None) -> Batch:
    """Rows ``index`` of a prepared dataset as a batch on the model's device; arrays
    already on the device are indexed by ``device_index`` (the same rows, as a device
    array) when given, so no index crosses to the device per batch."""
    def rows(array: Array) -> Array:
        native = device_index is not None and model.backend.is_native(array)
        return _take(model, array, device_index if native else index)

    return Batch(rows(data.x), rows(data.y), data.loss)


def _correct(model: Sequential, out: Array, y: Array, loss: Loss) -> Array:
    """Number of correct predictions in a batch (a 0-d device array), over all its
    positions (B, or B·T for sequence outputs (B, T, C)): argmax of the output against
    the label (or the target's argmax); for one output, the output above the
    threshold (0 for logits, 0.5 otherwise) against the target above 0.5."""
    xp = model.backend.xp
    labels = y.ndim == out.ndim - 1
    out = as_rows(out)
    y = y.reshape(-1) if labels else as_rows(y)
    if out.shape[1] == 1:
        threshold = 0.0 if isinstance(loss, BCEWithLogits) else 0.5
        predicted = out[:, 0] > threshold
        truth = y.reshape(-1) > 0.5
    else:
        predicted = xp.argmax(out, axis=1)
        truth = y if y.ndim == 1 else xp.argmax(y, axis=1)
    return xp.count_nonzero(predicted == truth)


def _absolute_error(model: Sequential, out: Array, y: Array, loss: Loss) -> Array:
    """Σ_i (1/C) Σ_j |out_ij − y_ij| over the positions i of a batch of C outputs (a 0-d
    device array); class labels count as one-hot rows."""
    xp = model.backend.xp
    out = as_rows(out)
    y = y.reshape(-1) if y.dtype.kind in "iu" else y.reshape(out.shape)
    if y.dtype.kind in "iu":
        y = (xp.arange(out.shape[1]) == y[:, None]).astype(out.dtype)
    return xp.abs(out - y.reshape(out.shape)).sum(dtype=np.float64) / out.shape[1]


#: Metric name -> its sum over the rows of a batch; :func:`fit` and :func:`evaluate`
#: report the sum over the dataset divided by its number of positions (rows, or
#: rows·T for sequence outputs (B, T, C)):
#: ``accuracy`` = share of positions predicted right (see ``_correct``), ``mae`` = mean
#: absolute error (1/(N C)) Σ_ij |out_ij − y_ij| of the raw outputs (logits for the
#: cross-entropy losses) against the targets (labels as one-hot rows).
METRICS: dict[str, Callable[[Sequential, Array, Array, Loss], Array]] = {
    "accuracy": _correct,
    "mae": _absolute_error,
}


def default_metrics(loss: Loss) -> tuple[str, ...]:
    """The metrics reported when none are asked for: ``("accuracy",)`` for the
    classification losses (SoftmaxCrossEntropy, BCEWithLogits), none otherwise (MSE)."""
    return ("accuracy",) if isinstance(loss, (SoftmaxCrossEntropy, BCEWithLogits)) else ()


def _check_metrics(metrics: Sequence[str] | None, loss: Loss) -> tuple[str, ...]:
    """``metrics`` as a tuple of known names; None: :func:`default_metrics`."""
    if metrics is None:
        return default_metrics(loss)
    if isinstance(metrics, str):
        metrics = (metrics,)
    for name in metrics:
        if name not in METRICS:
            raise ConfigError(f"unknown metric {name!r}; available: {', '.join(METRICS)}")
    return tuple(metrics)


class _Totals:
    """Sums over the batches of an epoch or a dataset, kept on the device and read
    once at the end: the loss weighted by the batch's number of positions (B, or
    B·T for sequence outputs) and each metric's sum over positions."""

    def __init__(self, model: Sequential, metrics: Sequence[str]) -> None:
        xp = model.backend.xp
        self.model = model
        self.loss = xp.zeros((), dtype=np.float64)
        self.sums = {name: xp.zeros((), dtype=np.float64) for name in metrics}
        self.rows = 0

    def add(self, value: Array, out: Array, batch: Batch) -> None:
        """Count one batch: its mean loss ``value`` and its output ``out``."""
        positions = out.size // out.shape[-1]
        self.loss += value * positions
        for name, total in self.sums.items():
            total += METRICS[name](self.model, out, batch.y, batch.loss)
        self.rows += positions

    def mean_loss(self) -> float:
        """The mean loss so far (a host read)."""
        return float(self.loss) / self.rows

    def means(self, comm: Communicator | None = None) -> dict[str, float]:
        """``{"loss": mean loss, <metric>: mean per row, ...}``; with ``comm``, the sums
        of every rank's totals over every rank's positions (the same on every rank)."""
        values = [float(self.loss), *(float(total) for total in self.sums.values()), self.rows]
        if comm is not None:
            values = [float(v) for v in comm.sum(values)]
        rows = values[-1]
        return {
            "loss": values[0] / rows,
            **{name: value / rows for name, value in zip(self.sums, values[1:-1], strict=True)},
        }


def _check_data(data: Batch, caller: str, x_name: str, y_name: str) -> None:
    """NumericalError naming the row and column of the first NaN/Inf in a prepared
    dataset's x or float targets (labels are integers: checked by the loss)."""
    advice = "clean the data, or pass check_data=False to skip this check"
    check_finite_input(data.x, x_name, caller=caller, advice=advice)
    check_finite_input(data.y, y_name, caller=caller, advice=advice)


def _check_communicator(distributed: Any) -> Communicator | None:
    """``distributed`` as a Communicator (None: one process)."""
    if distributed is None or isinstance(distributed, Communicator):
        return distributed
    raise ConfigError(
        "distributed must be the communicator of gb.distributed.init() or None, "
        f"got {type(distributed).__name__}"
    )


def _in_run(comm: Communicator | None, what: str) -> contextlib.AbstractContextManager[Any]:
    """With ``comm``, a block where an error on one rank aborts the job
    (:meth:`.Communicator.abort_on_error`), else nothing."""
    return contextlib.nullcontext() if comm is None else comm.abort_on_error(what)


def predict(
    model: Sequential, x: Any, batch_size: int = 1024, *, distributed: Communicator | None = None
) -> Array:
    """:meth:`Sequential.predict <gpubackprop.Sequential.predict>` with the model first
    (the arguments are documented there)."""
    comm = _check_communicator(distributed)
    with _in_run(comm, "predict"):
        return _predict(model, x, batch_size, comm)


def _predict(model: Sequential, x: Any, batch_size: int, comm: Communicator | None) -> Array:
    batch_size = check_int("batch_size", batch_size)
    data = _inputs(model, x)
    on_device = model.backend.is_native(data) and model.backend.is_gpu
    if data.ndim >= 2 and len(data) == 0:
        raise ShapeError("predict: x has no rows")
    model.check_input(data.shape, data.dtype)
    model.check_input_values(data)
    lo, hi = (0, len(data))
    if comm is not None:
        comm.agree("predict", {"model": describe_model(model), "x": _describe_x(data)}, _SAME)
        lo, hi = comm.shard(len(data))
    parts = []
    with model.mode(False):
        for start in range(lo, hi, batch_size):
            out = model.forward_batch(_take(model, data, slice(start, min(hi, start + batch_size))))
            keep = on_device and comm is None  # else gathered on the host
            parts.append(out.copy() if keep else model.backend.to_numpy(out).copy())
    if comm is not None:
        shape = model.output_shape((hi - lo, *data.shape[1:]))
        mine = np.concatenate(parts, axis=0) if parts else np.empty(shape, dtype=model.dtype)
        whole = comm.gather_rows(mine)
        return model.backend.asarray(whole) if on_device else whole
    xp = model.backend.xp if on_device else np
    return xp.concatenate(parts, axis=0)


def _describe_x(x: Array) -> dict[str, Any]:
    """Rows, row shape and dtype of inputs (what the ranks must agree on to shard them)."""
    return {"rows": len(x), "row shape": tuple(x.shape[1:]), "dtype": x.dtype.name}


#: what a rank's disagreement error advises
_SAME = (
    "Every rank must build the same model and optimizer and pass the whole dataset "
    "(each rank trains on its shard of every batch)."
)


def evaluate(
    model: Sequential,
    x: Any,
    y: Any,
    loss: Loss | str,
    metrics: Sequence[str] | None = None,
    batch_size: int = 1024,
    *,
    check_data: bool = True,
    distributed: Communicator | None = None,
) -> dict[str, float]:
    """:meth:`Sequential.evaluate <gpubackprop.Sequential.evaluate>` with the model
    first (the arguments are documented there)."""
    comm = _check_communicator(distributed)
    with _in_run(comm, "evaluate"):
        loss = get_loss(loss)
        metrics = _check_metrics(metrics, loss)
        batch_size = check_int("batch_size", batch_size)
        data = _dataset(model, x, y, loss)
        if check_bool("check_data", check_data):
            _check_data(data, "evaluate", "x", "y")
        if comm is not None:
            comm.agree(
                "evaluate",
                {"model": describe_model(model), "data": describe_data(data.x, data.y)},
                _SAME,
            )
        return _evaluate(model, data, metrics, batch_size, comm)


def _evaluate(
    model: Sequential,
    data: Batch,
    metrics: Sequence[str],
    batch_size: int,
    comm: Communicator | None = None,
) -> dict[str, float]:
    """:func:`evaluate` on a dataset already checked by :func:`_dataset`, in eval mode;
    with ``comm``, each rank evaluates its contiguous shard and the sums are reduced."""
    loss = data.loss
    backend = model.backend
    xp = backend.xp
    lo, hi = comm.shard(len(data.x)) if comm is not None else (0, len(data.x))
    with backend.activate(), model.mode(False):
        totals = _Totals(model, metrics)  # on the device: one read at the end, none per batch
        grad = None
        for start in range(lo, hi, batch_size):
            batch = _rows(model, data, slice(start, min(hi, start + batch_size)))
            out = model.forward_batch(batch.x)
            if grad is None or grad.shape != out.shape:
                grad = xp.empty_like(out)
            totals.add(loss.write_value_and_grad(backend, out, batch.y, grad), out, batch)
        return totals.means(comm)


#: the device reasons (``backend.reason``: why "auto" picked the CPU, ...) fit has
#: printed; each is said once per process, later runs name the device only
_REASONS_SAID: set[str] = set()


def fit(
    model: Sequential,
    x: Any,
    y: Any,
    *,
    loss: Loss | str,
    optimizer: Optimizer,
    epochs: int = 1,
    batch_size: int = 32,
    shuffle: bool = True,
    validation_data: tuple[Any, Any] | None = None,
    metrics: Sequence[str] | None = None,
    scheduler: Any = None,
    capture: bool = True,
    verbose: bool = True,
    file: TextIO | None = None,
    check_finite: bool = False,
    check_data: bool = True,
    distributed: Communicator | None = None,
) -> History:
    """:meth:`Sequential.fit <gpubackprop.Sequential.fit>` with the model first (the
    arguments are documented there); returns a :class:`History`."""
    comm = _check_communicator(distributed)
    with _in_run(comm, "fit"):
        return _fit(
            model, x, y, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
            shuffle=shuffle, validation_data=validation_data, metrics=metrics,
            scheduler=scheduler, capture=capture, verbose=verbose, file=file,
            check_finite=check_finite, check_data=check_data, comm=comm,
        )


def _fit(
    model: Sequential,
    x: Any,
    y: Any,
    *,
    loss: Loss | str,
    optimizer: Optimizer,
    epochs: int,
    batch_size: int,
    shuffle: bool,
    validation_data: tuple[Any, Any] | None,
    metrics: Sequence[str] | None,
    scheduler: Any,
    capture: bool,
    verbose: bool,
    file: TextIO | None,
    check_finite: bool,
    check_data: bool,
    comm: Communicator | None,
) -> History:
    check_finite = check_bool("check_finite", check_finite)
    check_data = check_bool("check_data", check_data) or check_finite
    loss = get_loss(loss)
    check_optimizer(optimizer)
    metrics = _check_metrics(metrics, loss)
    batch_size = check_int("batch_size", batch_size)
    epochs = check_int("epochs", epochs, minimum=0)
    data = _dataset(model, x, y, loss)
    if check_data:
        _check_data(data, "fit", "x", "y")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ConfigError("validation_data must be a pair (x_val, y_val)")
        val_data = _dataset(
            model, validation_data[0], validation_data[1], loss, "validation x", "validation y"
        )
        if check_data:
            _check_data(val_data, "fit", "validation x", "validation y")
    if comm is not None:
        comm.agree("fit", {
            "model": describe_model(model),
            "optimizer": describe_optimizer(optimizer),
            "data": describe_data(data.x, data.y),
            "validation data": (
                None if validation_data is None else describe_data(val_data.x, val_data.y)
            ),
            "arguments": {
                "loss": loss.name, "metrics": metrics, "epochs": epochs,
                "batch_size": batch_size, "shuffle": shuffle, "capture": capture,
                "check_finite": check_finite, "scheduler": type(scheduler).__name__,
            },
        }, _SAME)
        comm.broadcast_parameters(model, optimizer)
        verbose = verbose and comm.rank == 0

    backend = model.backend
    xp = backend.xp
    n = len(data.x)
    steps = math.ceil(n / batch_size)
    history = History()
    if verbose:
        why = "" if backend.reason in _REASONS_SAID else f" ({backend.reason})"
        _REASONS_SAID.add(backend.reason)
        ranks = "" if comm is None else f" x {comm.size} ranks ({comm.backend})"
        print(
            f"Training {n} samples, batch {batch_size}, {steps} steps/epoch on "
            f"{backend.device}{ranks}{why}",
            file=file,
        )
    guarded = optimizer.max_grad_norm is not None or optimizer.skip_nonfinite
    eager = check_finite or guarded or not (capture and backend.is_gpu)
    # data parallel: a full batch's shard has the same rows at every step
    shard = (0, batch_size) if comm is None else comm.shard(batch_size)
    eager = eager or (comm is not None and not comm.can_capture(model)) or shard[0] == shard[1]
    shard_weight = (shard[1] - shard[0]) / batch_size
    compiled = None if eager else model.compile_step(
        loss, optimizer, distributed=comm, weight=shard_weight
    )
    on_device = backend.is_gpu and (backend.is_native(data.x) or backend.is_native(data.y))
    with detect_anomaly(check_finite), model.mode(True):
        for epoch in range(epochs):
            started = time.perf_counter()
            order = model.rng.permutation(n) if shuffle else None
            bar = (
                ProgressBar(steps, f"epoch {epoch + 1:>{len(str(epochs))}}/{epochs} ", file)
                if verbose
                else None
            )
            with backend.activate():
                # data on the GPU: the shuffled order goes to the device once per epoch
                device_order = xp.asarray(order) if order is not None and on_device else None
                totals = _Totals(model, metrics)
                for step in range(steps):
                    lo, hi = step * batch_size, min(n, (step + 1) * batch_size)
                    weight = 1.0
                    if comm is not None:  # this rank's contiguous shard of the batch
                        first, last = comm.shard(hi - lo)
                        weight = (last - first) / (hi - lo)
                        lo, hi = lo + first, lo + last
                    index = order[lo:hi] if order is not None else slice(lo, hi)
                    device_index = device_order[lo:hi] if device_order is not None else None
                    batch = _rows(model, data, index, device_index) if hi > lo else None
                    full = hi - lo == shard[1] - shard[0] and weight == shard_weight
                    if compiled is not None and full and batch is not None:
                        model.row_offset = shard[0]  # Dropout's masks: this shard's rows
                        try:
                            compiled(batch.x, batch.y)
                            value, out = compiled.loss_value, compiled.output
                        except CaptureError as exc:
                            warnings.warn(f"fit: training eagerly: {exc}", RuntimeWarning, 2)
                            compiled = None
                        finally:
                            model.row_offset = 0
                    if compiled is None or not full:
                        if comm is not None:
                            value = comm.train_step(model, batch, optimizer, weight, first)
                        else:
                            assert batch is not None  # one process: every batch has rows
                            value = model.step(batch, optimizer)
                        out = model.last_output
                    if batch is not None:
                        totals.add(value, out, batch)
                    if bar is not None and bar.due():
                        bar.update(step + 1, f"loss {totals.mean_loss():.4f}")
                record = totals.means(comm)
            if validation_data is not None:
                val = _evaluate(model, val_data, metrics, 1024, comm)
                record.update({f"val_{k}": v for k, v in val.items()})
            record["lr"] = float(optimizer.lr)
            seconds = time.perf_counter() - started
            record["seconds"] = seconds if comm is None else comm.max(seconds)
            history.append(record)
            if scheduler is not None:
                scheduler.step()
            if bar is not None:
                shown = "  ".join(
                    f"{k} {v:.4f}" for k, v in record.items() if k not in ("lr", "seconds")
                )
                bar.close(shown)
    return history


__all__ = ["METRICS", "History", "default_metrics", "evaluate", "fit", "predict"]
