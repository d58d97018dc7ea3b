"""The LSTM language-model benchmark network, shared by the CPU and the GPU benchmarks.

``Embedding(vocab, embed) → LSTM(embed, hidden) → Dense(hidden, vocab)`` on (B, T)
token ids with (B, T) next-token labels, softmax cross-entropy averaged over the B·T
positions, plain SGD (lr :data:`bench.common.LR`), float32. Every contender starts
from the same weights, named as gpubackprop names them (``0.weight``,
``1.weight_ih``, ...; PyTorch's ``nn.Embedding`` / ``nn.LSTM`` / ``nn.Linear`` use
the same layouts and gate order i, f, g, o).

The one-step check: the textbook loop of the MLPs has no LSTM, so the float64
reference is PyTorch float64 autograd (:func:`reference_lstm_step`), a path that
shares no code with gpubackprop's float32 step and no precision with PyTorch's
float32 one (``tests/test_recurrent.py`` holds gpubackprop's float64 LSTM to PyTorch
at 1e-10, so the two float64 steps agree far below the bounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import CHECK_SIGMAS, LR, U32, check_entry

if TYPE_CHECKING:
    from gpubackprop import Sequential

#: name -> array, gpubackprop's parameter names
NamedParams = dict[str, np.ndarray]

_TORCH_NAMES = {
    "0.weight": "embed.weight",
    "1.weight_ih": "lstm.weight_ih_l0",
    "1.weight_hh": "lstm.weight_hh_l0",
    "1.bias_ih": "lstm.bias_ih_l0",
    "1.bias_hh": "lstm.bias_hh_l0",
    "2.weight": "head.weight",
    "2.bias": "head.bias",
}


@dataclass(frozen=True)
class LSTMNetwork:
    """The LSTM language model's sizes.

    Attributes:
        name: short identifier, used by ``--networks``.
        batch: sequences per step (B).
        steps: tokens per sequence (T).
        vocab: vocabulary size (V), the Embedding's rows and the Dense's outputs.
        embed: embedding width (E), the LSTM's input.
        hidden: the LSTM's hidden width (H).
    """

    name: str
    batch: int
    steps: int
    vocab: int
    embed: int
    hidden: int

    loss = "cross_entropy"

    @property
    def num_parameters(self) -> int:
        """V·E + 4H(E + H + 2) + V(H + 1)."""
        v, e, h = self.vocab, self.embed, self.hidden
        return v * e + 4 * h * (e + h + 2) + v * (h + 1)

    @property
    def flops_per_step(self) -> int:
        """2 × multiply-adds of the GEMMs: 3 × (x W_ihᵀ, h W_hhᵀ, h W_outᵀ) per token, less
        the input gradient of the input projection (the embedding needs none)."""
        tokens = self.batch * self.steps
        four_h = 4 * self.hidden
        forward = tokens * (four_h * self.embed + four_h * self.hidden + self.vocab * self.hidden)
        return 2 * (3 * forward - tokens * four_h * self.embed)

    def describe(self) -> str:
        """``LSTM LM V128-E128-H512, softmax CE, B64 T64``."""
        return (
            f"LSTM LM V{self.vocab}-E{self.embed}-H{self.hidden}, softmax CE, "
            f"B{self.batch} T{self.steps}"
        )

    def summary(self) -> dict[str, Any]:
        """The network as the benchmarks' JSON results describe it."""
        return {
            "network": self.name,
            "description": self.describe(),
            "batch": self.batch,
            "steps": self.steps,
            "vocab": self.vocab,
            "embed": self.embed,
            "hidden": self.hidden,
            "loss": self.loss,
            "flops_per_step": self.flops_per_step,
        }

    def rounding_factor(self) -> float:
        """F of the one-step check's bounds CHECK_SIGMAS · u · F, as for the MLPs
        (:func:`bench.common.rounding_factor`): √n per rounded sum of n terms,

        F = √E + √H·√T + √H + √V + √(B·T): the input projection, the recurrent sums
        (an error made at one step is carried on by the next ones, at most T of them,
        adding up like independent errors), the output projection, the softmax, and
        the parameter gradients (sums over the B·T positions).
        """
        e, h, v = self.embed, self.hidden, self.vocab
        tokens = self.batch * self.steps
        return (
            math.sqrt(e)
            + math.sqrt(h * self.steps)
            + math.sqrt(h)
            + math.sqrt(v)
            + (math.sqrt(tokens))
        )


LSTM_LM = LSTMNetwork("lstm-lm", batch=64, steps=64, vocab=128, embed=128, hidden=512)


def make_lstm_batch(net: LSTMNetwork, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch: int64 token ids x (B, T) in [0, V) and their next tokens y (B, T)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, net.vocab, size=(net.batch, net.steps + 1), dtype=np.int64)
    return tokens[:, :-1].copy(), tokens[:, 1:].copy()


def build_lstm_model(
    net: LSTMNetwork, device: str = "cpu", dtype: str = "float32", seed: int = 0
) -> Sequential:
    """The network as a ``gpubackprop.Sequential`` (seeded initial weights)."""
    import gpubackprop as gb

    layers = [gb.Embedding(net.vocab, net.embed), gb.LSTM(net.embed, net.hidden)]
    return gb.Sequential(
        [*layers, gb.Dense(net.hidden, net.vocab)], device=device, dtype=dtype, seed=seed
    )


