"""Optimizers and learning-rate schedules for one flat parameter buffer.

A model keeps all its parameters in one flat 1-D buffer and all its gradients in
another of the same size (see :class:`~gpubackprop.Sequential`), so an optimizer
here updates the whole model in one pass over two arrays::

    opt = Adam(lr=1e-3)
    opt.step(params, grads)          # params updated in place

Every optimizer allocates its state (momentum, moment estimates) and its scratch
buffers once, lazily, on the first step, sized like ``params``; every later step
runs ufuncs with ``out=`` and allocates no array. The same code runs on NumPy and
CuPy arrays (``xp = array_module(params)``). The update rules are PyTorch's, term
for term and in PyTorch's operation order, so results agree with ``torch.optim`` to
float rounding.

A schedule wraps an optimizer and sets its ``lr``::

    sched = CosineAnnealingLR(opt, T_max=100)
    for epoch in range(100):
        ...                          # opt.step(params, grads) per batch
        sched.step()                 # lr for the next epoch
"""

from __future__ import annotations

import contextlib
import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from .arrays import Array, array_device, array_module, is_cupy_array
from .errors import ConfigError, DeviceError, DTypeError, ShapeError

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


# --- argument checks ----------------------------------------------------------------
def _real(owner: str, name: str, value: object) -> float:
    """``value`` as a float; ConfigError unless it is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{owner}: {name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"{owner}: {name} must be finite, got {out}")
    return out


def _nonneg(owner: str, name: str, value: object) -> float:
    """``value`` as a float; ConfigError unless it is finite and >= 0."""
    out = _real(owner, name, value)
    if out < 0:
        raise ConfigError(f"{owner}: {name} must be >= 0, got {out}")
    return out


def _unit(owner: str, name: str, value: object, *, closed: bool) -> float:
    """``value`` as a float in [0, 1] (``closed``) or [0, 1) (else); ConfigError otherwise."""
    out = _real(owner, name, value)
    if out < 0 or out > 1 or (out == 1 and not closed):
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ConfigError(f"{owner}: {name} must be in {interval}, got {out}")
    return out


def _count(owner: str, name: str, value: object, *, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; ConfigError unless it is an integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{owner}: {name} must be an integer, got {value!r}")
    out = int(value)
    if out < minimum:
        raise ConfigError(f"{owner}: {name} must be >= {minimum}, got {out}")
    return out


def _is_array(x: object) -> bool:
    return isinstance(x, np.ndarray) or is_cupy_array(x)


def _where(x: Array) -> str:
    """Module and device of an array, as errors write them: ``numpy (cpu)``."""
    return f"{array_module(x).__name__} ({array_device(x)})"


def _device_scope(x: Array) -> contextlib.AbstractContextManager[object]:
    """The CUDA device of a CuPy array as a context (kernels run there); no-op for NumPy."""
    return x.device if is_cupy_array(x) else contextlib.nullcontext()


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


#: the report of a plain step (no norm asked for): one shared object, nothing allocated
_PLAIN_STEP = StepReport(stepped=True)


def _global_norm(xp: ModuleType, grads: Array) -> float:
    """‖g‖₂ = √(g·g) as a float; rescaled by m = max|g| when g·g overflows.

    ‖g‖₂ = m·√(Σ (g/m)²) is finite for every finite g; nan or inf stays nan or inf.
    """
    norm = math.sqrt(float(xp.vdot(grads, grads)))
    if math.isinf(norm):
        largest = float(xp.abs(grads).max())
        if math.isfinite(largest):
            scaled = grads / largest
            norm = largest * math.sqrt(float(xp.vdot(scaled, scaled)))
        else:
            norm = largest  # inf, or nan (nan propagates through max)
    return norm


# --- optimizers -------------------------------------------------------------------------
class Optimizer(ABC):
    """Base class: updates one flat 1-D parameter buffer from one flat gradient buffer.

    ``step(params, grads)`` applies ``params ← update(params, grads, state)`` in place.
    The constructor takes hyper-parameters only; the state is created on the first
    step, sized like ``params``, and the buffer size is then fixed until
    :meth:`reset`. ``lr`` may be changed between steps (schedules do); the other
    hyper-parameters are read-only.

    Subclasses list their state arrays in ``_state_names`` and define
    :meth:`hyperparameters`, :meth:`_set_hyperparameters`, :meth:`_scratch_count` and
    :meth:`_update`.

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
    _state_names: ClassVar[tuple[str, ...]] = ()
    #: whether missing state arrays start as zeros on the first step (else the
    #: subclass creates them itself in :meth:`_update`)
    _zero_init_state: ClassVar[bool] = False

    def __init__(
        self, *, max_grad_norm: float | None = None, skip_nonfinite: bool = False
    ) -> None:
        self._lr = 0.0
        self.step_count = 0
        self._set_guards(max_grad_norm, skip_nonfinite)
        #: the :class:`StepReport` of the last :meth:`step` (None before the first)
        self.last_report: StepReport | None = None
        self._size: int | None = None
        self._state: dict[str, Array | None] = dict.fromkeys(self._state_names)
        self._scratch: list[Array] = []
        #: on a GPU: "lr" (one element, read by the kernels at every launch, so a
        #: captured graph follows a schedule), "step_state" (int32 [steps, scratch])
        #: and what a subclass adds; see :meth:`_allocate_device`
        self._device: dict[str, Array] = {}
        self._device_lr: float | None = None
        self._allocated = False

    # --- hyper-parameters ------------------------------------------------------------
    def _set_guards(self, max_grad_norm: float | None, skip_nonfinite: bool) -> None:
        """Validate and set the two guards (shared by every optimizer)."""
        who = type(self).__name__
        if max_grad_norm is not None:
            max_grad_norm = _real(who, "max_grad_norm", max_grad_norm)
            if max_grad_norm <= 0:
                raise ConfigError(f"{who}: max_grad_norm must be > 0, got {max_grad_norm}")
        if not isinstance(skip_nonfinite, (bool, np.bool_)):
            raise ConfigError(f"{who}: skip_nonfinite must be a bool, got {skip_nonfinite!r}")
        #: clip threshold for the global gradient norm (None: no clipping)
        self.max_grad_norm: float | None = max_grad_norm
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
        self._lr = _nonneg(type(self).__name__, "lr", value)

    @abstractmethod
    def hyperparameters(self) -> dict[str, object]:
        """The hyper-parameters, as the constructor takes them."""

    @abstractmethod
    def _set_hyperparameters(self, **values: Any) -> None:
        """Validate all of ``values`` (ConfigError), then assign them."""

    @abstractmethod
    def _scratch_count(self) -> int:
        """How many scratch buffers, sized like params, :meth:`_update` needs."""

    @abstractmethod
    def _update(self, xp: ModuleType, params: Array, grads: Array) -> None:
        """Apply one update in place (NumPy reference); ``step_count`` counts this step."""

    @abstractmethod
    def _launch(self, params: Array, grads: Array) -> None:
        """Apply one update with the fused GPU kernel(s): device-side lr and step only.

        Issues kernel launches and nothing else (no host-side bookkeeping), so a
        CUDA-graph capture can record it.
        """

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
        xp = self._check_buffers(params, grads)
        with _device_scope(params):
            self._prepare(xp, params)
            report = self._guard(xp, grads)
            if report.stepped:
                self.step_count += 1
                if xp is np:
                    self._update(xp, params, grads)
                else:
                    self.sync_device_lr()
                    self._launch(params, grads)
        self.last_report = report
        return report

    def _guard(self, xp: ModuleType, grads: Array) -> StepReport:
        """Measure, clip or veto the step as the guards ask (nothing when none is set)."""
        if self.max_grad_norm is None and not self.skip_nonfinite:
            return _PLAIN_STEP
        norm = _global_norm(xp, grads)
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
                xp.multiply(grads, scale, out=grads)
                return StepReport(stepped=True, grad_norm=norm, clipped=True, clip_scale=scale)
        return StepReport(stepped=True, grad_norm=norm)

    def prepare(self, params: Array, grads: Array) -> None:
        """Allocate every state and scratch buffer for these buffers, without stepping.

        On a GPU this also compiles the kernels and writes the device-side lr, so
        that a later step allocates and compiles nothing (what a CUDA-graph capture
        of the step needs).
        """
        xp = self._check_buffers(params, grads)
        with _device_scope(params):
            self._prepare(xp, params)
            if xp is not np:
                self.sync_device_lr()

    def _prepare(self, xp: ModuleType, params: Array) -> None:
        size = params.shape[0]
        if self._size is None:
            self._size = size
        elif size != self._size:
            raise ShapeError(
                f"{type(self).__name__}.step: optimizer state is for {self._size} parameters, "
                f"got {size}; create a new optimizer or call reset()"
            )
        if not self._allocated:
            self._allocate(xp, params)
            self._allocated = True
        self._check_state(params)

    def sync_device_lr(self) -> None:
        """Write ``lr`` into the device-side copy the GPU kernels read (when it changed)."""
        if self._device and self._device_lr != self._lr:
            self._device["lr"].fill(self._lr)
            self._device_lr = self._lr

    def _check_buffers(self, params: Array, grads: Array) -> ModuleType:
        """Validate the pair (cheap: attributes only) and return its array module."""
        who = f"{type(self).__name__}.step"
        for name, x in (("params", params), ("grads", grads)):
            if not _is_array(x):
                raise DTypeError(f"{who}: {name} must be a numpy or cupy ndarray, got {type(x)}")
        xp = array_module(params)
        if array_module(grads) is not xp or array_device(grads) != array_device(params):
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
        return xp

    def _allocate(self, xp: ModuleType, params: Array) -> None:
        """First step (or first after load/reset): create scratch and zero state."""
        # the NumPy path works in scratch buffers; the GPU kernels need none
        count = self._scratch_count() if xp is np else 0
        self._scratch = [xp.empty(params.shape, dtype=params.dtype) for _ in range(count)]
        if self._zero_init_state:
            for name, value in self._state.items():
                if value is None:
                    self._state[name] = xp.zeros(params.shape, dtype=params.dtype)
        if xp is not np:
            self._device = {
                "lr": xp.zeros((1,), dtype=params.dtype),
                "step_state": xp.zeros((2,), dtype=np.int32),
            }
            self._device_lr = None
            self._allocate_device(xp, params)

    def _allocate_device(self, xp: ModuleType, params: Array) -> None:
        """GPU only: set the device step counter, add buffers, compile the kernels."""
        self._device["step_state"][0] = self.step_count

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
            if array_module(value) is not array_module(params) or (
                array_device(value) != array_device(params)
            ):
                raise DeviceError(
                    f"{type(self).__name__}.step: optimizer state {name!r} is on "
                    f"{_where(value)}, got params on {_where(params)}"
                )

    def reset(self) -> None:
        """Forget all state (and the buffer size): the next step is a first step."""
        self.step_count = 0
        self._size = None
        self._state = dict.fromkeys(self._state_names)
        self._scratch = []
        self._device = {}
        self._device_lr = None
        self._allocated = False

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
        if not isinstance(arrays, dict) or set(arrays) != set(self._state_names):
            raise ConfigError(
                f"{who}: state['state'] must be a dict with keys "
                f"{sorted(self._state_names)}, got {arrays!r}"
            )
        step_count = _count(who, "step_count", state["step_count"], minimum=0)
        size = state["num_params"]
        if size is not None:
            size = _count(who, "num_params", size, minimum=0)
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

    _state_names = ("momentum_buffer",)

    def __init__(
        self,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        *,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        super().__init__(max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite)
        self._set_hyperparameters(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
        )

    @property
    def momentum(self) -> float:
        """Momentum factor μ (>= 0; 0 disables the buffer)."""
        return self._momentum

    @property
    def dampening(self) -> float:
        """Dampening τ in [0, 1] of the gradient term in the momentum update."""
        return self._dampening

    @property
    def nesterov(self) -> bool:
        """Whether the step uses g + μ·b (Nesterov) instead of b."""
        return self._nesterov

    @property
    def weight_decay(self) -> float:
        """L2 penalty λ (>= 0), added to the gradient as λ·p."""
        return self._weight_decay

    def hyperparameters(self) -> dict[str, object]:
        """``lr``, ``momentum``, ``dampening``, ``nesterov``, ``weight_decay`` and the guards."""
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
            **self._guards(),
        }

    def _set_hyperparameters(self, **values: Any) -> None:
        lr = _nonneg("SGD", "lr", values["lr"])
        momentum = _nonneg("SGD", "momentum", values["momentum"])
        dampening = _unit("SGD", "dampening", values["dampening"], closed=True)
        nesterov = values["nesterov"]
        if not isinstance(nesterov, (bool, np.bool_)):
            raise ConfigError(f"SGD: nesterov must be a bool, got {nesterov!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ConfigError(
                "SGD: nesterov requires momentum > 0 and dampening == 0, "
                f"got momentum={momentum} and dampening={dampening}"
            )
        weight_decay = _nonneg("SGD", "weight_decay", values["weight_decay"])
        self.lr = lr
        self._momentum = momentum
        self._dampening = dampening
        self._nesterov = bool(nesterov)
        self._weight_decay = weight_decay

    def _scratch_count(self) -> int:
        return 2 if self.weight_decay != 0 else 1

    def _allocate_device(self, xp: ModuleType, params: Array) -> None:
        # The kernel copies g into the momentum buffer on the step that finds the
        # device counter at 0, so the buffer exists before the first step (a
        # captured graph cannot allocate) and the counter says whether it is live.
        from .kernels import get_kernel  # GPU only

        started = self._state["momentum_buffer"] is not None
        if self.momentum != 0 and not started:
            self._state["momentum_buffer"] = xp.zeros(params.shape, dtype=params.dtype)
        self._device["step_state"][0] = max(self.step_count, 1) if started else 0
        get_kernel("sgd_step", params.dtype)

    def state_dict(self) -> dict[str, object]:
        state = super().state_dict()
        if self.step_count == 0:  # a GPU buffer allocated ahead of the first step
            state["state"] = {"momentum_buffer": None}
        return state

    def _launch(self, params: Array, grads: Array) -> None:
        from .kernels import sgd_step  # GPU only

        sgd_step(
            params, grads, self._state["momentum_buffer"], self._device["lr"],
            self._device["step_state"], momentum=self.momentum, dampening=self.dampening,
            weight_decay=self.weight_decay, nesterov=self.nesterov,
        )

    def _update(self, xp: ModuleType, params: Array, grads: Array) -> None:
        tmp = self._scratch[0]
        g = grads
        if self.weight_decay != 0:
            g = self._scratch[1]
            xp.multiply(params, self.weight_decay, out=g)
            xp.add(grads, g, out=g)
        if self.momentum != 0:
            buf = self._state["momentum_buffer"]
            if buf is None:
                buf = xp.empty(params.shape, dtype=params.dtype)
                xp.copyto(buf, g)
                self._state["momentum_buffer"] = buf
            else:
                xp.multiply(buf, self.momentum, out=buf)
                xp.multiply(g, 1.0 - self.dampening, out=tmp)
                xp.add(buf, tmp, out=buf)
            if self.nesterov:
                xp.multiply(buf, self.momentum, out=tmp)
                xp.add(g, tmp, out=tmp)
                g = tmp
            else:
                g = buf
        xp.multiply(g, -self.lr, out=tmp)
        xp.add(params, tmp, out=params)


