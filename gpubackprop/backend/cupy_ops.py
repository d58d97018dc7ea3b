"""The engine's ops on the GPU: cuBLAS GEMMs and the fused kernels of ``kernels/``.

:class:`CupyOps` inherits every op from the NumPy reference
(:class:`~gpubackprop.backend.numpy_ops.NumpyOps`) and overrides the ones with a
faster GPU path; the math is the reference's and the tests compare the two:

* GEMMs on gpubackprop's own cuBLAS handle (:mod:`.cublas`), eager or captured;
* a Dense layer's bias + activation in one kernel forward, δ ⊙ f′ with the bias
  gradient Δᵀ1 in one deterministic kernel backward;
* each loss: gradient and terms in one kernel, value by one fixed-order reduction;
* an optimizer update: one fused kernel (two for Adam) reading η and the step
  counter from device memory, so a captured graph follows a schedule;
* the pointwise part of an LSTM or GRU step: one kernel each way
  (:mod:`gpubackprop.kernels_recurrent`).

Nothing allocates once a shape has been seen (a step can be captured): loss scratch
buffers and the loss value are cached by (purpose, shape, dtype); the value returned
is that buffer, valid until the next loss of the same shape.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .. import kernels, kernels_norm, kernels_recurrent
from ..activations import ActivationSpec
from ..arrays import Array
from .cublas import CublasHandle
from .numpy_ops import NumpyOps


class CupyOps(NumpyOps):
    """The engine's ops for one GPU (one instance per device and GEMM precision).

    ``precision``: ``"fp32"`` (IEEE float32 GEMMs) or ``"tf32"`` (float32 GEMMs on
    TF32 tensor cores); it sets the math mode of this instance's cuBLAS handle and
    nothing else (elementwise kernels and float64 are the same in both).
    """

    def __init__(self, cupy: ModuleType, device_id: int, precision: str = "fp32") -> None:
        self.xp = cupy
        self.device_id = device_id
        self.precision = precision
        self._blas: CublasHandle | None = None
        super().__init__()

    @property
    def blas(self) -> CublasHandle:
        """The cuBLAS handle of this device (created on first use)."""
        if self._blas is None:
            with self.xp.cuda.Device(self.device_id):
                self._blas = CublasHandle(self.xp, self.precision)
        return self._blas

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Array:
        """A new uninitialised array on this ops' GPU (what :meth:`scratch` allocates)."""
        with self.xp.cuda.Device(self.device_id):
            return self.xp.empty(shape, dtype=dtype)

    def _value_buffers(self, n_terms: int, dtype: Any) -> tuple[Array, Array]:
        """(value, reduction workspace) for a loss summed over ``n_terms`` terms."""
        workspace = self.scratch(
            "loss_workspace", (kernels.sum_reduce_workspace_size(n_terms),), dtype
        )
        return self.scratch("loss_value", (), dtype), workspace

    # --- linear algebra --------------------------------------------------------------
    def matmul(
        self, a: Array, b: Array, out: Array, *, trans_a: bool = False, trans_b: bool = False
    ) -> Array:
        return self.blas.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b)

    def column_sum(self, x: Array, out: Array) -> Array:
        return kernels.column_sum(x, out)

    # --- activations -------------------------------------------------------------------
    def activation_forward(self, act: ActivationSpec, z: Array, out: Array) -> Array:
        """out = f(z) by the fused kernel; an array of any shape that is C-contiguous
        (with ``out``) goes through it as a (1, n) view. Others take the reference."""
        if not (z.flags.c_contiguous and out.flags.c_contiguous):
            return super().activation_forward(act, z, out)
        if z.ndim != 2:
            kernels.bias_act_forward(act.name, z.reshape(1, -1), None, out.reshape(1, -1))
            return out
        return kernels.bias_act_forward(act.name, z, None, out)

    def activation_backward(
        self, act: ActivationSpec, delta: Array, saved: Array, out: Array
    ) -> Array:
        """out = delta ⊙ f′ by the fused kernel (any shape); non-contiguous arrays take
        the reference."""
        arrays = (delta, out) if saved is None else (delta, saved, out)
        if all(x.flags.c_contiguous for x in arrays):
            return kernels.act_backward(act.name, delta, saved, out)
        return super().activation_backward(act, delta, saved, out)

    def bias_activation_forward(
        self, act: ActivationSpec, z: Array, bias: Array | None, out: Array
    ) -> Array:
        if act.is_identity and bias is None and out is z:
            return out
        return kernels.bias_act_forward(act.name, z, bias, out)

    def activation_backward_bias_grad(
        self, act: ActivationSpec, delta: Array, saved: Array, dz: Array, db: Array | None
    ) -> Array:
        if db is None:
            return delta if act.is_identity else self.activation_backward(act, delta, saved, dz)
        if act.is_identity:
            kernels.column_sum(delta, db)
            return delta
        kernels.act_backward_colsum(act.name, delta, saved, dz, db)
        return dz

    # --- losses ---------------------------------------------------------------------------
    def mse(self, pred: Array, target: Array, grad: Array, *, mean: bool) -> Array:
        squares = self.scratch("mse_squares", pred.shape, pred.dtype)
        value, workspace = self._value_buffers(pred.size, pred.dtype)
        scale = 1.0 / pred.size if mean else 1.0
        kernels.mse_grad(pred, target, grad, squares, scale=scale, value=value, workspace=workspace)
        return value

    def softmax_cross_entropy_labels(self, logits: Array, labels: Array, grad: Array) -> Array:
        row_loss = self.scratch("xent_rows", (logits.shape[0],), logits.dtype)
        value, workspace = self._value_buffers(logits.shape[0], logits.dtype)
        kernels.softmax_xent_labels(
            logits, labels, grad, row_loss, value=value, workspace=workspace
        )
        return value

    def softmax_cross_entropy_probs(self, logits: Array, probs: Array, grad: Array) -> Array:
        row_loss = self.scratch("xent_rows", (logits.shape[0],), logits.dtype)
        value, workspace = self._value_buffers(logits.shape[0], logits.dtype)
        kernels.softmax_xent_probs(logits, probs, grad, row_loss, value=value, workspace=workspace)
        return value

    def bce_with_logits(self, logits: Array, target: Array, grad: Array) -> Array:
        terms = self.scratch("bce_terms", logits.shape, logits.dtype)
        value, workspace = self._value_buffers(logits.size, logits.dtype)
        kernels.bce_logits(logits, target, grad, terms, value=value, workspace=workspace)
        return value

    # --- optimizers -------------------------------------------------------------------------
    def optimizer_workspace(
        self, kind: str, params: Array, *, scratch: int, steps: int
    ) -> dict[str, Array]:
        """No scratch on the GPU: ``"lr"`` (one element, η, read by the kernels at every
        launch), ``"step_state"`` (int32 [steps, 0]: the kernels' step counter) and for
        Adam ``"scalars"`` (the (3,) per-step scalars of ``kernels.adam_prepare``).
        Compiles the kernels of ``kind`` so that no later step compiles."""
        xp = self.xp
        with xp.cuda.Device(self.device_id):
            work = {
                "lr": xp.zeros((1,), dtype=params.dtype),
                "step_state": xp.array([steps, 0], dtype=np.int32),
            }
            if kind == "adam":
                work["scalars"] = xp.zeros((3,), dtype=params.dtype)
        names = ("adam_prepare", "adam_step") if kind == "adam" else ("sgd_step",)
        for name in names:
            kernels.get_kernel(name, params.dtype)
        return work

    def set_learning_rate(self, work: dict[str, Array], lr: float) -> None:
        work["lr"].fill(lr)

    def sgd_step(
        self, params: Array, grads: Array, momentum_buffer: Array | None,
        work: dict[str, Array], *, lr: float, first: bool, **hyper: Any,
    ) -> Array:
        """As the reference (``hyper``: its other arguments), but η and ``first`` come from
        ``work`` on the device (not from the host), so a CUDA graph can record it."""
        return kernels.sgd_step(
            params, grads, momentum_buffer, work["lr"], work["step_state"], **hyper
        )

    def adam_step(
        self, params: Array, grads: Array, exp_avg: Array, exp_avg_sq: Array,
        work: dict[str, Array], *, lr: float, step: int, **hyper: Any,
    ) -> Array:
        """As the reference (``hyper``: its other arguments), but η and t come from
        ``work`` on the device (not from the host), so a CUDA graph can record both launches."""
        return kernels.adam_update(
            params, grads, exp_avg, exp_avg_sq, work["lr"], work["step_state"],
            work["scalars"], **hyper,
        )

    # --- norm: LayerNorm and Dropout (kernels/norm.cu, kernels/dropout.cu) -------------------
    def layer_norm_forward(
        self, x: Array, weight: Array, bias: Array, out: Array, mean: Array, rstd: Array,
        *, eps: float,
    ) -> Array:
        """As the reference, in one fused launch (a warp per row, fixed order)."""
        return kernels_norm.layer_norm_forward(x, weight, bias, out, mean, rstd, eps)

    def layer_norm_backward(
        self, delta: Array, x: Array, weight: Array, mean: Array, rstd: Array,
        dx: Array | None, dweight: Array, dbias: Array,
    ) -> Array | None:
        """As the reference, in one launch (rows for dx, column strips for the parameters)."""
        return kernels_norm.layer_norm_backward(delta, x, weight, mean, rstd, dx, dweight, dbias)

    def dropout_forward(
        self, x: Array, out: Array, mask: Array, state: Array, *, threshold: int, scale: float,
        offset: int = 0,
    ) -> Array:
        """As the reference; the step counter is read and advanced on the device."""
        return kernels_norm.dropout_forward(
            x, out, mask, state, threshold=threshold, scale=scale, offset=offset
        )

    def dropout_backward(self, delta: Array, mask: Array, dx: Array, *, scale: float) -> Array:
        return kernels_norm.dropout_backward(delta, mask, dx, scale=scale)


    # --- rnn: one fused kernel per LSTM / GRU step, each way ------------------------------
    def lstm_cell_forward(
        self, gates: Array, hh: Array, c_prev: Array, c: Array, h: Array, tanh_c: Array
    ) -> Array:
        return kernels_recurrent.lstm_cell_forward(gates, hh, c_prev, c, h, tanh_c)

    def lstm_cell_backward(
        self, gates: Array, c_prev: Array, tanh_c: Array, dh_out: Array, dh_next: Array,
        dc: Array, dgates: Array,
    ) -> Array:
        return kernels_recurrent.lstm_cell_backward(
            gates, c_prev, tanh_c, dh_out, dh_next, dc, dgates
        )

    def gru_cell_forward(
        self, gates: Array, hh: Array, bias_hh: Array, h_prev: Array, h: Array, hn: Array
    ) -> Array:
        return kernels_recurrent.gru_cell_forward(gates, hh, bias_hh, h_prev, h, hn)

    def gru_cell_backward(
        self, gates: Array, hn: Array, h_prev: Array, dh_out: Array, dh_rec: Array,
        dh_carry: Array, dgx: Array, dgh: Array,
    ) -> Array:
        return kernels_recurrent.gru_cell_backward(
            gates, hn, h_prev, dh_out, dh_rec, dh_carry, dgx, dgh
        )

    # --- seq: embedding rows ------------------------------------------------------------------
    def arange(self, n: int, dtype: Any) -> Array:
        """A cached device array 0, 1, ..., n − 1 of ``dtype`` (built once, never written)."""
        key = ("arange", (n,), np.dtype(dtype).name)
        values = self._scratch.get(key)
        if values is None:
            with self.xp.cuda.Device(self.device_id):
                values = self._scratch[key] = self.xp.arange(n, dtype=dtype)
        return values

    def scatter_add_rows(self, ids: Array, delta: Array, out: Array) -> Array:
        """out = Hᵀ Δ, with H[i, k] = [ids[i] = k] the (N, V) one-hot matrix: one cuBLAS
        GEMM, deterministic (no float atomics, a fixed summation order) and capturable
        (H and the column ids are cached buffers). Costs N·V elements of memory and
        2·N·V·D flops: fine for vocabularies up to some ten thousands."""
        vocab = out.shape[0]
        onehot = self.scratch("onehot", (ids.shape[0], vocab), delta.dtype)
        self.xp.equal(ids[:, None], self.arange(vocab, ids.dtype)[None, :], out=onehot)
        return self.matmul(onehot, delta, out, trans_a=True)

__all__ = ["CupyOps"]
