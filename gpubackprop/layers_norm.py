"""Per-position layers: :class:`LayerNorm` and :class:`Dropout`.

Both act on the last axis of an input of any rank ≥ 2, ``(*lead, F)``, through a
``(prod(lead), F)`` reshape view (no copy for C-contiguous input), and keep their
work buffers per leading shape ``x.shape[:-1]``.

LayerNorm (PyTorch's formula, biased variance), per row x of F features::

    μ = mean(x)   σ² = mean((x − μ)²)   r = 1/√(σ² + ε)   x̂ = (x − μ)·r
    y = x̂ ⊙ weight + bias
    dx = r·(g − mean(g) − x̂·mean(g ⊙ x̂)),  g = Δ ⊙ weight
    dweight = Σ_rows Δ ⊙ x̂      dbias = Σ_rows Δ

Dropout (inverted), in training mode only; eval mode is the identity::

    keep_i = u_i ≥ round(p·2³²)     y_i = x_i/(1 − p) if keep_i else 0
    dx_i = Δ_i/(1 − p) if keep_i else 0          (the forward's mask, kept as uint8)

u_i is a Philox4x32-10 word (:mod:`gpubackprop.philox`) of counter (i div 4, step) under
the layer's 64-bit seed, i counted from the global batch's first row (the owner model's
``row_offset`` r: element i of the input is counter r·(elements per row) + i); the
generator state [seed, step] is a small uint64 array on the model's device, advanced by
every training-mode forward on the device itself (so a captured CUDA graph draws a new
mask at every replay).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .arrays import Array
from .backend import Backend
from .checks import check_int
from .errors import ConfigError, ShapeError
from .layers import Layer
from .params import FlatParameters
from .philox import keep_threshold

_UINT64_LIMIT = 2**64


class LayerNorm(Layer):
    """Layer normalisation over the last axis: ``y = (x − μ)/√(σ² + ε) ⊙ weight + bias``.

    Args:
        normalized_shape: F, the size of the last axis (an int, or a tuple of one int as
            in PyTorch; only the last axis can be normalised).
        eps: ε added to the biased variance σ².

    Parameters ``weight`` (F,) = 1 and ``bias`` (F,) = 0 at initialisation, as in
    ``torch.nn.LayerNorm``; the formulas are in :mod:`gpubackprop.layers_norm`.
    """

    input_kind = "features"

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5) -> None:
        super().__init__()
        if isinstance(normalized_shape, (tuple, list)):
            if len(normalized_shape) != 1:
                raise ConfigError(
                    f"LayerNorm: only the last axis is supported; normalized_shape must be an "
                    f"int or a tuple of one int, got {tuple(normalized_shape)}"
                )
            normalized_shape = normalized_shape[0]
        self.features = check_int("LayerNorm: normalized_shape", normalized_shape)
        if not (isinstance(eps, (int, float)) and float(eps) > 0.0):
            raise ConfigError(f"LayerNorm: eps must be a number > 0, got {eps!r}")
        self.eps = float(eps)
        self._input: Array | None = None
        self._mean: Array | None = None
        self._rstd: Array | None = None
        self._lead: tuple[int, ...] = ()

    _BACKWARD_STATE = ("_input", "_mean", "_rstd", "_lead")

    def describe(self) -> str:
        return f"LayerNorm {self.features}" + ("" if self.eps == 1e-5 else f", eps={self.eps:g}")

    @property
    def input_features(self) -> int:
        return self.features

    def output_features(self, input_features: int | None) -> int:
        return self.features

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("weight", (self.features,)), ("bias", (self.features,))]

    def init_params(self, rng: np.random.Generator, host: dict[str, np.ndarray]) -> None:
        host["weight"][...] = 1.0
        host["bias"][...] = 0.0

    def _buffers(self, lead: tuple[int, ...]) -> dict[str, Array]:
        assert self.workspaces is not None
        shape = (*lead, self.features)
        return self.workspaces.get(
            lead, lambda: {"out": shape, "dx": shape, "mean": lead, "rstd": lead}, self.dtype
        )

    def forward(self, x: Array) -> Array:
        assert self.backend is not None
        if x.ndim < 2 or x.shape[-1] != self.features:
            raise ShapeError(
                f"{self.label}: expected an input of shape (..., {self.features}), "
                f"got shape {tuple(x.shape)}"
            )
        lead = tuple(x.shape[:-1])
        ws = self._buffers(lead)
        f = self.features
        self.backend.ops.layer_norm_forward(
            x.reshape(-1, f), self.params["weight"], self.params["bias"],
            ws["out"].reshape(-1, f), ws["mean"].reshape(-1), ws["rstd"].reshape(-1),
            eps=self.eps,
        )
        self._input, self._lead = x, lead
        self._mean, self._rstd = ws["mean"].reshape(-1), ws["rstd"].reshape(-1)
        return ws["out"]

    def backward(self, delta: Array, need_input_grad: bool) -> Array | None:
        if self._input is None or self._mean is None or self._rstd is None:
            raise ShapeError(f"{self.label}: backward called before forward")
        assert self.backend is not None
        self._check_delta(delta, (*self._lead, self.features))
        ws = self._buffers(self._lead)
        f = self.features
        self.backend.ops.layer_norm_backward(
            delta.reshape(-1, f), self._input.reshape(-1, f), self.params["weight"],
            self._mean, self._rstd, ws["dx"].reshape(-1, f) if need_input_grad else None,
            self.grads["weight"], self.grads["bias"],
        )
        return ws["dx"] if need_input_grad else None


def dropout_seed(seed: Any, index: int) -> int:
    """The 64-bit Philox key of the Dropout layer at ``index`` of a model seeded ``seed``:
    ``SeedSequence([seed, index])``'s first uint64 for an int seed ≥ 0 (the same on every
    run and device), else one from fresh entropy."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        sequence = np.random.SeedSequence([int(seed), int(index)])
    else:
        sequence = np.random.SeedSequence()
    return int(sequence.generate_state(1, np.uint64)[0])


