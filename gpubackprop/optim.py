"""Optimizers for one flat parameter buffer; the update math lives in the backend's ops.

A model keeps all its parameters in one flat 1-D buffer and all its gradients in
another of the same size (see :class:`~gpubackprop.Sequential`), so an optimizer
updates the whole model in one pass over two arrays::

    opt = Adam(lr=1e-3)
    opt.step(params, grads)          # params updated in place

The update is an op of the arrays' backend (``NumpyOps.sgd_step`` / ``adam_step``,
the reference; ``CupyOps``: fused kernels), PyTorch's rule term for term and in its
operation order, so results agree with ``torch.optim`` to float rounding. The
schedules live in :mod:`gpubackprop.schedules`, re-exported here (``gb.optim.StepLR``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .arrays import Array
from .backend import Backend, array_device, array_module, backend_of, is_cupy_array
from .backend.numpy_ops import NumpyOps
from .checks import check_int, check_nonneg, check_real, check_unit
from .errors import ConfigError, DeviceError, DTypeError, ShapeError
from .schedules import CosineAnnealingLR, LinearWarmup, LRSchedule, StepLR

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "LRSchedule",
    "LinearWarmup",
    "Optimizer",
    "StepLR",
    "StepReport",
]


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_array(x: object) -> bool:
    return isinstance(x, np.ndarray) or is_cupy_array(x)


def _where(x: Array) -> str:
    """Module and device of an array, as errors write them: ``numpy (cpu)``."""
    return f"{array_module(x).__name__} ({array_device(x)})"


# --- step reports -------------------------------------------------------------------------
@dataclass(frozen=True)
class StepReport:
    """What one :meth:`Optimizer.step` did.

    Attributes:
        stepped: whether the parameters (and the state) were updated.
        grad_norm: the global gradient norm ‖g‖₂ = √(Σ g²) before clipping; None
            unless ``max_grad_norm`` or ``skip_nonfinite`` asked for it to be measured
            (then it may be nan/inf).
        clipped: whether g was scaled down to ``max_grad_norm``.
        clip_scale: the factor g was multiplied by, min(1, max_norm / (‖g‖₂ + 1e-6)).
        skipped_reason: why the update was skipped (None when it ran).
    """

    stepped: bool
    grad_norm: float | None = None
    clipped: bool = False
    clip_scale: float = 1.0
    skipped_reason: str | None = None


def _read_only(name: str, doc: str) -> Any:
    """A read-only property for the hyper-parameter ``name``, stored as ``_<name>``."""
    return property(lambda self: getattr(self, f"_{name}"), doc=doc)


#: the report of a plain step (no norm asked for): one shared object, nothing allocated
_PLAIN_STEP = StepReport(stepped=True)


# --- optimizers -------------------------------------------------------------------------
class Optimizer(ABC):
    """Base class: updates one flat 1-D parameter buffer from one flat gradient buffer.

    ``step(params, grads)`` applies ``params ← update(params, grads, state)`` in place.
    The constructor takes hyper-parameters only; the state is created on the first
    step, sized like ``params``, and the buffer size is then fixed until
    :meth:`reset`. ``lr`` may be changed between steps (schedules do); the other
    hyper-parameters are read-only.

    Subclasses list their state arrays in ``state_names``, name their family of
    update ops in ``_kind``, their hyper-parameters besides ``lr`` in ``_hyper_names``
    (read-only properties made by :func:`_read_only`) and define
    :meth:`_set_hyperparameters` and :meth:`apply_update` (and, where the defaults do
    not fit, :meth:`_scratch_count` and :meth:`_steps_taken`).

    Guards (keyword arguments of every optimizer, off by default):

    * ``max_grad_norm`` — clip by the global norm before the update:
      g ← g · min(1, max_norm / (‖g‖₂ + 1e-6)) (in place in ``grads``, as PyTorch's
      ``clip_grad_norm_``); a non-finite norm is not clipped.
    * ``skip_nonfinite`` — when g has a NaN or an inf, skip the update (no state
      change, ``step_count`` unchanged) and say so in the report.

    :meth:`step` returns a :class:`StepReport`, also kept as ``last_report``. With no
    guard no norm is computed and nothing is allocated.
    """

    #: names of the state arrays, as they appear in :meth:`state_dict`
    state_names: ClassVar[tuple[str, ...]] = ()
    #: the family of update ops (``"sgd"`` or ``"adam"``), for ``ops.optimizer_workspace``
    _kind: ClassVar[str] = ""
    #: the hyper-parameters besides ``lr``, in constructor order
    _hyper_names: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, *, max_grad_norm: float | None = None, skip_nonfinite: bool = False
    ) -> None:
        self._lr = 0.0
        self.step_count = 0
        self._set_guards(max_grad_norm, skip_nonfinite)
        #: the :class:`StepReport` of the last :meth:`step` (None before the first)
        self.last_report: StepReport | None = None
        self._size: int | None = None
        self._state: dict[str, Array | None] = dict.fromkeys(self.state_names)
        #: the update op's workspace (``ops.optimizer_workspace``) and the ops it is for
        self._work: dict[str, Array] = {}
        self._ops: NumpyOps | None = None
        self._work_lr: float | None = None
        #: the (params, grads, backend) the state was last checked against: the same
        #: pair again skips the checks (what a training loop passes at every step)
        self._checked: tuple[Array, Array, Backend] | None = None

    # --- hyper-parameters ------------------------------------------------------------
    def _set_guards(self, max_grad_norm: object, skip_nonfinite: object) -> None:
        """Validate and set the two guards (shared by every optimizer)."""
        who = type(self).__name__
        max_norm = None
        if max_grad_norm is not None:
            max_norm = check_real(f"{who}: max_grad_norm", max_grad_norm)
            if max_norm <= 0:
                raise ConfigError(f"{who}: max_grad_norm must be > 0, got {max_norm}")
        if not isinstance(skip_nonfinite, (bool, np.bool_)):
            raise ConfigError(f"{who}: skip_nonfinite must be a bool, got {skip_nonfinite!r}")
        #: clip threshold for the global gradient norm (None: no clipping)
        self.max_grad_norm: float | None = max_norm
        #: whether a step with a NaN/Inf gradient is skipped
        self.skip_nonfinite = bool(skip_nonfinite)

    def _guards(self) -> dict[str, object]:
        """The guards as hyper-parameters: part of :meth:`hyperparameters` and checkpoints."""
        return {"max_grad_norm": self.max_grad_norm, "skip_nonfinite": self.skip_nonfinite}

    @property
    def lr(self) -> float:
        """Learning rate η (>= 0); schedules set it between steps."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = check_nonneg(f"{type(self).__name__}: lr", value)

    def hyperparameters(self) -> dict[str, object]:
        """The hyper-parameters, as the constructor takes them: ``lr``, the optimizer's
        own and the guards."""
        own = {name: getattr(self, name) for name in self._hyper_names}
        return {"lr": self.lr, **own, **self._guards()}

    @abstractmethod
    def _set_hyperparameters(self, **values: Any) -> None:
        """Validate all of ``values`` (ConfigError), then assign them."""

    def _scratch_count(self) -> int:
        """How many scratch arrays the reference update needs (Adam's two by default)."""
        return 2

    def _steps_taken(self) -> int:
        """The step counter the update op's workspace starts from (at allocation)."""
        return self.step_count

    @abstractmethod
    def apply_update(self, params: Array, grads: Array) -> None:
        """Apply one update with the backend's op, nothing else.

        No checks, no guards and no host-side bookkeeping (``step_count`` is not
        advanced: :meth:`step` counts this update before calling it), so a CUDA-graph
        capture can record it. The state must exist: call :meth:`prepare` (or
        :meth:`step`) first.
        """

    def _update_ops(self) -> NumpyOps:
        """The ops the state was allocated for; ConfigError before :meth:`prepare`."""
        if self._ops is None:
            raise ConfigError(
                f"{type(self).__name__}.apply_update: no state yet; call prepare() or step() first"
            )
        return self._ops

    def __repr__(self) -> str:
        guards = self._guards()
        items = {k: v for k, v in self.hyperparameters().items() if k not in guards or v}
        args = ", ".join(f"{k}={v!r}" for k, v in items.items())
        return f"{type(self).__name__}({args})"

    # --- stepping --------------------------------------------------------------------
    def step(self, params: Array, grads: Array) -> StepReport:
        """Update ``params`` in place from ``grads`` (both 1-D, same size, dtype, device).

        Returns a :class:`StepReport` (also kept as ``last_report``): whether the
        update ran, the gradient norm and clipping when ``max_grad_norm`` or
        ``skip_nonfinite`` is set, and why a step was skipped. Raises ShapeError,
        DTypeError or DeviceError when the two buffers do not match each other or
        the optimizer's state.
        """
        checked = self._checked
        if checked is None or checked[0] is not params or checked[1] is not grads:
            backend = self._check_buffers(params, grads)
            with backend.activate():
                self._prepare(backend.ops, params)
            checked = self._checked = (params, grads, backend)
        backend = checked[2]
        with backend.activate():
            report = self._guard(backend.ops, grads)
            if report.stepped:
                self.step_count += 1
                self.sync_device_lr()
                self.apply_update(params, grads)
        self.last_report = report
        return report

    def _guard(self, ops: NumpyOps, grads: Array) -> StepReport:
        """Measure, clip or veto the step as the guards ask (nothing when none is set)."""
        if self.max_grad_norm is None and not self.skip_nonfinite:
            return _PLAIN_STEP
        norm = ops.global_norm((grads,))
        if not math.isfinite(norm):
            if self.skip_nonfinite:
                return StepReport(
                    stepped=False, grad_norm=norm,
                    skipped_reason=f"non-finite gradient (global norm {norm})",
                )
            return StepReport(stepped=True, grad_norm=norm)
        if self.max_grad_norm is not None:
            scale = self.max_grad_norm / (norm + 1e-6)
            if scale < 1.0:
                ops.xp.multiply(grads, scale, out=grads)
                return StepReport(stepped=True, grad_norm=norm, clipped=True, clip_scale=scale)
        return StepReport(stepped=True, grad_norm=norm)

    def prepare(self, params: Array, grads: Array) -> None:
        """Allocate every state and workspace buffer for these buffers, without stepping.

        On a GPU this also compiles the kernels and writes the device-side lr, so
        that a later step allocates and compiles nothing (what a CUDA-graph capture
        of :meth:`apply_update` needs).
        """
        backend = self._check_buffers(params, grads)
        with backend.activate():
            self._prepare(backend.ops, params)
            self.sync_device_lr()

    def _prepare(self, ops: NumpyOps, params: Array) -> None:
        size = params.shape[0]
        if self._size is None:
            self._size = size
        elif size != self._size:
            raise ShapeError(
                f"{type(self).__name__}.step: optimizer state is for {self._size} parameters, "
                f"got {size}; create a new optimizer or call reset()"
            )
        if self._ops is None:
            self._allocate(ops, params)
        self._check_state(params)

    def sync_device_lr(self) -> None:
        """Write ``lr`` into the workspace the update op reads it from (when it changed).

        On a GPU that is a device-side copy, read by the kernels at every launch, so a
        recorded CUDA graph follows a schedule; the NumPy reference reads the host value.
        """
        if self._ops is not None and self._work_lr != self._lr:
            self._ops.set_learning_rate(self._work, self._lr)
            self._work_lr = self._lr

    def buffers(self) -> dict[str, Array]:
        """Every array the update reads or writes besides params and grads, by name.

        The state arrays (as in :meth:`state_dict`) and the update op's workspace (on a
        GPU the device-side ``lr``, the ``step_state`` counter and Adam's ``scalars``;
        on the CPU the scratch arrays). Empty before the first :meth:`prepare` or
        :meth:`step`. A CUDA graph that recorded :meth:`apply_update` must keep these
        alive, and is valid only while they are this optimizer's buffers.
        """
        state = {k: v for k, v in self._state.items() if v is not None}
        return {**state, **self._work}

    def capture_key(self) -> tuple[Any, ...]:
        """What a recorded :meth:`apply_update` baked in: the identity of each of
        :meth:`buffers` and the host-side hyper-parameters (all but ``lr``, which the
        kernels read on the device). Another key (after :meth:`reset`,
        :meth:`load_state_dict` or with new hyper-parameters) needs a new recording."""
        buffers = tuple((k, id(v)) for k, v in self.buffers().items())
        params = tuple((k, v) for k, v in self.hyperparameters().items() if k != "lr")
        return buffers, params

    def _check_buffers(self, params: Array, grads: Array) -> Backend:
        """Validate the pair (cheap: attributes only) and return its backend."""
        who = f"{type(self).__name__}.step"
        for name, x in (("params", params), ("grads", grads)):
            if not _is_array(x):
                raise DTypeError(f"{who}: {name} must be a numpy or cupy ndarray, got {type(x)}")
        if array_device(grads) != array_device(params):  # "cpu" or "cuda:N": module too
            raise DeviceError(
                f"{who}: params and grads must be on the same device, "
                f"got params on {_where(params)} and grads on {_where(grads)}"
            )
        if params.ndim != 1 or grads.ndim != 1 or params.shape != grads.shape:
            raise ShapeError(
                f"{who}: params and grads must be 1-D buffers of the same size, "
                f"got params of shape {params.shape} and grads of shape {grads.shape}"
            )
        if params.dtype not in _FLOAT_DTYPES or grads.dtype != params.dtype:
            raise DTypeError(
                f"{who}: params and grads must both be float32 or both float64, "
                f"got params {params.dtype} and grads {grads.dtype}"
            )
        return backend_of(params)

    def _live_state(self) -> tuple[str, ...]:
        """The state arrays the update uses (created as zeros when missing)."""
        return self.state_names

    def _allocate(self, ops: NumpyOps, params: Array) -> None:
        """First step (or first after load/reset): zero state and the op's workspace."""
        for name in self._live_state():
            if self._state[name] is None:
                self._state[name] = ops.xp.zeros(params.shape, dtype=params.dtype)
        self._work = ops.optimizer_workspace(
            self._kind, params, scratch=self._scratch_count(), steps=self._steps_taken()
        )
        self._ops = ops
        self._work_lr = None

    def _check_state(self, params: Array) -> None:
        """The state (maybe loaded) must share dtype and device with ``params``."""
        for name, value in self._state.items():
            if value is None:
                continue
            if value.dtype != params.dtype:
                raise DTypeError(
                    f"{type(self).__name__}.step: optimizer state {name!r} is {value.dtype}, "
                    f"got params {params.dtype}; create a new optimizer or call reset()"
                )
            if array_device(value) != array_device(params):
                raise DeviceError(
                    f"{type(self).__name__}.step: optimizer state {name!r} is on "
                    f"{_where(value)}, got params on {_where(params)}"
                )

    def reset(self) -> None:
        """Forget all state (and the buffer size): the next step is a first step."""
        self.step_count = 0
        self._size = None
        self._state = dict.fromkeys(self.state_names)
        self._work = {}
        self._ops = None
        self._work_lr = None
        self._checked = None

    # --- serialisation ----------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        """A snapshot: ``type``, the hyper-parameters, ``step_count``, ``num_params`` and
        ``state`` (name → copy of the state array, in the params' array module, or None).
        """
        return {
            "type": type(self).__name__,
            **self.hyperparameters(),
            "step_count": self.step_count,
            "num_params": self._size,
            "state": {k: None if v is None else v.copy() for k, v in self._state.items()},
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore a :meth:`state_dict` snapshot (copied; the next step continues from it).

        Raises ConfigError for a snapshot of another optimizer type or with missing or
        bad values, ShapeError / DTypeError for state arrays that do not fit.
        """
        who = f"{type(self).__name__}.load_state_dict"
        if state.get("type") != type(self).__name__:
            raise ConfigError(
                f"{who}: expected a {type(self).__name__} state, got type {state.get('type')!r}"
            )
        names = list(self.hyperparameters())
        missing = [k for k in (*names, "step_count", "num_params", "state") if k not in state]
        if missing:
            raise ConfigError(f"{who}: state is missing {missing}")
        arrays = state["state"]
        if not isinstance(arrays, dict) or set(arrays) != set(self.state_names):
            raise ConfigError(
                f"{who}: state['state'] must be a dict with keys "
                f"{sorted(self.state_names)}, got {arrays!r}"
            )
        step_count = check_int(f"{who}: step_count", state["step_count"], minimum=0)
        size = state["num_params"]
        if size is not None:
            size = check_int(f"{who}: num_params", size, minimum=0)
        for name, value in arrays.items():
            if value is None:
                continue
            if not _is_array(value) or value.dtype not in _FLOAT_DTYPES:
                raise DTypeError(
                    f"{who}: state {name!r} must be a float32 or float64 array, "
                    f"got {getattr(value, 'dtype', type(value))}"
                )
            if value.shape != (size,):
                raise ShapeError(
                    f"{who}: state {name!r} must have shape ({size},), got {value.shape}"
                )
        self._set_hyperparameters(**{k: state[k] for k in names})
        self._set_guards(state["max_grad_norm"], state["skip_nonfinite"])
        self.reset()
        self.step_count = step_count
        self._size = size
        self._state = {k: None if v is None else v.copy() for k, v in arrays.items()}


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and L2 decay.

    PyTorch's rule, with g the gradient, p the parameters and b the momentum buffer::

        g ← g + λ·p                                    (weight_decay λ)
        if μ ≠ 0:  b ← g on the first step,  else  b ← μ·b + (1 − τ)·g
                   g ← g + μ·b   if nesterov,  else  g ← b
        p ← p − η·g

    with momentum μ, dampening τ and learning rate η. Nesterov needs μ > 0 and τ = 0.
    """

    state_names = ("momentum_buffer",)
    _kind = "sgd"
    _hyper_names = ("momentum", "dampening", "nesterov", "weight_decay")
    momentum: float = _read_only("momentum", "Momentum factor μ (>= 0; 0 disables the buffer).")
    dampening: float = _read_only(
        "dampening", "Dampening τ in [0, 1] of the gradient term in the momentum update."
    )
    nesterov: bool = _read_only("nesterov", "Whether the step uses g + μ·b (Nesterov), not b.")
    weight_decay: float = _read_only(
        "weight_decay", "L2 penalty λ (>= 0), added to the gradient as λ·p."
    )

    def __init__(
        self, lr: float, momentum: float = 0.0, dampening: float = 0.0,
        nesterov: bool = False, weight_decay: float = 0.0, *,
        max_grad_norm: float | None = None, skip_nonfinite: bool = False,
    ) -> None:
        super().__init__(max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite)
        #: the step that first writes the momentum buffer (0: it holds a loaded value)
        self._first_step = 0
        self._set_hyperparameters(
            lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
            weight_decay=weight_decay,
        )

    def _set_hyperparameters(self, **values: Any) -> None:
        lr = check_nonneg("SGD: lr", values["lr"])
        momentum = check_nonneg("SGD: momentum", values["momentum"])
        dampening = check_unit("SGD: dampening", values["dampening"], closed=True)
        nesterov = values["nesterov"]
        if not isinstance(nesterov, (bool, np.bool_)):
            raise ConfigError(f"SGD: nesterov must be a bool, got {nesterov!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ConfigError(
                "SGD: nesterov requires momentum > 0 and dampening == 0, "
                f"got momentum={momentum} and dampening={dampening}"
            )
        weight_decay = check_nonneg("SGD: weight_decay", values["weight_decay"])
        self.lr = lr
        self._momentum = momentum
        self._dampening = dampening
        self._nesterov = bool(nesterov)
        self._weight_decay = weight_decay

    def _scratch_count(self) -> int:
        return 2 if self.weight_decay != 0 else 1

    def _live_state(self) -> tuple[str, ...]:
        return self.state_names if self.momentum != 0 else ()

    def _allocate(self, ops: NumpyOps, params: Array) -> None:
        # The buffer is allocated (zeros) ahead of its first step, so a captured
        # graph never allocates; the step numbered ``_first_step`` writes b ← g.
        started = self._state["momentum_buffer"] is not None
        self._first_step = 0 if started else self.step_count + 1
        super()._allocate(ops, params)

    def _steps_taken(self) -> int:
        # the GPU kernel copies g into b on the step that finds its counter at 0
        return max(self.step_count, 1) if self._first_step == 0 else 0

    def state_dict(self) -> dict[str, object]:
        state = super().state_dict()
        if self._ops is not None and self.step_count < self._first_step:
            state["state"] = {"momentum_buffer": None}  # allocated, not yet written
        return state

    def apply_update(self, params: Array, grads: Array) -> None:
        """One SGD update: ``ops.sgd_step`` (see the class doc)."""
        self._update_ops().sgd_step(
            params, grads, self._state["momentum_buffer"], self._work, lr=self._lr,
            first=self.step_count == self._first_step, momentum=self._momentum,
            dampening=self._dampening, weight_decay=self._weight_decay, nesterov=self._nesterov,
        )


class Adam(Optimizer):
    """Adam with L2 weight decay folded into the gradient (PyTorch's ``Adam``).

    At step t (counted from 1), with moments m, v starting at 0::

        g ← g + λ·p
        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        p ← p − (η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
    """

    state_names = ("exp_avg", "exp_avg_sq")
    _kind = "adam"
    _hyper_names = ("betas", "eps", "weight_decay")
    betas: tuple[float, float] = _read_only(
        "betas", "Decay rates (β₁, β₂), each in [0, 1), of the first and second moments."
    )
    eps: float = _read_only("eps", "ε (>= 0) added to the denominator.")
    weight_decay: float = _read_only("weight_decay", "Weight decay λ (>= 0).")
    #: decoupled decay (AdamW): p ← p·(1 − η·λ) before the step, instead of g += λ·p
    _decoupled: ClassVar[bool] = False

    def __init__(
        self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8, weight_decay: float = 0.0, *,
        max_grad_norm: float | None = None, skip_nonfinite: bool = False,
    ) -> None:
        super().__init__(max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite)
        self._set_hyperparameters(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _set_hyperparameters(self, **values: Any) -> None:
        who = type(self).__name__
        lr = check_nonneg(f"{who}: lr", values["lr"])
        betas = values["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ConfigError(f"{who}: betas must be a pair (beta1, beta2), got {betas!r}")
        beta1 = check_unit(f"{who}: betas[0]", betas[0], closed=False)
        beta2 = check_unit(f"{who}: betas[1]", betas[1], closed=False)
        eps = check_nonneg(f"{who}: eps", values["eps"])
        weight_decay = check_nonneg(f"{who}: weight_decay", values["weight_decay"])
        self.lr = lr
        self._betas = (beta1, beta2)
        self._eps = eps
        self._weight_decay = weight_decay

    def apply_update(self, params: Array, grads: Array) -> None:
        """One Adam/AdamW update: ``ops.adam_step`` at t = ``step_count`` (see the class doc)."""
        self._update_ops().adam_step(
            params, grads, self._state["exp_avg"], self._state["exp_avg_sq"], self._work,
            lr=self._lr, step=self.step_count, betas=self._betas, eps=self._eps,
            weight_decay=self._weight_decay, decoupled=self._decoupled,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch's ``AdamW``).

    At step t, with moments m, v starting at 0 (the gradient carries no decay term)::

        p ← p·(1 − η·λ)
        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        p ← p − (η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
    """

    _decoupled = True

    def __init__(
        self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8, weight_decay: float = 1e-2, *,
        max_grad_norm: float | None = None, skip_nonfinite: bool = False,
    ) -> None:
        super().__init__(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
        )
