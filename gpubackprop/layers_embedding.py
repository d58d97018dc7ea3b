"""The :class:`Embedding` layer: integer token ids to learned vectors.

Forward is a row gather and backward a deterministic scatter-add of the output
gradient into the rows that were gathered (no float atomics on either device;
see :meth:`~gpubackprop.backend.numpy_ops.NumpyOps.scatter_add_rows`)::

    out[b, t] = W[ids[b, t]]                dW[k] = Σ_{(b, t): ids[b, t] = k} Δ[b, t]

The ids are integers: there is no gradient with respect to them.
"""

from __future__ import annotations

import numpy as np

from .arrays import Array, as_rows
from .checks import check_int
from .errors import DTypeError, LabelError, ShapeError
from .layers import Layer


class Embedding(Layer):
    """A lookup table ``out[..., :] = weight[ids[...], :]`` (PyTorch's ``nn.Embedding``).

    Args:
        num_embeddings: size of the vocabulary V; ids must lie in [0, V).
        embedding_dim: width D of each vector.

    Takes integer ids of shape (B,) or (B, T) and returns (B, D) or (B, T, D). The
    parameter ``weight`` has shape (V, D), initialised N(0, 1) as in PyTorch.
    Backward: dW[k] = Σ of Δ over the positions whose id is k (ordered, deterministic).
    An id outside [0, V) raises :class:`~gpubackprop.errors.LabelError` naming the
    layer, the id, its position and the valid range.
    """

    input_kind = "tokens"

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings = check_int("Embedding: num_embeddings", num_embeddings)
        self.embedding_dim = check_int("Embedding: embedding_dim", embedding_dim)
        self._ids: Array | None = None

    _BACKWARD_STATE = ("_ids",)

    def describe(self) -> str:
        return f"Embedding {self.num_embeddings}x{self.embedding_dim}"

    def output_features(self, input_features: int | None) -> int:
        return self.embedding_dim

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("weight", (self.num_embeddings, self.embedding_dim))]

    def init_params(self, rng: np.random.Generator, host: dict[str, np.ndarray]) -> None:
        """W ~ N(0, 1), PyTorch's initialisation of ``nn.Embedding``."""
        host["weight"][...] = rng.standard_normal(host["weight"].shape)

    def check_input_values(self, x: Array) -> None:
        """DTypeError unless the ids ``x`` are integers; LabelError naming the first id
        outside [0, V) and its position (reads the ids: a host sync on a GPU)."""
        ids = x
        if ids.dtype.kind not in "iu":
            raise DTypeError(
                f"{self.label}: token ids must be integers, got dtype {ids.dtype} "
                "(convert with ids.astype(np.int64))"
            )
        if not ids.size:
            return
        bad = (ids < 0) | (ids >= self.num_embeddings)
        if bool(bad.any()):
            flat = int(bad.reshape(-1).argmax())
            position = tuple(int(i) for i in np.unravel_index(flat, ids.shape))
            value = int(ids.reshape(-1)[flat])
            raise LabelError(
                f"{self.label}: token id {value} at position {position} of the ids of "
                f"shape {tuple(ids.shape)} is out of range (expected 0 <= id < "
                f"{self.num_embeddings})"
            )

    def forward(self, x: Array) -> Array:
        """out = W[ids] for checked integer ids of shape (B,) or (B, T)."""
        assert self.backend is not None
        key = tuple(x.shape)
        ws = self._workspace(key, lambda: {"out": (*key, self.embedding_dim)})
        self.backend.ops.gather_rows(self.params["weight"], x, ws["out"])
        self._ids = x
        return ws["out"]

    def backward(self, delta: Array, need_input_grad: bool) -> Array | None:
        """dW[k] = Σ_{ids = k} Δ (overwrites the gradient); no input gradient: None."""
        if self._ids is None:
            raise ShapeError(f"{self.label}: backward called before forward")
        assert self.backend is not None
        self._check_delta(delta, (*self._ids.shape, self.embedding_dim))
        self.backend.ops.scatter_add_rows(
            self._ids.reshape(-1), as_rows(delta), self.grads["weight"]
        )
        return None


__all__ = ["Embedding"]
