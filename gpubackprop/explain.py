"""``model.explain(x)``: the exact forward and backward formulas, layer by layer.

For each layer it shows what the engine computes, with the shapes of this
batch filled in, the arrays it keeps for backward, and (after running the
batch) statistics of the actual values: activations forward, and with a
target and a loss, the deltas and gradient norms backward. Every formula is
the one the code runs (``layers.py``), in the engine's batch-major convention.
The account comes back as an :class:`Explanation`: a REPL or notebook shows it
once, ``print(model.explain(x))`` prints it.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .arrays import Array
from .backend import Backend
from .errors import ConfigError
from .layers import Activation, Dense
from .layers_embedding import Embedding
from .layers_norm import Dropout, LayerNorm
from .losses import MSE, BCEWithLogits, Loss, SoftmaxCrossEntropy, get_loss

if TYPE_CHECKING:
    from .model import Sequential


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` returns: the layer-by-layer account, displayed once.

    ``str()`` and ``repr()`` are the text itself, so a REPL shows it as ``print``
    would (not as an escaped string); a notebook renders it as a ``<pre>`` block
    (``_repr_html_``). Nothing is printed unless asked: ``print(explanation)``.
    """

    #: the account, lines joined by newlines
    text: str

    @property
    def lines(self) -> list[str]:
        """The account's lines (the text split at newlines)."""
        return self.text.splitlines()

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        """The text as an HTML ``<pre>`` block, for Jupyter."""
        return f"<pre>{html.escape(self.text)}</pre>"


def _shape(*dims: int) -> str:
    return str(tuple(int(d) for d in dims))


def _stats(backend: Backend, x: Array) -> str:
    """mean, std, min, max and the share of exact zeros of an array."""
    a = np.asarray(backend.to_numpy(x), dtype=np.float64)
    zeros = float(np.mean(a == 0.0)) if a.size else 0.0
    return (
        f"mean {a.mean():+.3g}  std {a.std():.3g}  min {a.min():+.3g}  max {a.max():+.3g}"
        f"  zeros {100 * zeros:.0f}%"
    )


def _norm(backend: Backend, x: Array) -> float:
    return float(np.linalg.norm(np.asarray(backend.to_numpy(x), dtype=np.float64)))


def _dense_lines(layer: Dense, batch: int, k: int, first: bool) -> list[str]:
    n_in, n_out = layer.in_features, layer.out_features
    x_in, z, w = _shape(batch, n_in), _shape(batch, n_out), _shape(n_out, n_in)
    act = layer.activation
    a_prev = "x" if first else f"a_{k - 1}"
    b = " + b" if layer.use_bias else ""
    lines = [f"  forward   z_{k} = {a_prev} Wᵀ{b}      {x_in} · {_shape(n_in, n_out)} -> {z}"]
    if act.is_identity:
        lines += [
            f"            a_{k} = z_{k}  (linear)",
            f"            keeps {a_prev} {x_in} for dW",
            f"  backward  δ_{k} = ∂L/∂a_{k}                 {z}",
        ]
    else:
        forward, derivative = act.formula_texts(f"a_{k}", f"z_{k}")
        keep = f"z_{k}" if act.needs_input else f"a_{k}"
        lines += [
            f"            a_{k} = {act.name}(z_{k}) = {forward}   {z}",
            f"            keeps {a_prev} {x_in} for dW and {keep} {z} for the derivative",
            f"  backward  δ_{k} = ∂L/∂a_{k} ⊙ {derivative}      {z}",
        ]
    lines.append(f"            dW = δ_{k}ᵀ {a_prev}      {_shape(n_out, batch)} · {x_in} -> {w}")
    if layer.use_bias:
        lines.append(f"            db = δ_{k}ᵀ 1        {_shape(n_out, batch)} · {_shape(batch)} "
                     f"-> {_shape(n_out)}")
    if first:
        lines.append("            (∂L/∂x is not needed: the first layer skips δ W)")
    else:
        lines.append(f"            ∂L/∂a_{k - 1} = δ_{k} W      {z} · {w} -> {x_in}")
    return lines


