"""A character-level language model on :class:`~gpubackprop.RNN`, and its trainer.

:class:`CharRNN` reads a sequence of character indices c_1 .. c_T and predicts
each next character::

    h_t = tanh(Wxh[:, c_t] + h_{t−1} Whhᵀ + b_h)          (the RNN on one-hot x_t)
    y_t = h_t Whyᵀ + b_y                                  (logits over the vocabulary)
    L   = 1/(B·T) Σ_{b,t} −log softmax(y_{b,t})[target_{b,t}]

A one-hot x_t times Wxhᵀ is column c_t of Wxh, so the input projection is a gather,
not a matmul. Backward is the seed notes' char-RNN (README.md), batch-major::

    dy     = (softmax(y) − onehot(target)) / (B·T)        (the loss op writes this)
    dWhy   = Σ dyᵀ h          db_y = Σ dyᵀ 1             ∂L/∂h_t = dy_t Why
    ... then the RNN's BPTT (see :mod:`gpubackprop.rnn`) for dWhh, db_h and dhraw,
    dWxh   = Σ dhrawᵀ onehot(c)                          (column c gets the rows of c)

The last sum is a GEMM with a one-hot matrix, not a scatter-add: deterministic on
the GPU too (no float atomics). ``python -m gpubackprop charrnn`` (:func:`main`)
trains one with truncated BPTT (:func:`run_charrnn`), by default on a short
original story shipped with the package, holding out the text's last tenth to
report a validation loss (:func:`split_text`, :func:`text_loss`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .arrays import Array
from .backend import Backend
from .checks import check_int, check_real
from .cli_types import add_training_options, int_at_least, run_command
from .errors import ConfigError, LabelError, ShapeError
from .optim import Adam
from .params import allocate_flat, he_or_xavier
from .progress import ProgressBar
from .rnn import RNN, NamedParameters, checked_array, clip_grad_norm

#: The text :func:`run_charrnn` trains on by default (in ``gpubackprop/data/``).
DEFAULT_TEXT = "lighthouse.txt"
DEFAULT_STEPS = 1000
DEFAULT_HIDDEN = 192
DEFAULT_SEQ_LEN = 32
DEFAULT_BATCH = 32
DEFAULT_LR = 3e-3
DEFAULT_SAMPLE_EVERY = 250
#: Gradients are clipped to this global L2 norm before every update.
CLIP_NORM = 5.0
#: Characters per printed sample, and the temperature they are drawn at.
SAMPLE_LENGTH = 240
SAMPLE_TEMPERATURE = 0.5
#: The default run should end below this fraction of ln(vocabulary size) nats/char: a
#: model that has learned nothing gives every character 1/V and scores ln V.
TARGET_FRACTION = 0.6
#: The last tenth of the text is held out: never trained on, scored as validation.
VALIDATION_FRACTION = 0.1


def default_text() -> str:
    """The training text shipped with the package (an original, public-domain story)."""
    return (resources.files("gpubackprop") / "data" / DEFAULT_TEXT).read_text("utf-8")


class CharRNN(NamedParameters):
    """Next-character model: one-hot input, a tanh :class:`RNN`, a linear readout.

    ``vocab_size`` V distinct characters; ``device``, ``dtype``, ``seed`` as for
    :class:`~gpubackprop.RNN` (the seed fixes every initial weight); ``chars``: the
    vocabulary, index i ↔ ``chars[i]`` (for :meth:`encode`, :meth:`decode`, :meth:`sample`).

    ONE flat buffer (``flat_params``, ``flat_grads``) holds the RNN's ``Wxh`` (hidden,
    V), ``Whh``, ``bh`` (``self.rnn`` works on views of them), then the readout's
    ``Why`` (V, hidden), Xavier uniform, and ``by`` (V,) = 0.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        device: str | Backend = "auto",
        dtype: Any = "float32",
        seed: int | None = None,
        *,
        chars: str | None = None,
    ) -> None:
        self.vocab_size = check_int("CharRNN: vocab_size", vocab_size)
        self.hidden_size = check_int("CharRNN: hidden_size", hidden_size)
        if chars is not None and (len(chars) != self.vocab_size or len(set(chars)) != len(chars)):
            raise ConfigError(
                f"CharRNN: chars must be {self.vocab_size} distinct characters, got {chars!r}"
            )
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars or "")}
        rng = np.random.default_rng(seed)
        self.rnn = RNN(vocab_size, hidden_size, "tanh", device=device, dtype=dtype, seed=rng)
        self.backend, self.dtype = self.rnn.backend, self.rnn.dtype
        v, h = self.vocab_size, self.hidden_size
        shapes = [*self.rnn.param_shapes(), ("Why", (v, h)), ("by", (v,))]
        self.flat_params, self.flat_grads, self.params, self.grads = allocate_flat(
            self.backend, self.dtype, shapes, self.describe()
        )
        n_rnn = self.rnn.num_parameters
        self.rnn.move_into(self.flat_params[:n_rnn], self.flat_grads[:n_rnn])
        with self.backend.activate():
            self.params["Why"][...] = self.backend.asarray(he_or_xavier(rng, "xavier", v, h))

    # --- description -------------------------------------------------------------------
    def describe(self) -> str:
        return f"CharRNN(vocab={self.vocab_size}, hidden={self.hidden_size})"

    def __repr__(self) -> str:
        return (
            f"CharRNN({self.vocab_size}, {self.hidden_size}, device={self.device!r}, "
            f"dtype={self.dtype.name!r})  # {self.num_parameters:,} parameters"
        )

    # --- text <-> indices -----------------------------------------------------------------
    def _need_chars(self, what: str) -> str:
        if self.chars is None:
            raise ConfigError(
                f"{self.describe()}.{what} needs the vocabulary: build it with chars=..."
            )
        return self.chars

    def encode(self, text: str) -> np.ndarray:
        """The indices of ``text``'s characters (int64, on the host)."""
        self._need_chars("encode")
        try:
            return np.fromiter((self._index[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as exc:
            raise LabelError(
                f"{self.describe()}: character {exc.args[0]!r} is not in the vocabulary"
            ) from None

    def decode(self, indices: Sequence[int] | np.ndarray) -> str:
        """The characters of ``indices``."""
        chars = self._need_chars("decode")
        return "".join(chars[int(i)] for i in indices)

    # --- passes ----------------------------------------------------------------------------
    def _indices(self, x: Any, what: str) -> Array:
        """Validate a (B, T) array of character indices on the model's device."""
        x = checked_array(
            self.backend, x, f"{self.describe()}: {what}", "iu", "integer character indices"
        )
        if x.ndim != 2 or x.size == 0:
            hint = " (one sequence? use x[None])" if x.ndim == 1 else ""
            raise ShapeError(
                f"{self.describe()}: expected {what} of shape (batch, time), non-empty, "
                f"got shape {tuple(x.shape)}{hint}"
            )
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise LabelError(
                f"{self.describe()}: {what} holds index {bad}, out of range for a vocabulary "
                f"of {self.vocab_size} (expected 0 <= index < {self.vocab_size})"
            )
        return x

    def _forward(self, inputs: Array, h0: Any) -> dict[str, Array]:
        """Forward over validated inputs; the buffers hold H and the logits (time-major)."""
        batch, steps = inputs.shape
        if h0 is not None:
            h0 = self.rnn.check_state(h0, batch, "h0")
        n, v, d = batch * steps, self.vocab_size, self.dtype
        extra: dict[str, tuple[tuple[int, ...], Any]] = {
            name: ((n, v), d) for name in ("logits", "dlogits", "onehot")
        }
        extra |= {"idx": ((n,), np.int64), "targets": ((n,), np.int64)}
        ws = self.rnn.recurrence_buffers(batch, steps, extra)
        xp, ops = self.backend.xp, self.backend.ops
        ws["idx"].reshape(steps, batch)[...] = inputs.T
        us = ws["U"].reshape(n, self.hidden_size)
        xp.take(self.params["Wxh"].T, ws["idx"], axis=0, out=us)  # x_t Wxhᵀ, one-hot x_t
        ops.add_bias(us, self.params["bh"])
        self.rnn.run_forward(ws, h0)
        ops.matmul(ws["H"][1:].reshape(n, self.hidden_size), self.params["Why"],
                   out=ws["logits"], trans_b=True)
        ops.add_bias(ws["logits"], self.params["by"])
        return ws

    def forward(self, inputs: Any, h0: Any = None) -> tuple[Array, Array]:
        """Logits (B, T, V) for ``inputs`` (B, T) and the last state h_T (B, hidden), both
        new arrays on the model's device; pass h_T as the next ``h0``."""
        inputs = self._indices(inputs, "inputs")
        batch, steps = inputs.shape
        with self.backend.activate():
            ws = self._forward(inputs, h0)
            logits = ws["logits"].reshape(steps, batch, self.vocab_size)
            return logits.transpose(1, 0, 2).copy(), ws["H"][steps].copy()

    def _loss(self, inputs: Any, targets: Any, h0: Any) -> tuple[dict[str, Array], float]:
        inputs = self._indices(inputs, "inputs")
        targets = self._indices(targets, "targets")
        if targets.shape != inputs.shape:
            raise ShapeError(
                f"{self.describe()}: targets have shape {tuple(targets.shape)}, "
                f"inputs {tuple(inputs.shape)}; they must match"
            )
        batch, steps = inputs.shape
        ws = self._forward(inputs, h0)
        ws["targets"].reshape(steps, batch)[...] = targets.T
        value = self.backend.ops.softmax_cross_entropy_labels(
            ws["logits"], ws["targets"], ws["dlogits"]
        )
        return ws, float(value)

    def loss(self, inputs: Any, targets: Any, h0: Any = None) -> tuple[float, Array]:
        """``(L, h_T)``: the mean cross-entropy per character, no gradients."""
        with self.backend.activate():
            ws, value = self._loss(inputs, targets, h0)
            return value, ws["H"][-1].copy()

    def loss_and_grad(self, inputs: Any, targets: Any, h0: Any = None) -> tuple[float, Array]:
        """Forward, loss and backward through time on one window.

        L = 1/(B·T) Σ_{b,t} −log softmax(y_{b,t})[target_{b,t}], gradients as in the
        module docstring, for ``inputs`` and the next characters ``targets`` (B, T) in
        [0, V), from ``h0`` (B, hidden; None: zeros), e.g. the last window's h_T.
        Fills :meth:`gradients` (overwriting); returns ``(L, h_T)``, h_T a new array.
        """
        with self.backend.activate():
            ws, value = self._loss(inputs, targets, h0)
            ops = self.backend.ops
            n = ws["logits"].shape[0]
            hs = ws["H"][1:].reshape(n, self.hidden_size)
            dlogits = ws["dlogits"]
            ops.matmul(dlogits, hs, out=self.grads["Why"], trans_a=True)
            ops.column_sum(dlogits, out=self.grads["by"])
            ops.matmul(dlogits, self.params["Why"], out=ws["dH"].reshape(n, self.hidden_size))
            self.rnn.run_backward(ws, None)
            onehot = ws["onehot"]
            onehot.fill(0)
            onehot[self.backend.xp.arange(n), ws["idx"]] = 1
            ops.matmul(ws["dhraw"].reshape(n, self.hidden_size), onehot,
                       out=self.grads["Wxh"], trans_a=True)
            return value, ws["H"][-1].copy()

    # --- sampling ---------------------------------------------------------------------------
    def sample_indices(
        self,
        start: Sequence[int] | np.ndarray | int,
        n: int,
        temperature: float = 1.0,
        rng: np.random.Generator | int | None = None,
    ) -> list[int]:
        """Feed the indices ``start``, then draw ``n`` characters one at a time.

        Each is drawn from softmax(y / temperature) of the last logits and fed
        back in; lower temperatures give likelier, more repetitive text.
        """
        n = check_int(f"{self.describe()}.sample: n", n, minimum=0)
        if check_real(f"{self.describe()}.sample: temperature", temperature) <= 0:
            raise ConfigError(
                f"{self.describe()}.sample: temperature must be positive, got {temperature!r}"
            )
        prime = np.atleast_1d(np.asarray(start))
        if prime.size == 0:
            raise ConfigError(f"{self.describe()}.sample: start needs at least one character")
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        logits, h = self.forward(self.backend.asarray(prime[None, :]))
        out: list[int] = []
        for _ in range(n):
            y = self.backend.to_numpy(logits[0, -1]).astype(np.float64) / temperature
            p = np.exp(y - y.max())
            out.append(int(gen.choice(self.vocab_size, p=p / p.sum())))
            logits, h = self.forward(self.backend.asarray(np.array([[out[-1]]])), h)
        return out

    def sample(
        self,
        start: str | int,
        n: int,
        temperature: float = 1.0,
        rng: np.random.Generator | int | None = None,
    ) -> str:
        """``n`` characters drawn after ``start`` (seed text, or a character index).

        Returns only the drawn characters; see :meth:`sample_indices`.
        """
        self._need_chars("sample")
        prime = self.encode(start) if isinstance(start, str) else [start]
        return self.decode(self.sample_indices(prime, n, temperature, rng))


# --- training on a text -----------------------------------------------------------------------
def text_streams(data: np.ndarray, batch: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``data`` into ``batch`` parallel streams for truncated BPTT.

    Stream b is the contiguous stretch starting at b·L, L = (len − 1) // batch,
    cut to a whole number W of windows of ``seq_len``. Returns ``(inputs,
    targets)`` of shape (batch, W·seq_len), targets = inputs shifted by one;
    window k is columns k·seq_len .. (k+1)·seq_len − 1.
    """
    stream = (len(data) - 1) // batch
    windows = stream // seq_len
    if windows < 1:
        raise ConfigError(
            f"a text of {len(data)} characters is too short for batch {batch} x seq-len "
            f"{seq_len} (each of the {batch} streams needs at least {seq_len + 1} "
            "characters); use a longer text, a smaller --batch or a smaller --seq-len"
        )
    starts = np.arange(batch)[:, None] * stream + np.arange(windows * seq_len)[None, :]
    return data[starts], data[starts + 1]


def split_text(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(training, validation)``: the last :data:`VALIDATION_FRACTION` of ``data`` held out.

    The two parts are disjoint and in order: data = training ++ validation, with
    len(validation) = ⌊len(data) · VALIDATION_FRACTION⌋ ≥ 2 (one input, one target).
    """
    held_out = int(len(data) * VALIDATION_FRACTION)
    if held_out < 2:
        raise ConfigError(
            f"a text of {len(data)} characters is too short to hold out its last "
            f"{VALIDATION_FRACTION:.0%} for validation (at least 2 characters); use a longer text"
        )
    return data[:-held_out], data[-held_out:]


def text_loss(model: CharRNN, data: np.ndarray, seq_len: int) -> float:
    """Mean cross-entropy per character of predicting ``data[1:]`` from ``data[:-1]``.

    L = 1/(N−1) Σ_t −log softmax(y_t)[data_{t+1}]: the text read as one sequence from a
    zero state, in windows of ``seq_len`` with the state carried over; no gradients.
    """
    seq = model.backend.asarray(data[None, :])
    total, h = 0.0, None
    for lo in range(0, len(data) - 1, seq_len):
        hi = min(lo + seq_len, len(data) - 1)
        value, h = model.loss(seq[:, lo:hi], seq[:, lo + 1 : hi + 1], h)
        total += value * (hi - lo)
    return total / (len(data) - 1)


@dataclass
class CharRNNResult:
    """What :func:`run_charrnn` did: the model, the losses and the final numbers.

    ``losses``: the training loss of every step; ``final_loss``: the training loss
    over one pass of the training text after training; ``validation_losses``:
    ``(steps done, loss)`` on the held-out text (:func:`split_text`) at the end of
    every ``sample_every`` chunk, the last one after training (``validation_loss``).
    """

    model: CharRNN
    losses: list[float] = field(default_factory=list)
    final_loss: float = math.nan
    target_loss: float = math.nan
    seconds: float = 0.0
    sample: str = ""
    validation_losses: list[tuple[int, float]] = field(default_factory=list)
    validation_loss: float = math.nan


def run_charrnn(
    text: str | None = None,
    *,
    device: str = "auto",
    steps: int = DEFAULT_STEPS,
    hidden: int = DEFAULT_HIDDEN,
    seq_len: int = DEFAULT_SEQ_LEN,
    batch: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    sample_every: int = DEFAULT_SAMPLE_EVERY,
    quiet: bool = False,
    name: str | None = None,
    file: TextIO | None = None,
) -> CharRNNResult:
    """Train a :class:`CharRNN` on ``text`` (default: :func:`default_text`) and report.

    Each step takes the next window of every stream (:func:`text_streams`) from the
    state the last one ended in (zeros as a pass starts, at a random offset below
    ``seq_len`` so window boundaries move), clips the BPTT gradients to norm
    :data:`CLIP_NORM` and takes an Adam step. A progress bar with the mean loss and a
    sample every ``sample_every`` steps (0: at the end; ``quiet``: neither). The last
    :data:`VALIDATION_FRACTION` of the text is held out (:func:`split_text`): never
    trained on, its loss (:func:`text_loss`) reported after every chunk. At the end
    the training loss over one pass of the training text and the validation loss,
    against the target :data:`TARGET_FRACTION` · ln V.
    """
    out = file if file is not None else sys.stdout
    if text is None:
        text, name = default_text(), name or f"the default text ({DEFAULT_TEXT})"
    chars = "".join(sorted(set(text)))
    if len(chars) < 2:
        raise ConfigError(f"the text needs at least 2 distinct characters, got {chars!r}")
    for label, count in (("steps", steps), ("hidden", hidden), ("seq_len", seq_len),
                         ("batch", batch)):
        check_int(f"charrnn: {label}", count)
    check_int("charrnn: sample_every", sample_every, minimum=0)
    model = CharRNN(len(chars), hidden, device, "float32", seed, chars=chars)
    data, held_out = split_text(model.encode(text))
    inputs, targets, windows = _device_streams(model, data, batch, seq_len)
    # each pass starts at a random offset, so window boundaries move between passes
    max_offset = min(seq_len - 1, len(data) - 1 - batch * seq_len)
    target_loss = TARGET_FRACTION * math.log(len(chars))
    result = CharRNNResult(model, target_loss=target_loss)
    print(
        f"char-RNN on {name or 'the text'}: {len(text):,} characters; training on the "
        f"first {len(data):,}, the last {len(held_out):,} ({VALIDATION_FRACTION:.0%}) held "
        f"out for validation\nvocabulary {len(chars)} (ln V = {math.log(len(chars)):.3f}; "
        f"target < {TARGET_FRACTION:g}·ln V = {target_loss:.3f} nats/char)\n"
        f"device: {model.device} ({model.backend.reason})\n"
        f"{model!r}; batch {batch} x seq-len {seq_len}, {windows} windows per pass, "
        f"{steps} steps, Adam lr {lr:g}, clip {CLIP_NORM:g}",
        file=out,
    )
    rng = np.random.default_rng(seed)
    optimizer = Adam(lr=lr)
    chunk = sample_every or steps
    digits = len(str(steps))
    start_time = time.perf_counter()
    k = n_windows = 0
    for lo in range(0, steps, chunk):
        hi = min(steps, lo + chunk)
        bar = (
            None if quiet
            else ProgressBar(hi - lo, f"steps {lo + 1:>{digits}}-{hi:<{digits}} ", out)
        )
        for step in range(lo, hi):
            if k == n_windows:  # a new pass over the text, from a zero state
                offset = int(rng.integers(max_offset + 1))
                x_pass, y_pass, n_windows = _device_streams(model, data[offset:], batch, seq_len)
                k, h = 0, None
            cols = slice(k * seq_len, (k + 1) * seq_len)
            value, h = model.loss_and_grad(x_pass[:, cols], y_pass[:, cols], h)
            k += 1
            clip_grad_norm(model.flat_grads, CLIP_NORM)
            optimizer.step(model.flat_params, model.flat_grads)
            result.losses.append(value)
            if bar is not None and bar.due():
                bar.update(step - lo + 1, f"training loss {np.mean(result.losses[lo:]):.4f}")
        result.validation_losses.append((hi, text_loss(model, held_out, seq_len)))
        if bar is not None:
            bar.close(
                f"training loss {np.mean(result.losses[lo:]):.4f}, "
                f"validation loss {result.validation_losses[-1][1]:.4f}"
            )
            if hi < steps:
                print(_show_sample(model, text[0], rng), file=out)
    result.seconds = time.perf_counter() - start_time
    h = None  # the final loss: one pass over the unshifted streams
    total = 0.0
    for k in range(windows):
        cols = slice(k * seq_len, (k + 1) * seq_len)
        value, h = model.loss(inputs[:, cols], targets[:, cols], h)
        total += value
    result.final_loss = total / windows
    result.validation_loss = result.validation_losses[-1][1]
    print(_report(result, len(data), len(held_out)), file=out)
    result.sample = _show_sample(model, text[0], rng)
    print(result.sample, file=out)
    return result


def _report(result: CharRNNResult, n_train: int, n_held_out: int) -> str:
    """The closing lines: training and validation loss, and the target in words."""
    vocab = result.model.vocab_size
    ln_v = math.log(vocab)

    def line(label: str, value: float, where: str) -> str:
        verdict = "below" if value < result.target_loss else "NOT below"
        return (
            f"{label} {value:.3f} nats/char ({value / ln_v:.0%} of ln V) over {where}: "
            f"{verdict} the target"
        )

    return "\n".join([
        f"trained {len(result.losses)} steps in {result.seconds:.1f} s",
        line("training loss  ", result.final_loss, f"the training text ({n_train:,} characters)"),
        line("validation loss", result.validation_loss,
             f"the held-out last {VALIDATION_FRACTION:.0%} ({n_held_out:,} characters)"),
        f"target: a model that has learned nothing gives each of the {vocab} characters "
        f"probability 1/{vocab} and scores ln V = {ln_v:.3f} nats/char; the target is "
        f"{TARGET_FRACTION:.0%} of that, {result.target_loss:.3f} nats/char",
    ])


def _device_streams(
    model: CharRNN, data: np.ndarray, batch: int, seq_len: int
) -> tuple[Array, Array, int]:
    """:func:`text_streams` on the model's device, and the number of windows."""
    inputs, targets = text_streams(data, batch, seq_len)
    return model.backend.asarray(inputs), model.backend.asarray(targets), inputs.shape[1] // seq_len


def _show_sample(model: CharRNN, start: str, rng: np.random.Generator) -> str:
    drawn = model.sample(start, SAMPLE_LENGTH, SAMPLE_TEMPERATURE, rng)
    return f"--- sample (temperature {SAMPLE_TEMPERATURE:g}) ---\n{start}{drawn}\n---"


# --- command line --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``charrnn`` command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="gpubackprop charrnn",
        description=(
            "Train a character-level RNN language model (truncated BPTT, Adam, gradient "
            "clipping) on the first 90% of a text; print the training loss and the loss on "
            "the held-out last 10% (validation) as it goes, and samples of generated text."
        ),
    )
    parser.add_argument("--text", type=Path, default=None,
                        help="UTF-8 text file to train on (default: a short story shipped "
                             "with gpubackprop)")
    add_training_options(
        parser,
        lr=DEFAULT_LR,
        lr_help="Adam's learning rate",
        seed_help="seeds the weights and the samples",
        quiet_help="no progress bars or samples along the way: only the results",
    )
    parser.add_argument("--steps", type=int_at_least(1), default=DEFAULT_STEPS,
                        help="training steps, one window each (default: %(default)s)")
    parser.add_argument("--hidden", type=int_at_least(1), default=DEFAULT_HIDDEN,
                        help="hidden state width (default: %(default)s)")
    parser.add_argument("--seq-len", type=int_at_least(1), default=DEFAULT_SEQ_LEN,
                        help="characters per truncated-BPTT window (default: %(default)s)")
    parser.add_argument("--batch", type=int_at_least(1), default=DEFAULT_BATCH,
                        help="parallel streams per step (default: %(default)s)")
    parser.add_argument("--sample-every", type=int_at_least(0), default=DEFAULT_SAMPLE_EVERY,
                        help="print the training and validation loss and a sample every K "
                             "steps; 0: only at the end "
                             "(default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gpubackprop charrnn [options]``: parse, train, return the exit code."""
    args = build_parser().parse_args(argv)
    return run_command("charrnn", _run_args, args)


def _run_args(args: argparse.Namespace) -> None:
    """:func:`run_charrnn` on the parsed options (``--text``: the file to read)."""
    options = vars(args)
    path = options.pop("text")
    try:
        text = None if path is None else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    run_charrnn(text, name=None if path is None else str(path), **options)
