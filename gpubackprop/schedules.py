"""Learning-rate schedules: each sets ``optimizer.lr = get_lr(t)`` for t = 0, 1, 2, ...

A schedule wraps an optimizer (:mod:`gpubackprop.optim`, which re-exports these
classes) and sets its ``lr``::

    sched = CosineAnnealingLR(opt, T_max=100)
    for epoch in range(100):
        ...                          # opt.step(params, grads) per batch
        sched.step()                 # lr for the next epoch

On a GPU the optimizer copies the new ``lr`` to the device before the next
update, so a step recorded in a CUDA graph follows the schedule too.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from .checks import check_int, check_nonneg, check_real, check_unit
from .errors import ConfigError

if TYPE_CHECKING:
    from .optim import Optimizer

__all__ = ["CosineAnnealingLR", "LRSchedule", "LinearWarmup", "StepLR"]


class LRSchedule(ABC):
    """Base class: sets ``optimizer.lr = get_lr(t)`` for a step count t = 0, 1, 2, ...

    The base learning rate η₀ is the optimizer's ``lr`` when the schedule is created;
    creating the schedule applies ``get_lr(0)``, and each :meth:`step` advances t by
    one and applies ``get_lr(t)``. Subclasses validate and store their own arguments
    before calling ``super().__init__`` and define :meth:`get_lr` and
    :meth:`hyperparameters`.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        # any object with a real ``lr`` (what a schedule sets); checked by duck type,
        # since optim.py imports this module to re-export the schedules
        lr = getattr(optimizer, "lr", None)
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
            raise ConfigError(
                f"{type(self).__name__}: optimizer must be a gpubackprop "
                f"Optimizer (an object with a float lr), got {type(optimizer).__name__}"
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
        return check_int(f"{type(self).__name__}.get_lr: t", t, minimum=0)

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
        self.base_lr = check_nonneg(f"{who}: base_lr", state.get("base_lr"))
        self.count = check_int(f"{who}: count", state.get("count"), minimum=0)
        self.optimizer.lr = self.get_lr(self.count)


class StepLR(LRSchedule):
    """Step decay: η(t) = η₀ · γ^⌊t / step_size⌋."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = check_int("StepLR: step_size", step_size)
        self.gamma = check_real("StepLR: gamma", gamma)
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
        self.T_max = check_int("CosineAnnealingLR: T_max", T_max)
        self.eta_min = check_nonneg("CosineAnnealingLR: eta_min", eta_min)
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
        self.warmup_steps = check_int("LinearWarmup: warmup_steps", warmup_steps)
        self.start_factor = check_unit("LinearWarmup: start_factor", start_factor, closed=True)
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