class Adam(Optimizer):
    """Adam with L2 weight decay folded into the gradient (PyTorch's ``Adam``).

    At step t (counted from 1), with moments m, v starting at 0::

        g ← g + λ·p
        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        p ← p − (η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
    """

    _state_names = ("exp_avg", "exp_avg_sq")
    _zero_init_state = True
    #: decoupled decay (AdamW): p ← p·(1 − η·λ) before the step, instead of g += λ·p
    _decoupled: ClassVar[bool] = False

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        super().__init__(max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite)
        self._set_hyperparameters(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    @property
    def betas(self) -> tuple[float, float]:
        """Decay rates (β₁, β₂), each in [0, 1), of the first and second moments."""
        return self._betas

    @property
    def eps(self) -> float:
        """ε (>= 0) added to the denominator."""
        return self._eps

    @property
    def weight_decay(self) -> float:
        """Weight decay λ (>= 0)."""
        return self._weight_decay

    def hyperparameters(self) -> dict[str, object]:
        """``lr``, ``betas``, ``eps``, ``weight_decay`` and the guards."""
        return {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            **self._guards(),
        }

    def _set_hyperparameters(self, **values: Any) -> None:
        who = type(self).__name__
        lr = _nonneg(who, "lr", values["lr"])
        betas = values["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ConfigError(f"{who}: betas must be a pair (beta1, beta2), got {betas!r}")
        beta1 = _unit(who, "betas[0]", betas[0], closed=False)
        beta2 = _unit(who, "betas[1]", betas[1], closed=False)
        eps = _nonneg(who, "eps", values["eps"])
        weight_decay = _nonneg(who, "weight_decay", values["weight_decay"])
        self.lr = lr
        self._betas = (beta1, beta2)
        self._eps = eps
        self._weight_decay = weight_decay

    def _scratch_count(self) -> int:
        return 2

    def _allocate_device(self, xp: ModuleType, params: Array) -> None:
        from .kernels import get_kernel  # GPU only

        super()._allocate_device(xp, params)
        self._device["scalars"] = xp.zeros((3,), dtype=params.dtype)
        get_kernel("adam_prepare", params.dtype)
        get_kernel("adam_step", params.dtype)

    def _launch(self, params: Array, grads: Array) -> None:
        from .kernels import adam_prepare, adam_step  # GPU only

        adam_prepare(
            self._device["step_state"], self._device["scalars"], self._device["lr"],
            betas=self.betas, weight_decay=self.weight_decay,
        )
        adam_step(
            params, grads, self._state["exp_avg"], self._state["exp_avg_sq"],
            self._device["scalars"], betas=self.betas, eps=self.eps,
            weight_decay=self.weight_decay, decoupled=self._decoupled,
        )

    def _update(self, xp: ModuleType, params: Array, grads: Array) -> None:
        beta1, beta2 = self.betas
        exp_avg = self._state["exp_avg"]
        exp_avg_sq = self._state["exp_avg_sq"]
        tmp, tmp2 = self._scratch
        g = grads
        if self._decoupled:
            xp.multiply(params, 1.0 - self.lr * self.weight_decay, out=params)
        elif self.weight_decay != 0:
            g = tmp
            xp.multiply(params, self.weight_decay, out=g)
            xp.add(grads, g, out=g)
        # m ← β₁·m + (1 − β₁)·g
        xp.multiply(exp_avg, beta1, out=exp_avg)
        xp.multiply(g, 1.0 - beta1, out=tmp2)
        xp.add(exp_avg, tmp2, out=exp_avg)
        # v ← β₂·v + (1 − β₂)·g·g
        xp.multiply(exp_avg_sq, beta2, out=exp_avg_sq)
        xp.multiply(g, 1.0 - beta2, out=tmp2)
        xp.multiply(tmp2, g, out=tmp2)
        xp.add(exp_avg_sq, tmp2, out=exp_avg_sq)
        t = self.step_count
        bias_correction1 = 1.0 - beta1**t
        bias_correction2 = 1.0 - beta2**t
        step_size = self.lr / bias_correction1
        # denom = √v / √(1 − β₂ᵗ) + ε   (g is no longer needed: tmp is free)
        xp.sqrt(exp_avg_sq, out=tmp)
        xp.divide(tmp, math.sqrt(bias_correction2), out=tmp)
        xp.add(tmp, self.eps, out=tmp)
        # p ← p + (−step_size)·m / denom
        xp.multiply(exp_avg, -step_size, out=tmp2)
        xp.divide(tmp2, tmp, out=tmp2)
        xp.add(params, tmp2, out=params)


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
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        super().__init__(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
        )


# --- learning-rate schedules -----------------------------------------------------------
class LRSchedule(ABC):
    """Base class: sets ``optimizer.lr = get_lr(t)`` for a step count t = 0, 1, 2, ...

    The base learning rate η₀ is the optimizer's ``lr`` when the schedule is created;
    creating the schedule applies ``get_lr(0)``, and each :meth:`step` advances t by
    one and applies ``get_lr(t)``. Subclasses validate and store their own arguments
    before calling ``super().__init__`` and define :meth:`get_lr` and
    :meth:`hyperparameters`.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise ConfigError(
                f"{type(self).__name__}: optimizer must be a gpubackprop "
                f"Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.count = 0
        optimizer.lr = self.get_lr(0)

    @abstractmethod
    def get_lr(self, t: int) -> float:
        """The learning rate after t steps (a pure function of t)."""

    @abstractmethod
    def hyperparameters(self) -> dict[str, object]:
        """The schedule's own arguments (without the optimizer), for repr and state."""

    def _check_t(self, t: object) -> int:
        return _count(f"{type(self).__name__}.get_lr", "t", t, minimum=0)

    @property
    def last_lr(self) -> float:
        """The learning rate the schedule last applied: ``get_lr(count)``."""
        return self.get_lr(self.count)

    def step(self) -> None:
        """Advance one unit: ``count ← count + 1``; ``optimizer.lr ← get_lr(count)``."""
        self.count += 1
        self.optimizer.lr = self.get_lr(self.count)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args}, base_lr={self.base_lr!r}, count={self.count})"

    def state_dict(self) -> dict[str, object]:
        """``type``, the arguments, ``base_lr`` and ``count``."""
        return {
            "type": type(self).__name__,
            **self.hyperparameters(),
            "base_lr": self.base_lr,
            "count": self.count,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore ``base_lr`` and ``count`` (the arguments must match) and reapply the lr.

        Raises ConfigError for a snapshot of another schedule or other arguments.
        """
        who = f"{type(self).__name__}.load_state_dict"
        if state.get("type") != type(self).__name__:
            raise ConfigError(
                f"{who}: expected a {type(self).__name__} state, got type {state.get('type')!r}"
            )
        for key, value in self.hyperparameters().items():
            if state.get(key) != value:
                raise ConfigError(f"{who}: {key} must be {value!r}, got {state.get(key)!r}")
        self.base_lr = _nonneg(who, "base_lr", state.get("base_lr"))
        self.count = _count(who, "count", state.get("count"), minimum=0)
        self.optimizer.lr = self.get_lr(self.count)


class StepLR(LRSchedule):
    """Step decay: η(t) = η₀ · γ^⌊t / step_size⌋."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _count("StepLR", "step_size", step_size, minimum=1)
        self.gamma = _real("StepLR", "gamma", gamma)
        if self.gamma <= 0:
            raise ConfigError(f"StepLR: gamma must be > 0, got {self.gamma}")
        super().__init__(optimizer)

    def get_lr(self, t: int) -> float:
        """η₀ · γ^⌊t / step_size⌋."""
        return self.base_lr * self.gamma ** (self._check_t(t) // self.step_size)

    def hyperparameters(self) -> dict[str, object]:
        """``step_size``, ``gamma``."""
        return {"step_size": self.step_size, "gamma": self.gamma}


class CosineAnnealingLR(LRSchedule):
    """Cosine annealing, held at the floor after T_max.

    η(t) = η_min + (η₀ − η_min) · (1 + cos(π·t / T_max)) / 2  for t <= T_max, η_min after.
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        self.T_max = _count("CosineAnnealingLR", "T_max", T_max, minimum=1)
        self.eta_min = _nonneg("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer)

    def get_lr(self, t: int) -> float:
        """η_min + (η₀ − η_min)(1 + cos(π·min(t, T_max)/T_max)) / 2."""
        t = self._check_t(t)
        if t >= self.T_max:
            return self.eta_min
        cosine = 1.0 + math.cos(math.pi * t / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * cosine / 2

    def hyperparameters(self) -> dict[str, object]:
        """``T_max``, ``eta_min``."""
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class LinearWarmup(LRSchedule):
    """Linear warm-up over W = warmup_steps steps, then another schedule or η₀.

    η(t) = η₀ · (s + (1 − s) · t / W)  for t < W   (s = start_factor)
    η(t) = after.get_lr(t − W)         for t >= W  (η₀ without ``after``)

    ``after`` must wrap the same optimizer, be created first (so η₀ is its base) and
    not have stepped; this schedule keeps its count at t − W once t >= W.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        start_factor: float = 0.0,
        after: LRSchedule | None = None,
    ) -> None:
        self.warmup_steps = _count("LinearWarmup", "warmup_steps", warmup_steps, minimum=1)
        self.start_factor = _unit("LinearWarmup", "start_factor", start_factor, closed=True)
        if after is not None:
            if not isinstance(after, LRSchedule):
                raise ConfigError(
                    f"LinearWarmup: after must be an LRSchedule or None, got {type(after).__name__}"
                )
            if after.optimizer is not optimizer:
                raise ConfigError(
                    "LinearWarmup: after must wrap the same optimizer, "
                    "got a schedule of another optimizer"
                )
            if after.count != 0:
                raise ConfigError(
                    "LinearWarmup: after must not have stepped yet (count 0), "
                    f"got count {after.count}"
                )
        self.after = after
        super().__init__(optimizer)

    def get_lr(self, t: int) -> float:
        """η₀(s + (1 − s)t/W) during warm-up, then ``after.get_lr(t − W)`` or η₀."""
        t = self._check_t(t)
        if t < self.warmup_steps:
            factor = self.start_factor + (1.0 - self.start_factor) * t / self.warmup_steps
            return self.base_lr * factor
        if self.after is None:
            return self.base_lr
        return self.after.get_lr(t - self.warmup_steps)

    def step(self) -> None:
        """Advance one unit; past the warm-up, ``after``'s count follows as t − W."""
        super().step()
        if self.after is not None and self.count >= self.warmup_steps:
            self.after.count = self.count - self.warmup_steps

    def hyperparameters(self) -> dict[str, object]:
        """``warmup_steps``, ``start_factor``."""
        return {"warmup_steps": self.warmup_steps, "start_factor": self.start_factor}

    def __repr__(self) -> str:
        return (
            f"LinearWarmup(warmup_steps={self.warmup_steps!r}, "
            f"start_factor={self.start_factor!r}, after={self.after!r}, "
            f"base_lr={self.base_lr!r}, count={self.count})"
        )

    def state_dict(self) -> dict[str, object]:
        """As :meth:`LRSchedule.state_dict`, plus ``after`` (its state dict, or None)."""
        after = None if self.after is None else self.after.state_dict()
        return {**super().state_dict(), "after": after}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """As :meth:`LRSchedule.load_state_dict`, restoring ``after`` first.

        Raises ConfigError when the snapshot has an ``after`` and this schedule has
        none, or the reverse.
        """
        after_state = state.get("after")
        if (after_state is None) != (self.after is None):
            raise ConfigError(
                "LinearWarmup.load_state_dict: after must be "
                f"{'None' if self.after is None else 'a schedule state'}, "
                f"got {after_state!r}"
            )
        if self.after is not None:
            if not isinstance(after_state, dict):
                raise ConfigError(
                    "LinearWarmup.load_state_dict: after must be a dict, "
                    f"got {type(after_state).__name__}"
                )
            self.after.load_state_dict(after_state)
        super().load_state_dict(state)
