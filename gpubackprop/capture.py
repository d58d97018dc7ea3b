"""The whole training step as one CUDA graph: record once, replay every step.

On the GPU the small and medium networks are launch-bound: the GPU waits for
Python between kernels. :class:`CompiledStep` records forward, loss, backward
and the optimizer update into one CUDA graph and replays it, so one step costs
one graph launch (plus two copies of the batch into static buffers)::

    step = model.compile_step(gb.losses.SoftmaxCrossEntropy(), optimizer)
    for xb, yb in batches:                 # device arrays of one fixed shape
        step(xb, yb)                        # no host sync
    loss = float(step(xb, yb, return_loss=True))   # float() syncs, when you ask

How it stays correct:

* The step runs the very code of the eager step (same kernels, cuBLAS handle
  and buffers), so a replay gives the same bits as an eager step.
* Before recording, one eager forward/loss/backward (no parameter changes) and
  ``optimizer.prepare`` allocate every buffer and compile every kernel.
* The learning rate and the step counter live in device memory: a schedule
  that changes ``optimizer.lr`` between replays is followed.
* A batch of another shape or target dtype records a new graph.
* Labels are not range-checked per step (a host sync); ``fit`` checks the whole
  dataset once, and an out-of-range label gives a NaN loss, never a wrong gradient.
* Data parallel over NCCL (``distributed=``), each gradient bucket's all-reduce is
  recorded right after backward writes it, on a side stream forked from and joined
  back to the capture stream by events, so one step is still one graph launch on
  every rank.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, cast

from .arrays import Array
from .errors import CaptureError, ConfigError
from .losses import Loss, get_loss
from .model import Batch, check_optimizer

if TYPE_CHECKING:
    from .backend.cupy_ops import CupyOps
    from .distributed import Communicator
    from .model import Sequential
    from .optim import Optimizer


class CompiledStep:
    """A training step of ``model`` recorded as a CUDA graph (see the module doc).

    Attributes:
        captures: how many graphs have been recorded (one per batch shape seen).
        replays: how many steps have been replayed.
    """

    def __init__(
        self,
        model: Sequential,
        loss: Loss | str,
        optimizer: Optimizer,
        *,
        distributed: Communicator | None = None,
        weight: float = 1.0,
    ) -> None:
        check_optimizer(optimizer)
        if distributed is not None and not distributed.can_capture(model):
            raise ConfigError(
                f"compile_step: the gradient all-reduce of {distributed!r} cannot be recorded "
                "in a CUDA graph (it needs NCCL and a GPU model); train eagerly instead"
            )
        #: the gradient buckets summed inside the graph (data parallel), or None
        self.buckets = None if distributed is None else distributed.gradient_buckets(model)
        self.weight = float(weight)
        if not model.backend.is_gpu:
            raise ConfigError(
                f"compile_step records a CUDA graph and needs a model on a GPU; this model "
                f"is on {model.device}: use model.train_step there"
            )
        self.model = model
        self.loss = get_loss(loss)
        self.optimizer = optimizer
        self.captures = 0
        self.replays = 0
        self._key: tuple[Any, ...] | None = None
        self._graph: Any = None
        self._x: Array = None
        self._y: Array = None
        self._value: Array = None
        self._output: Array = None
        self._pinned: list[Any] = []

    def __repr__(self) -> str:
        return (
            f"CompiledStep({self.loss!r}, {self.optimizer!r}, device={self.model.device!r}, "
            f"captures={self.captures}, replays={self.replays})"
        )

    @property
    def loss_value(self) -> Array:
        """The last replayed step's loss, a 0-d device array (overwritten by the next)."""
        return self._value

    @property
    def output(self) -> Array:
        """The last replayed step's network output (the graph's static buffer)."""
        return self._output

    def __call__(self, x: Array, y: Array, *, return_loss: bool = False) -> Array | None:
        """Copy (x, y) into the graph's static buffers and replay one training step.

        ``x`` and ``y`` must be on the model's device (arrays of other libraries are
        taken by DLPack, :meth:`.Backend.adopt`). Returns the loss before the
        update as a new 0-d device array when ``return_loss`` (``float()`` of it
        syncs), else None: nothing here waits for the GPU.
        """
        model = self.model
        backend = model.backend
        x = backend.adopt(x, "compiled step: x")
        y = backend.adopt(y, f"{self.loss.name}: target")
        backend.check_array(x, "compiled step: x")
        backend.check_array(y, f"{self.loss.name}: target")
        model.check_input(x.shape, x.dtype, "x")
        optimizer = self.optimizer
        if optimizer.max_grad_norm is not None or optimizer.skip_nonfinite:
            raise ConfigError(
                "compiled step: the optimizer's guards (max_grad_norm, skip_nonfinite) need "
                "the gradient norm on the host and cannot run inside a CUDA graph; "
                "use model.train_step for a guarded optimizer"
            )
        if y.ndim == 0 or y.shape[0] != x.shape[0]:
            raise ConfigError(
                f"compiled step: {x.shape[0]} inputs but targets of shape {tuple(y.shape)}"
            )
        with backend.activate():
            if x.dtype != model.input_dtype:
                x = x.astype(model.input_dtype)
            shape = model.output_shape(x.shape)
            y = self.loss.prepare_target(backend, shape, model.dtype, y, check_values=False)
            key = (tuple(x.shape), tuple(y.shape), y.dtype.str, self.optimizer.capture_key())
            if key != self._key:
                self._capture(x, y, key)
            backend.xp.copyto(self._x, x)
            backend.xp.copyto(self._y, y)
            self.optimizer.sync_device_lr()
            self._graph.launch(backend.xp.cuda.get_current_stream())
            self.optimizer.step_count += 1
            self.replays += 1
            return self._value.copy() if return_loss else None

    def _capture(self, x: Array, y: Array, key: tuple[Any, ...]) -> None:
        """Record the step for this batch shape (warm-up first, nothing changes)."""
        from .anomaly import is_enabled

        model, optimizer, loss = self.model, self.optimizer, self.loss
        if is_enabled():
            raise CaptureError(
                "cannot record the training step under detect_anomaly(): its checks read "
                "the GPU back to the host, which a CUDA-graph capture forbids"
            )
        cp = model.backend.xp
        self._graph = None
        self._key = None
        static_x = cp.empty(x.shape, dtype=x.dtype)
        static_y = cp.empty(y.shape, dtype=y.dtype)
        static_x[...] = x
        static_y[...] = y
        # Warm-up: every buffer allocated, every kernel compiled; parameters untouched
        # (backward only overwrites the gradient buffer), random generators (Dropout's
        # step counters) put back. The step is recorded in training mode.
        batch = Batch(static_x, static_y, loss)
        generators = model.generator_states()
        with model.mode(True):
            self._loss_and_reduced_grad(batch)  # NCCL connects on its first collective
        model.set_generator_states(generators)
        optimizer.prepare(model.flat_params, model.flat_grads)
        pinned = [
            buf for layer in model.layers if layer.workspaces is not None
            for buf in layer.workspaces.arrays()
        ]
        pinned.append(model.loss_grad_buffer(model.output_shape(x.shape)))
        cp.cuda.get_current_stream().synchronize()

        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            # cuBLAS handle + workspace on this stream, before capture
            cast("CupyOps", model.backend.ops).blas.bind()
            stream.begin_capture()
            try:
                with model.mode(True):
                    value = self._loss_and_reduced_grad(batch)
                optimizer.apply_update(model.flat_params, model.flat_grads)
            except Exception as exc:
                with contextlib.suppress(Exception):  # already invalid; report the cause
                    stream.end_capture()
                raise CaptureError(
                    f"recording the training step failed: {type(exc).__name__}: {exc}"
                ) from exc
            graph = stream.end_capture()
        self._graph = graph
        self._x, self._y, self._value, self._output = static_x, static_y, value, model.last_output
        self._pinned = [stream, *pinned, *optimizer.buffers().values()]
        # the optimizer's buffers as recorded (prepare may have just allocated them)
        self._key = (*key[:-1], self.optimizer.capture_key())
        self.captures += 1

    def _loss_and_reduced_grad(self, batch: Batch) -> Array:
        """Forward, loss and backward; data parallel, also each gradient bucket's
        weighted all-reduce, queued on the stream as backward writes it."""
        buckets = self.buckets
        if buckets is None:
            return self.model.loss_and_grad_batch(batch)
        buckets.begin(self.weight)
        value = self.model.loss_and_grad_batch(batch, on_gradients=buckets.layer_done)
        buckets.finish()
        return value


__all__ = ["CompiledStep"]