def gb_named_params(model: Sequential) -> NamedParams:
    """Host copies of every parameter of a gpubackprop model, by name (any device)."""
    to_host = model.backend.to_numpy
    return {name: np.array(to_host(view)) for name, view in model.parameters().items()}


def load_named_params(model: Sequential, params: NamedParams) -> None:
    """Write host parameters (by name) into a gpubackprop model (any device)."""
    views = model.parameters()
    with model.backend.activate():
        for name, value in params.items():
            views[name][...] = model.backend.asarray(value)


def build_torch_lstm(net: LSTMNetwork, init: NamedParams, device: Any, dtype: Any = None) -> Any:
    """The PyTorch twin: ``nn.Embedding`` + ``nn.LSTM(batch_first=True)`` + ``nn.Linear``,
    weights copied from ``init``; called on (B, T) ids it returns (B·T, V) logits."""
    import torch

    nn = torch.nn
    dtype = torch.float32 if dtype is None else dtype

    class LanguageModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(net.vocab, net.embed)
            self.lstm = nn.LSTM(net.embed, net.hidden, batch_first=True)
            self.head = nn.Linear(net.hidden, net.vocab)

        def forward(self, ids: Any) -> Any:
            out, _ = self.lstm(self.embed(ids))
            return self.head(out).reshape(-1, net.vocab)

    model = LanguageModel().to(device=device, dtype=dtype)
    load_torch_named_params(model, init)
    return model


def load_torch_named_params(model: Any, params: NamedParams) -> None:
    """Copy host parameters (gpubackprop's names) into the twin, in place."""
    import torch

    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in params.items():
            own[_TORCH_NAMES[name]].copy_(torch.from_numpy(np.ascontiguousarray(value)))


def torch_lstm_loss(logits: Any, y: Any) -> Any:
    """Cross-entropy of (B·T, V) logits against (B, T) labels, mean over B·T."""
    import torch.nn.functional as functional

    return functional.cross_entropy(logits, y.reshape(-1))


def torch_named_params(model: Any) -> NamedParams:
    """Host copies of the twin's parameters under gpubackprop's names."""
    own = dict(model.named_parameters())
    return {
        name: own[theirs].detach().cpu().numpy().copy() for name, theirs in _TORCH_NAMES.items()
    }


@dataclass(frozen=True)
class LSTMReference:
    """The float64 reference step of the LSTM LM: loss, parameters before and after
    (by name), and the check's bounds (CHECK_SIGMAS · u · F for the loss and the update)."""

    before: NamedParams
    loss: float
    after: NamedParams
    loss_rtol: float
    update_rtol: float


def reference_lstm_step(
    net: LSTMNetwork, x: np.ndarray, y: np.ndarray, init: NamedParams
) -> LSTMReference:
    """One SGD step (lr LR) from ``init`` on (x, y) with PyTorch float64 autograd on the CPU."""
    import torch

    model = build_torch_lstm(
        net, {k: v.astype(np.float64) for k, v in init.items()}, "cpu", torch.float64
    )
    loss = torch_lstm_loss(model(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    bound = CHECK_SIGMAS * U32 * net.rounding_factor()
    return LSTMReference(init, loss.item(), torch_named_params(model), bound, bound)


def lstm_update_error(ref: LSTMReference, params: NamedParams) -> float:
    """Worst parameter's (‖E‖ − ½‖ulp(W)‖)₊ / ‖U‖, as :func:`bench.common.update_error`:
    E = contender − reference after the step, U = the reference's update. NaN gives NaN."""
    worst = 0.0
    for name, new_ref in ref.after.items():
        got = params[name].astype(np.float64)
        error = float(np.linalg.norm(got - new_ref))
        if math.isnan(error):
            return math.nan
        update = float(np.linalg.norm(new_ref - ref.before[name].astype(np.float64)))
        storage = 0.5 * float(np.linalg.norm(np.spacing(np.abs(got).astype(np.float32))))
        excess = max(error - storage, 0.0)
        worst = max(worst, excess / update if update > 0 else (0.0 if excess == 0 else math.inf))
    return worst


def compare_lstm_step(ref: LSTMReference, loss: float, params: NamedParams) -> dict[str, Any]:
    """The check entry of one contender's first step (``bench.common.check_entry``)."""
    loss_rel = abs(loss - ref.loss) / max(abs(ref.loss), 1e-30)
    return check_entry(loss_rel, lstm_update_error(ref, params), ref.loss_rtol, ref.update_rtol)


__all__ = [
    "LSTM_LM",
    "LSTMNetwork",
    "LSTMReference",
    "NamedParams",
    "build_lstm_model",
    "build_torch_lstm",
    "compare_lstm_step",
    "gb_named_params",
    "load_named_params",
    "load_torch_named_params",
    "lstm_update_error",
    "make_lstm_batch",
    "reference_lstm_step",
    "torch_lstm_loss",
    "torch_named_params",
]