def _activation_lines(layer: Activation, batch: int, width: int, k: int, first: bool) -> list[str]:
    a_prev = "x" if first else f"a_{k - 1}"
    act = layer.activation
    forward, derivative = act.formula_texts(f"a_{k}", a_prev)
    return [
        f"  forward   a_{k} = {act.name}({a_prev}) = {forward}      {_shape(batch, width)}",
        f"  backward  ∂L/∂{a_prev} = ∂L/∂a_{k} ⊙ f′   {_shape(batch, width)}   "
        f"(f′ = {derivative})",
    ]


def _layer_norm_lines(layer: LayerNorm, batch: int, k: int, first: bool) -> list[str]:
    a_prev = "x" if first else f"a_{k - 1}"
    rows, f = _shape(batch, layer.features), _shape(layer.features)
    return [
        f"  forward   μ, σ² = mean, biased variance of each row of {a_prev}   {rows}",
        f"            a_{k} = ({a_prev} − μ)/√(σ² + {layer.eps:g}) ⊙ weight + bias   "
        f"(x̂ = ({a_prev} − μ)/√(σ² + ε))",
        f"  backward  g = ∂L/∂a_{k} ⊙ weight;  ∂L/∂{a_prev} = (g − mean(g) − x̂ mean(g ⊙ x̂))"
        "/√(σ² + ε)",
        f"            dweight = Σ_rows ∂L/∂a_{k} ⊙ x̂ {f}    dbias = Σ_rows ∂L/∂a_{k} {f}",
    ]


def _dropout_lines(layer: Dropout, batch: int, width: int, k: int, first: bool) -> list[str]:
    a_prev = "x" if first else f"a_{k - 1}"
    return [
        f"  eval mode: a_{k} = {a_prev} and ∂L/∂{a_prev} = ∂L/∂a_{k}   {_shape(batch, width)}",
        f"  (training: a_{k} = {a_prev} ⊙ mask/(1 − {layer.p:g}), a Philox mask per step)",
    ]


def _embedding_lines(layer: Embedding, batch: int, k: int) -> list[str]:
    table, out = _shape(layer.num_embeddings, layer.embedding_dim), _shape(
        batch, layer.embedding_dim
    )
    return [
        f"  forward   a_{k}[m] = W[x[m]]   (a row gather)   W {table} -> {out}",
        "            keeps the ids x for backward",
        f"  backward  dW[v] = Σ_{{m: x[m] = v}} ∂L/∂a_{k}[m]   (ordered, deterministic) "
        f"{out} -> {table}",
        "            (no ∂L/∂x: the ids are integers)",
    ]


def _loss_lines(loss: Loss, batch: int, width: int, k: int) -> list[str]:
    out = f"a_{k}"
    if isinstance(loss, SoftmaxCrossEntropy):
        return [
            f"  L = 1/B Σ_b (logsumexp({out}_b) − {out}_b[y_b])      B = {batch}",
            f"  ∂L/∂{out} = (softmax({out}) − onehot(y)) / B       {_shape(batch, width)}"
            "   (the only 1/B of the step)",
        ]
    if isinstance(loss, BCEWithLogits):
        return [
            f"  L = 1/N Σ (max({out},0) − {out}·y + log(1 + e^(−|{out}|)))   N = {batch * width}",
            f"  ∂L/∂{out} = (σ({out}) − y) / N       {_shape(batch, width)}",
        ]
    if isinstance(loss, MSE) and loss.reduction == "sum":
        return [
            f"  L = Σ ({out} − y)²",
            f"  ∂L/∂{out} = 2 ({out} − y)       {_shape(batch, width)}",
        ]
    return [
        f"  L = 1/N Σ ({out} − y)²      N = {batch}·{width} = {batch * width}",
        f"  ∂L/∂{out} = 2 ({out} − y) / N       {_shape(batch, width)}",
    ]


