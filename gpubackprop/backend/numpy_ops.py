"""The reference ops: every op the engine uses, written over an array module.

:class:`NumpyOps` is the definition of what each op computes. It is written
against ``self.xp`` (NumPy here) with preallocated outputs and in-place ufuncs,
so the CuPy backend (:mod:`.cupy_ops`) inherits every op unchanged and only
overrides the ones it has a faster GPU path for. A fused GPU kernel never
changes the math written here; the tests compare the two.

Conventions: activations are batch-major, A has shape (B, n); a weight W has
shape (out, in); the forward pass is Z = A Wᵀ + b.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..activations import ACTIVATIONS, ActivationSpec, times_nonzero
from ..arrays import Array
from ..philox import dropout_words

if TYPE_CHECKING:
    from .cpu_kernels import CompiledCells

#: elements per block of an optimizer update: a scratch block written by one pass is
#: read back from cache by the next (a whole large buffer would go through memory)
UPDATE_BLOCK = 1 << 17


def _blocks(params: Array, *others: Array | None) -> Iterator[tuple[Any, ...]]:
    """``params`` and ``others`` (sized like it, or scratch arrays of one block; None
    stays None) as views over consecutive blocks of :data:`UPDATE_BLOCK` elements, one
    tuple per block: the arrays themselves when ``params`` fits in one block."""
    n = params.shape[0]
    if n <= UPDATE_BLOCK:
        yield (params, *others)
        return
    for start in range(0, n, UPDATE_BLOCK):
        stop = min(n, start + UPDATE_BLOCK)
        yield tuple(
            None if a is None else a[start:stop] if a.shape[0] == n else a[: stop - start]
            for a in (params, *others)
        )


class NumpyOps:
    """Every op of the engine, NumPy reference implementation."""

    xp: ModuleType = np

    def __init__(
        self, cpu_gemm: Callable[[Array, Array, Array], bool] | None = None,
        cpu_cells: CompiledCells | None = None,
    ) -> None:
        self._scratch: dict[tuple[str, tuple[int, ...], Any], Array] = {}
        #: a faster GEMM for 2-D NumPy operands (:mod:`.cpu_blas`: MKL), None: NumPy's
        #: matmul. Called as ``cpu_gemm(a, b, out)``; it returns False for arrays it does
        #: not take, which then go to ``xp.matmul``
        self.cpu_gemm = cpu_gemm
        #: the compiled one-pass LSTM / GRU cell (:mod:`.cpu_kernels`), None: the NumPy
        #: passes below. Its ops return False for arrays they do not take, which then go
        #: through the NumPy passes
        self.cpu_cells = cpu_cells

    def scratch(self, purpose: str, shape: tuple[int, ...], dtype: Any) -> Array:
        """A cached work array for ``purpose`` (contents undefined), allocated once per
        shape and dtype: an op called once per time step takes its temporaries here
        instead of allocating (and page-faulting) new ones every call."""
        key = (purpose, tuple(shape), dtype)  # (a dtype's .name costs 10 µs)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = self.empty(shape, dtype)
        return buf

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Array:
        """A new uninitialised array of this module (on this ops' device)."""
        return self.xp.empty(shape, dtype=dtype)

    # --- linear algebra --------------------------------------------------------
    def matmul(
        self, a: Array, b: Array, out: Array, *, trans_a: bool = False, trans_b: bool = False
    ) -> Array:
        """out = op(a) · op(b), op = transpose where asked; ``out`` is overwritten.

        Transposes are views, so the BLAS call gets the transpose flag instead of
        a copy. :attr:`cpu_gemm` computes it when set and able to (the same product,
        another BLAS), else ``xp.matmul``.
        """
        a, b = a.T if trans_a else a, b.T if trans_b else b
        if self.cpu_gemm is not None and self.cpu_gemm(a, b, out):
            return out
        return self.xp.matmul(a, b, out=out)

    def add_bias(self, z: Array, bias: Array) -> Array:
        """z += b, broadcast over the batch: z[i, j] += b[j]."""
        z += bias
        return z

    def column_sum(self, x: Array, out: Array) -> Array:
        """out[j] = Σ_i x[i, j] (the bias gradient db = Δᵀ·1). Deterministic."""
        return x.sum(axis=0, out=out)  # the method: np.sum's dispatch costs µs per call

    # --- activations ------------------------------------------------------------
    def activation_forward(self, act: ActivationSpec, z: Array, out: Array) -> Array:
        """out = f(z); ``out`` may be ``z`` (in place)."""
        return act.forward(self.xp, z, out)

    def activation_backward(
        self, act: ActivationSpec, delta: Array, saved: Array, out: Array
    ) -> Array:
        """out = delta ⊙ f′, f′ from ``saved`` (the output a, or z if act.needs_input)."""
        return act.backward(self.xp, delta, saved, out)

    # --- the fused pairs of a Dense layer (one kernel each on the GPU) ------------
    def bias_activation_forward(
        self, act: ActivationSpec, z: Array, bias: Array | None, out: Array
    ) -> Array:
        """z += b (when there is a bias), then out = f(z); ``out`` may be ``z``."""
        if bias is not None:
            self.add_bias(z, bias)
        if act.is_identity and out is z:
            return out
        return self.activation_forward(act, z, out)

    def activation_backward_bias_grad(
        self, act: ActivationSpec, delta: Array, saved: Array, dz: Array, db: Array | None
    ) -> Array:
        """Δ_Z = delta ⊙ f′ and db = Δ_Zᵀ 1 (when ``db`` is given); returns Δ_Z.

        For the identity Δ_Z is ``delta`` itself and ``dz`` is not written.
        """
        grad_z = delta if act.is_identity else self.activation_backward(act, delta, saved, dz)
        if db is not None:
            self.column_sum(grad_z, out=db)
        return grad_z

    # --- losses: each returns the value as a 0-d array and writes ∂loss/∂pred ---
    def mse(self, pred: Array, target: Array, grad: Array, *, mean: bool) -> Array:
        """L = Σ (p − y)² / N  (N = p.size if mean else 1);  ∂L/∂p = 2 (p − y) / N."""
        xp = self.xp
        xp.subtract(pred, target, out=grad)
        flat = grad.reshape(-1)
        value = xp.dot(flat, flat)
        scale = 1.0 / pred.size if mean else 1.0
        grad *= 2.0 * scale
        return value * scale

    def _shift_by_row_max(self, logits: Array, out: Array) -> Array:
        """out = z − max_c z (the stable shift of log-softmax), exact at infinite logits.

        A row whose max is +inf has softmax = the indicator of its +inf entries
        (normalised), and a row of −inf only has the uniform limit: in both cases the
        entries equal to the max are set to 0 (instead of inf − inf = NaN), so
        exp(out) is finite and ≥ 1 at the max. Finite rows cost one O(B) check.
        """
        xp = self.xp
        row_max = logits.max(axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):
            xp.subtract(logits, row_max, out=out)
        if not xp.isfinite(row_max).all():
            infinite = xp.isinf(row_max)
            out[(logits == row_max) & infinite] = 0.0
        return out

    def softmax_cross_entropy_labels(self, logits: Array, labels: Array, grad: Array) -> Array:
        """Integer labels y ∈ [0, C).

        L = 1/B Σ_b (logsumexp(z_b) − z_b[y_b]);  ∂L/∂z = (softmax(z) − onehot(y)) / B.
        logsumexp is taken around the row max, so any finite logits are safe.
        """
        xp = self.xp
        batch = logits.shape[0]
        rows = xp.arange(batch)
        self._shift_by_row_max(logits, grad)
        picked = grad[rows, labels]  # z_y − max, a new (B,) array
        xp.exp(grad, out=grad)
        sums = grad.sum(axis=1, keepdims=True)
        grad /= sums
        grad[rows, labels] -= 1.0
        grad *= 1.0 / batch
        log_sums = xp.log(sums.reshape(-1))
        return (log_sums.sum() - picked.sum()) / batch

    def softmax_cross_entropy_probs(self, logits: Array, probs: Array, grad: Array) -> Array:
        """Target distributions t (rows of one-hot or probabilities).

        L = 1/B Σ_b Σ_c −t_bc log softmax(z_b)_c;  ∂L/∂z = (softmax(z) Σ_c t_bc − t) / B.
        """
        xp = self.xp
        batch = logits.shape[0]
        self._shift_by_row_max(logits, grad)
        weighted = xp.vdot(probs, grad)  # Σ t (z − max)
        if xp.isnan(weighted) and not xp.isnan(grad).any():
            # a −inf logit with target mass 0: t·log p = 0·(−inf), whose limit is 0
            weighted = times_nonzero(xp, probs.copy(), grad).sum()
        xp.exp(grad, out=grad)
        sums = grad.sum(axis=1, keepdims=True)
        grad /= sums
        mass = probs.sum(axis=1, keepdims=True)
        grad *= mass
        grad -= probs
        grad *= 1.0 / batch
        log_sums = xp.log(sums)
        return (xp.vdot(mass, log_sums) - weighted) / batch

    def bce_with_logits(self, logits: Array, target: Array, grad: Array) -> Array:
        """L = mean(c·|z| + log(1 + e^{−|z|}));  ∂L/∂z = (σ(z) − y) / N.

        c = 1 − y where z ≥ 0 and y where z < 0, which is max(z, 0) − z·y written
        without the difference: no e^{|z|} is ever formed, and at z = ±inf the
        term is 0 when c = 0 (z = +inf, y = 1 gives L = 0, not inf − inf = NaN)
        and +inf otherwise, the true limits.
        """
        xp = self.xp
        n = logits.size
        abs_z = xp.abs(logits)
        e = xp.negative(abs_z)
        xp.exp(e, out=e)  # e^{−|z|} ∈ [0, 1]: never overflows
        nonneg = logits >= 0
        coeff = xp.where(nonneg, 1.0 - target, target)
        times_nonzero(xp, coeff, abs_z)
        value = coeff.sum() + xp.log1p(e).sum()
        # gradient σ(z) − y from s = σ(−|z|) = e / (1 + e), the small side of σ:
        # (1 − y) − s for z ≥ 0 and s − y for z < 0, exact where σ(z) rounds to 1
        xp.add(e, 1.0, out=abs_z)
        xp.divide(e, abs_z, out=e)
        xp.subtract(1.0 - target, e, out=grad)
        xp.copyto(grad, e - target, where=~nonneg)
        grad *= 1.0 / n
        return value / n

    # --- optimizers: one update of the whole flat parameter buffer ------------------------
    def global_norm(self, arrays: Sequence[Array]) -> float:
        """‖g‖₂ = √(Σ_arrays Σ_i g_i²) as a float; rescaled by m = max|g| on overflow.

        ‖g‖₂ = m·√(Σ (g/m)²) is finite for every finite g; nan or inf stays nan or inf.
        """
        xp = self.xp
        flats = [g.reshape(-1) for g in arrays]
        norm = math.sqrt(sum(float(xp.vdot(g, g)) for g in flats))
        if math.isinf(norm):  # no NaN here: a NaN would have made the sum NaN
            largest = max(float(xp.abs(g).max()) for g in flats if g.size)
            if math.isfinite(largest):
                scaled = (g / largest for g in flats)
                norm = largest * math.sqrt(sum(float(xp.vdot(s, s)) for s in scaled))
            else:
                norm = largest
        return norm

    def optimizer_workspace(
        self, kind: str, params: Array, *, scratch: int, steps: int
    ) -> dict[str, Array]:
        """The buffers an optimizer update of ``kind`` (``"sgd"`` or ``"adam"``) needs
        besides its state, allocated once so that no step allocates.

        Here ``scratch`` arrays (``"tmp0"``, ``"tmp1"``, ...) of one block of the update
        (:data:`UPDATE_BLOCK` elements, or ``params.size`` when smaller). ``steps``
        (updates already taken) only matters where the step counter lives in the
        workspace (:class:`~.cupy_ops.CupyOps`); the reference takes it from the host.
        """
        size = min(params.shape[0], UPDATE_BLOCK)
        return {f"tmp{i}": self.xp.empty(size, dtype=params.dtype) for i in range(scratch)}

    def set_learning_rate(self, work: dict[str, Array], lr: float) -> None:
        """Make η = ``lr`` the rate the next update reads from ``work``.

        Nothing to do here: the reference takes ``lr`` from the host at every step.
        """

    def sgd_step(
        self, params: Array, grads: Array, momentum_buffer: Array | None,
        work: dict[str, Array], *, lr: float, first: bool,
        momentum: float, dampening: float, weight_decay: float, nesterov: bool,
    ) -> Array:
        """One SGD step in place (PyTorch's rule and operation order); returns ``params``.

            g ← g + λ·p                                  (weight_decay λ ≠ 0)
            if μ ≠ 0:  b ← g when ``first``, else b ← μ·b + (1 − τ)·g
                       g ← g + μ·b  if nesterov, else g ← b
            p ← p − η·g

        ``momentum_buffer`` b (None when μ = 0) is sized like ``params``; ``work`` comes
        from :meth:`optimizer_workspace` (2 scratch arrays when λ ≠ 0, else 1). The
        update runs block by block (see :data:`UPDATE_BLOCK`). ``first``: b has not
        been written yet.
        """
        xp = self.xp
        blocks = _blocks(params, grads, momentum_buffer, work["tmp0"], work.get("tmp1"))
        for p, d, buf, tmp, decayed in blocks:
            g = d
            if weight_decay != 0:
                g = decayed
                xp.multiply(p, weight_decay, out=g)
                xp.add(d, g, out=g)
            if momentum != 0:
                if first:
                    xp.copyto(buf, g)
                else:
                    xp.multiply(buf, momentum, out=buf)
                    xp.multiply(g, 1.0 - dampening, out=tmp)
                    xp.add(buf, tmp, out=buf)
                if nesterov:
                    xp.multiply(buf, momentum, out=tmp)
                    xp.add(g, tmp, out=tmp)
                    g = tmp
                else:
                    g = buf
            xp.multiply(g, -lr, out=tmp)
            xp.add(p, tmp, out=p)
        return params

    def adam_step(
        self, params: Array, grads: Array, exp_avg: Array, exp_avg_sq: Array,
        work: dict[str, Array], *, lr: float, step: int,
        betas: tuple[float, float], eps: float, weight_decay: float, decoupled: bool,
    ) -> Array:
        """One Adam (AdamW when ``decoupled``) step t = ``step`` (from 1) in place, in
        PyTorch's operation order; returns ``params``.

            AdamW: p ← p·(1 − η·λ)          Adam: g ← g + λ·p  (λ ≠ 0)
            m ← β₁·m + (1 − β₁)·g
            v ← β₂·v + (1 − β₂)·g²
            p ← p − (η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)

        m = ``exp_avg`` and v = ``exp_avg_sq`` are sized like ``params``; ``work`` comes
        from :meth:`optimizer_workspace` (2 scratch arrays). Block by block, as SGD.
        """
        xp = self.xp
        beta1, beta2 = betas
        step_size = lr / (1.0 - beta1**step)
        root_bias_correction2 = math.sqrt(1.0 - beta2**step)
        blocks = _blocks(params, grads, exp_avg, exp_avg_sq, work["tmp0"], work["tmp1"])
        for p, g, m, v, tmp, tmp2 in blocks:
            if decoupled:
                xp.multiply(p, 1.0 - lr * weight_decay, out=p)
            elif weight_decay != 0:
                xp.multiply(p, weight_decay, out=tmp)
                g = xp.add(g, tmp, out=tmp)
            # m ← β₁·m + (1 − β₁)·g
            xp.multiply(m, beta1, out=m)
            xp.multiply(g, 1.0 - beta1, out=tmp2)
            xp.add(m, tmp2, out=m)
            # v ← β₂·v + (1 − β₂)·g·g
            xp.multiply(v, beta2, out=v)
            xp.multiply(g, 1.0 - beta2, out=tmp2)
            xp.multiply(tmp2, g, out=tmp2)
            xp.add(v, tmp2, out=v)
            # denom = √v / √(1 − β₂ᵗ) + ε   (g is no longer needed: tmp is free)
            xp.sqrt(v, out=tmp)
            xp.divide(tmp, root_bias_correction2, out=tmp)
            xp.add(tmp, eps, out=tmp)
            # p ← p + (−step_size)·m / denom
            xp.multiply(m, -step_size, out=tmp2)
            xp.divide(tmp2, tmp, out=tmp2)
            xp.add(p, tmp2, out=p)
        return params

    # --- norm: LayerNorm and Dropout (rows of a (rows, F) view) -----------------------------
    def layer_norm_forward(
        self, x: Array, weight: Array, bias: Array, out: Array, mean: Array, rstd: Array,
        *, eps: float,
    ) -> Array:
        """PyTorch's LayerNorm over the rows of ``x`` (rows, F), biased variance::

            μ = (1/F) Σ_j x_j     σ² = (1/F) Σ_j (x_j − μ)²     r = 1/√(σ² + ε)
            out = (x − μ)·r ⊙ weight + bias

        Writes μ into ``mean`` (rows,), r into ``rstd`` (rows,), returns ``out``."""
        xp = self.xp
        x.mean(axis=1, out=mean)
        xp.subtract(x, mean[:, None], out=out)
        xp.multiply(out, out).mean(axis=1, out=rstd)
        rstd += eps
        xp.sqrt(rstd, out=rstd)
        xp.divide(1.0, rstd, out=rstd)
        out *= rstd[:, None]
        out *= weight
        out += bias
        return out

    def layer_norm_backward(
        self, delta: Array, x: Array, weight: Array, mean: Array, rstd: Array,
        dx: Array | None, dweight: Array, dbias: Array,
    ) -> Array | None:
        """The gradients of :meth:`layer_norm_forward` for Δ = ``delta`` (rows, F), with
        x̂ = (x − μ)·r and g = Δ ⊙ weight::

            dbias = Σ_rows Δ      dweight = Σ_rows Δ ⊙ x̂
            dx = r·(g − mean_F(g) − x̂·mean_F(g ⊙ x̂))      (when ``dx`` is not None)

        Returns ``dx``. The column sums are :meth:`column_sum` (deterministic)."""
        xp = self.xp
        xhat = xp.subtract(x, mean[:, None])
        xhat *= rstd[:, None]
        self.column_sum(delta, out=dbias)
        self.column_sum(delta * xhat, out=dweight)
        if dx is None:
            return None
        g = delta * weight
        g_mean = g.mean(axis=1, keepdims=True)
        gx_mean = (g * xhat).mean(axis=1, keepdims=True)
        xhat *= gx_mean
        xp.subtract(g, g_mean, out=dx)
        dx -= xhat
        dx *= rstd[:, None]
        return dx

    def dropout_forward(
        self, x: Array, out: Array, mask: Array, state: Array, *, threshold: int, scale: float,
        offset: int = 0,
    ) -> Array:
        """Inverted dropout of ``x`` (any shape, C-contiguous) at the generator ``state``
        (uint64 [seed, step, 0]), then step += 1 (in the array: a CUDA graph replays it)::

            keep_i = u_{offset+i} ≥ threshold      out_i = x_i·scale if keep_i else 0

        u from :func:`gpubackprop.philox.dropout_words` (seed, step), from the counter
        base ``offset`` (the index of x's first element in the global batch); ``mask``
        (uint8, x's shape) gets keep. Returns ``out``."""
        xp = self.xp
        seed, step = (int(v) for v in state[:2])
        words = dropout_words(xp, int(x.size), seed, step, offset)
        xp.greater_equal(
            words.astype(np.uint64), np.uint64(threshold), out=mask.reshape(-1), casting="unsafe"
        )
        state[1] = (step + 1) & 0xFFFFFFFFFFFFFFFF
        return self.dropout_backward(x, mask, out, scale=scale)

    def dropout_backward(self, delta: Array, mask: Array, dx: Array, *, scale: float) -> Array:
        """dx_i = delta_i·scale where ``mask`` (uint8) keeps i, else 0; returns ``dx``."""
        xp = self.xp
        xp.multiply(delta, scale, out=dx)
        xp.copyto(dx, 0, where=mask == 0)
        return dx

    # --- rnn: the pointwise part of one LSTM / GRU step (one kernel each way on the GPU;
    # on the CPU the compiled one-pass cell, :attr:`cpu_cells`, when set) -----------------
    def lstm_cell_forward(
        self, gates: Array, hh: Array, c_prev: Array, c: Array, h: Array, tanh_c: Array
    ) -> Array:
        """One LSTM step after its GEMMs; (B, 4H) gate columns in PyTorch's order i, f, g, o.

        With a = gates + hh (``gates`` = x Wᵢₕᵀ + b_ih + b_hh, ``hh`` = h_prev W_hhᵀ)::

            i, f, o = σ(a_i), σ(a_f), σ(a_o)      g = tanh(a_g)
            c = f ⊙ c_prev + i ⊙ g      tanh_c = tanh(c)      h = o ⊙ tanh_c

        ``gates`` is overwritten with [i, f, g, o] (what backward reads); ``c``, ``h`` and
        ``tanh_c`` (B, H) are written. Returns ``h``.
        """
        if self.cpu_cells is not None and self.cpu_cells.lstm_cell_forward(
                gates, hh, c_prev, c, h, tanh_c):
            return h
        xp = self.xp
        n = c.shape[1]
        sigmoid, tanh = ACTIVATIONS["sigmoid"], ACTIVATIONS["tanh"]
        xp.add(gates, hh, out=gates)
        i, f, g, o = (gates[:, k * n:(k + 1) * n] for k in range(4))
        a_g = self.scratch("lstm_a_g", c.shape, c.dtype)
        a_g[...] = g
        # σ over the whole contiguous block (one pass each, the g part wasted, beats three
        # passes over strided column views), then tanh over g: no activation runs in place
        # on a strided column view (NumPy 2.4's float32 np.negative(x, out=x) is wrong
        # for a 16-byte stride, i.e. H = 1 here)
        sigmoid.forward(xp, gates, gates)
        tanh.forward(xp, a_g, g)
        xp.multiply(f, c_prev, out=c)
        xp.multiply(i, g, out=tanh_c)
        xp.add(c, tanh_c, out=c)
        tanh.forward(xp, c, tanh_c)
        return xp.multiply(o, tanh_c, out=h)

    def lstm_cell_backward(
        self, gates: Array, c_prev: Array, tanh_c: Array, dh_out: Array, dh_next: Array,
        dc: Array, dgates: Array,
    ) -> Array:
        """Backward of :meth:`lstm_cell_forward` for one step; ``gates`` holds [i, f, g, o].

        With dh = ``dh_out`` + ``dh_next`` (∂L/∂h from the output and from step t+1) and
        ``dc`` = ∂L/∂c from step t+1 (overwritten with ∂L/∂c_prev)::

            dc ← dc + dh ⊙ o ⊙ (1 − tanh_c²)
            dgates = [i(1−i) ⊙ dc ⊙ g, f(1−f) ⊙ dc ⊙ c_prev, (1−g²) ⊙ dc ⊙ i,
                      o(1−o) ⊙ dh ⊙ tanh_c]                 (∂L/∂a, pre-activation)
            dc ← dc ⊙ f

        Returns ``dgates`` (B, 4H).
        """
        if self.cpu_cells is not None and self.cpu_cells.lstm_cell_backward(
                gates, c_prev, tanh_c, dh_out, dh_next, dc, dgates):
            return dgates
        xp = self.xp
        n = dc.shape[1]
        tanh = ACTIVATIONS["tanh"]
        i, f, g, o = (gates[:, k * n:(k + 1) * n] for k in range(4))
        di, df, dg, do = (dgates[:, k * n:(k + 1) * n] for k in range(4))
        dh = xp.add(dh_out, dh_next, out=self.scratch("lstm_dh", dc.shape, dc.dtype))
        tmp = self.scratch("lstm_tmp", dc.shape, dc.dtype)
        # σ′ = a(1−a) over the whole contiguous block in two passes (faster than three
        # strided column views; a broadcast dc ⊙ [i f g] pass was slower too); g's part
        # is overwritten with tanh′ below
        xp.subtract(1.0, gates, out=dgates)
        xp.multiply(dgates, gates, out=dgates)
        xp.multiply(dh, tanh_c, out=tmp)
        xp.multiply(do, tmp, out=do)
        xp.multiply(dh, o, out=tmp)
        tanh.backward(xp, tmp, tanh_c, dh)  # dh is not read again
        xp.add(dc, dh, out=dc)
        for d_gate, factor in ((di, g), (df, c_prev)):
            xp.multiply(dc, factor, out=tmp)
            xp.multiply(d_gate, tmp, out=d_gate)
        xp.multiply(dc, i, out=tmp)
        tanh.backward(xp, tmp, g, dg)
        xp.multiply(dc, f, out=dc)
        return dgates

    def gru_cell_forward(
        self, gates: Array, hh: Array, bias_hh: Array, h_prev: Array, h: Array, hn: Array
    ) -> Array:
        """One GRU step after its GEMMs; (B, 3H) gate columns in PyTorch's order r, z, n.

        ``gates`` = x Wᵢₕᵀ + b_ih, ``hh`` = h_prev W_hhᵀ, ``bias_hh`` = b_hh (3H,)::

            r = σ(gates_r + hh_r + b_hr)      z = σ(gates_z + hh_z + b_hz)
            hn = hh_n + b_hn                  n = tanh(gates_n + r ⊙ hn)
            h = (1 − z) ⊙ n + z ⊙ h_prev      (computed as n + z ⊙ (h_prev − n))

        ``gates`` is overwritten with [r, z, n] and ``hn`` (B, H) kept for backward.
        Returns ``h``.
        """
        if self.cpu_cells is not None and self.cpu_cells.gru_cell_forward(
                gates, hh, bias_hh, h_prev, h, hn):
            return h
        xp = self.xp
        n_h = h.shape[1]
        sigmoid, tanh = ACTIVATIONS["sigmoid"], ACTIVATIONS["tanh"]
        rz = gates[:, : 2 * n_h]
        xp.add(rz, hh[:, : 2 * n_h], out=rz)
        xp.add(rz, bias_hh[: 2 * n_h], out=rz)
        sigmoid.forward(xp, rz, rz)
        r, z, n = (gates[:, k * n_h:(k + 1) * n_h] for k in range(3))
        xp.add(hh[:, 2 * n_h:], bias_hh[2 * n_h:], out=hn)
        xp.multiply(r, hn, out=h)
        xp.add(n, h, out=n)
        tanh.forward(xp, n, n)
        xp.subtract(h_prev, n, out=h)
        xp.multiply(z, h, out=h)
        return xp.add(n, h, out=h)

    def gru_cell_backward(
        self, gates: Array, hn: Array, h_prev: Array, dh_out: Array, dh_rec: Array,
        dh_carry: Array, dgx: Array, dgh: Array,
    ) -> Array:
        """Backward of :meth:`gru_cell_forward` for one step; ``gates`` holds [r, z, n].

        With dh = ``dh_out`` + ``dh_rec`` + ``dh_carry`` (from the output, from step t+1
        through W_hh, and step t+1's direct z ⊙ dh)::

            dâ_n = dh ⊙ (1 − z) ⊙ (1 − n²)    dâ_z = dh ⊙ (h_prev − n) ⊙ z(1−z)
            dâ_r = dâ_n ⊙ hn ⊙ r(1−r)
            dgx = [dâ_r, dâ_z, dâ_n]          (∂L/∂(x Wᵢₕᵀ + b_ih))
            dgh = [dâ_r, dâ_z, dâ_n ⊙ r]      (∂L/∂(h_prev W_hhᵀ + b_hh))
            dh_carry ← dh ⊙ z                 (∂L/∂h_prev but for dgh W_hh)

        Returns ``dgx``.
        """
        if self.cpu_cells is not None and self.cpu_cells.gru_cell_backward(
                gates, hn, h_prev, dh_out, dh_rec, dh_carry, dgx, dgh):
            return dgx
        xp = self.xp
        n_h = hn.shape[1]
        sigmoid, tanh = ACTIVATIONS["sigmoid"], ACTIVATIONS["tanh"]
        r, z, n = (gates[:, k * n_h:(k + 1) * n_h] for k in range(3))
        dr, dz, dn = (dgx[:, k * n_h:(k + 1) * n_h] for k in range(3))
        dh = xp.add(dh_out, dh_rec)
        xp.add(dh, dh_carry, out=dh)
        tmp = xp.empty_like(dh)  # activation backward writes out before it reads delta
        xp.subtract(1.0, z, out=tmp)
        xp.multiply(dh, tmp, out=tmp)
        tanh.backward(xp, tmp, n, dn)
        xp.subtract(h_prev, n, out=tmp)
        xp.multiply(dh, tmp, out=tmp)
        sigmoid.backward(xp, tmp, z, dz)
        xp.multiply(dn, hn, out=tmp)
        sigmoid.backward(xp, tmp, r, dr)
        dgh[:, : 2 * n_h] = dgx[:, : 2 * n_h]
        xp.multiply(dn, r, out=dgh[:, 2 * n_h:])
        xp.multiply(dh, z, out=dh_carry)
        return dgx


    # --- seq: embedding rows (gather forward, deterministic scatter-add backward) ----------
    def gather_rows(self, table: Array, ids: Array, out: Array) -> Array:
        """out[i, :] = table[ids[i], :] for integer ``ids`` of any shape (``out`` of shape
        (*ids.shape, D)); the ids are checked beforehand (0 <= id < len(table))."""
        return self.xp.take(table, ids, axis=0, out=out)

    def scatter_add_rows(self, ids: Array, delta: Array, out: Array) -> Array:
        """out[k, :] = Σ_{i: ids[i] = k} delta[i, :] (``out`` overwritten; ids (N,), delta
        (N, D), out (V, D)): the transpose of :meth:`gather_rows`.

        ``np.add.at`` adds in the order of i, unbuffered: the same bits every run. It runs
        on the flat (V·D,) view with element indices ids[i]·D + j (the same sums in the
        same order): NumPy's fast path for 1-D indices, 8× faster than row indices at
        N = 4096, D = 128.
        """
        out[...] = 0
        if not out.flags.c_contiguous:  # no flat view to add into
            np.add.at(out, ids, delta)
            return out
        width = out.shape[1]
        flat_ids = (ids[:, None] * width + np.arange(width)).reshape(-1)
        np.add.at(out.reshape(-1), flat_ids, delta.reshape(-1))
        return out


__all__ = ["NumpyOps"]