class Dropout(Layer):
    """Inverted dropout: in training mode each element is zeroed with probability p and
    the kept ones are scaled by 1/(1 − p); in eval mode the layer is the identity.

    Args:
        p: the drop probability, 0 ≤ p < 1 (0: the identity in both modes).

    The mask of element i at step s is decided by Philox4x32-10 (see
    :mod:`gpubackprop.philox`): keep iff its uint32 word ≥ round(p·2³²), i counted from
    the owner model's ``row_offset`` (:meth:`counter_base`; data-parallel shards). The key is
    :func:`dropout_seed` (the model's seed and this layer's index; a standalone layer's
    ``build(seed=...)``); s counts the training-mode forwards (:attr:`state` on the
    device: [seed, step]). Backward uses the mask of the last forward (kept as uint8).
    """

    input_kind = "features"

    def __init__(self, p: float) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not (
            0.0 <= float(p) < 1.0
        ):
            raise ConfigError(f"Dropout: p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        self.threshold = keep_threshold(self.p)
        self.scale = 1.0 / (1.0 - self.p)
        #: the generator state [seed, step, 0] (uint64, on the model's device) once attached;
        #: the last word is the GPU kernel's blocks-done counter (0 between launches)
        self.state: Array | None = None
        self._mask: Array | None = None
        self._shape: tuple[int, ...] | None = None

    _BACKWARD_STATE = ("_mask", "_shape")

    def describe(self) -> str:
        return f"Dropout p={self.p:g}"

    def attach(
        self, owner: FlatParameters, index: int, backend: Backend, dtype: np.dtype,
        params: dict[str, Array], grads: dict[str, Array],
    ) -> None:
        """As :meth:`Layer.attach`, and the generator state [dropout_seed(owner's seed,
        index), 0, 0] on the device."""
        super().attach(owner, index, backend, dtype, params, grads)
        host = np.array([dropout_seed(owner.seed, index), 0, 0], dtype=np.uint64)
        with backend.activate():
            self.state = backend.xp.asarray(host)

    def generator_state(self) -> tuple[int, int]:
        """(seed, step): the Philox key and the number of training-mode forwards so far."""
        if self.state is None:
            raise ConfigError(f"{self.label} has no generator yet: put it in a model or build it")
        assert self.backend is not None
        seed, step = (int(v) for v in self.backend.to_numpy(self.state[:2]))
        return seed, step

    def set_generator_state(self, state: tuple[int, ...]) -> None:
        """Make (seed, step) the state the next training-mode forward draws from."""
        if self.state is None:
            raise ConfigError(f"{self.label} has no generator yet: put it in a model or build it")
        values = tuple(state)
        if len(values) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            and 0 <= v < _UINT64_LIMIT for v in values
        ):
            raise ConfigError(
                f"{self.label}: a generator state is (seed, step), two ints in [0, 2**64), "
                f"got {state!r}"
            )
        assert self.backend is not None
        with self.backend.activate():
            self.state[:2] = self.backend.xp.asarray(np.array(values, dtype=np.uint64))

    def advance_generator(self) -> None:
        """step ← step + 1 (mod 2⁶⁴) on the device, as a training-mode forward with p > 0
        does (p = 0 draws nothing: the step stays)."""
        if self.state is None:
            raise ConfigError(f"{self.label} has no generator yet: put it in a model or build it")
        if self.p == 0.0:
            return
        assert self.backend is not None
        with self.backend.activate():
            self.state[1:2] += np.uint64(1)

    def _buffers(self, shape: tuple[int, ...]) -> dict[str, Array]:
        """Output, input gradient and uint8 mask of ``shape``, cached by the whole shape
        (the layer takes any width, so the leading shape alone does not fix them)."""
        assert self.workspaces is not None and self.dtype is not None
        dtype = self.dtype
        return self.workspaces.get(
            shape, lambda: {"out": (shape, dtype), "dx": (shape, dtype), "mask": (shape, np.uint8)}
        )

    def counter_base(self, shape: tuple[int, ...]) -> int:
        """The counter of the first element of an input of ``shape`` (B, ...): r·(elements
        per row), r = the owner's :attr:`~gpubackprop.params.FlatParameters.row_offset`
        (0 for a standalone layer), so rows r ... r+B−1 draw the masks they have in the
        whole batch."""
        rows = shape[0] if shape else 0
        if not rows or self.owner is None:
            return 0
        return self.owner.row_offset * (math.prod(shape) // rows)

    def forward(self, x: Array) -> Array:
        assert self.backend is not None and self.state is not None
        self._shape = tuple(x.shape)
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        ws = self._buffers(self._shape)
        self.backend.ops.dropout_forward(
            x, ws["out"], ws["mask"], self.state, threshold=self.threshold, scale=self.scale,
            offset=self.counter_base(x.shape),
        )
        self._mask = ws["mask"]
        return ws["out"]

    def backward(self, delta: Array, need_input_grad: bool) -> Array | None:
        if self._shape is None:
            raise ShapeError(f"{self.label}: backward called before forward")
        self._check_delta(delta, self._shape)
        if not need_input_grad:
            return None
        if self._mask is None:  # eval mode or p = 0: the identity
            return delta
        assert self.backend is not None
        dx = self._buffers(self._shape)["dx"]
        return self.backend.ops.dropout_backward(delta, self._mask, dx, scale=self.scale)


__all__ = ["Dropout", "LayerNorm", "dropout_seed"]