def explain(
    model: Sequential, x: Any, y: Any = None, loss: Loss | str | None = None
) -> Explanation:
    """The layer-by-layer account of batch ``x`` as an :class:`Explanation` (not printed).

    With ``y`` and ``loss`` the batch is also run backward (the gradient buffer is
    written, no parameter changes) and each layer shows its δ and gradient norms. Runs
    in eval mode (Dropout is the identity; the model's mode is restored afterwards).
    """
    backend = model.backend
    xb = model.prepare_input(x if backend.is_native(x) else model.to_device(x))
    lead = xb.shape if model.input_kind == "tokens" else xb.shape[:-1]
    batch = math.prod(lead)  # rows of every GEMM: B, or B·T for sequences
    resolved = None if loss is None else get_loss(loss)
    outputs: list[Array] = []
    with model.mode(False):
        model.forward_batch(xb, outputs)
        value = None
        if resolved is not None:
            if y is None:
                raise ConfigError("explain: a loss needs the target y")
            y = y if backend.is_native(y) else backend.asarray(y)
            value = float(model.loss_and_grad_batch(model.prepare_batch(xb, y, resolved)))

    lines = [
        f"{type(model).__name__} on {model.device}, {model.dtype.name}, batch B = {batch}: "
        f"{model.num_parameters:,} parameters in one flat buffer",
        "Convention: batch-major activations (B, n); W is (out, in) as in z = W a + b, "
        "so a layer computes z = a Wᵀ + b.",
        "Mode: eval (as evaluate and predict run: Dropout is the identity).",
        f"input x {tuple(xb.shape)}: {_stats(backend, xb)}",
    ]
    if len(lead) > 1:
        lines.insert(2, f"Sequences: the {len(lead)}-axis batch {tuple(lead)} runs as "
                        f"{batch} rows (B below is B·T = {batch}): (B, T, n) arrays are "
                        "(B·T, n) matrix views.")
    grads, params = model.gradients(), model.parameters()
    for k, (layer, out) in enumerate(zip(model.layers, outputs, strict=True), start=1):
        lines += ["", f"layer {layer.index}: {layer.describe()}  ->  a_{k} {tuple(out.shape)}"]
        if isinstance(layer, Dense):
            lines += _dense_lines(layer, batch, k, first=layer.index == 0)
        elif isinstance(layer, Activation):
            lines += _activation_lines(layer, batch, int(out.shape[-1]), k, layer.index == 0)
        elif isinstance(layer, LayerNorm):
            lines += _layer_norm_lines(layer, batch, k, layer.index == 0)
        elif isinstance(layer, Dropout):
            lines += _dropout_lines(layer, batch, int(out.shape[-1]), k, layer.index == 0)
        elif isinstance(layer, Embedding):
            lines += _embedding_lines(layer, batch, k)
        else:
            lines.append(f"  {type(layer).__name__}: see its docstring")
        lines.append(f"  values    a_{k}: {_stats(backend, out)}")
        if value is not None:
            for name, short in (("weight", "W"), ("bias", "b")):
                key = f"{layer.index}.{name}"
                if key in grads:
                    lines.append(f"  gradient  |d{short}| = {_norm(backend, grads[key]):.4g}   "
                                 f"(|{name}| = {_norm(backend, params[key]):.4g})")
    if resolved is not None:
        lines += ["", f"loss: {resolved!r} = {value:.6g}"]
        lines += _loss_lines(resolved, batch, int(outputs[-1].shape[-1]), len(model.layers))
        lines.append(
            "Backward runs from the last layer to the first; each writes its dW, db "
            "into the flat gradient buffer (overwritten, not accumulated)."
        )
    return Explanation("\n".join(lines))


__all__ = ["Explanation", "explain"]
