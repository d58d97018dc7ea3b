"""A character-level language model on :class:`~gpubackprop.Sequential`, and its trainer.

:class:`CharRNN` reads a sequence of character indices c_1 .. c_T and predicts each
next character with one of three recurrent cells (``cell=``), all run by the layer
engine (forward, loss, backward through time, in one flat parameter buffer)::

    "lstm", "gru":  Sequential([Embedding(V, E), LSTM(E, H) | GRU(E, H), Dense(H, V)])
    "rnn":          Sequential([RNN(V, H, "tanh"), Dense(H, V)]) on one-hot x_t

    L = 1/(B·T) Σ_{b,t} −log softmax(y_{b,t})[target_{b,t}]

``"rnn"`` is exactly the seed notes' char-RNN (README.md): one-hot x_t, then
h_t = tanh(x_t Wxhᵀ + h_{t−1} Whhᵀ + b_h) and y_t = h_t Whyᵀ + b_y, with the notes'
``dhnext`` recurrence for backward (:mod:`gpubackprop.rnn`); the tests compare its loss
and every gradient with the notes' loop. The gated cells read a learned embedding of
each character instead (:class:`~gpubackprop.Embedding`, a row gather), as a PyTorch
language model would. The cells' formulas are in :mod:`gpubackprop.layers_recurrent`.

``python -m gpubackprop charrnn --cell lstm|gru|rnn`` (:func:`main`) trains one with
truncated BPTT (:func:`run_charrnn`), by default on a short original story shipped
with the package, holding out the text's last tenth to report a validation loss
(:func:`split_text`, :func:`text_loss`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import OrderedDict
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
from .layers import Dense, Layer
from .layers_embedding import Embedding
from .layers_recurrent import GRU, LSTM
from .losses import SoftmaxCrossEntropy
from .model import Sequential
from .optim import Adam
from .progress import ProgressBar
from .rnn import RNN, checked_array, clip_grad_norm

#: The text :func:`run_charrnn` trains on by default (in ``gpubackprop/data/``).
DEFAULT_TEXT = "lighthouse.txt"
#: The recurrent cells :class:`CharRNN` offers; ``"rnn"`` is the seed notes' model.
CELLS = ("lstm", "gru", "rnn")
DEFAULT_CELL = "lstm"
#: About where the validation loss of the default text stops falling (measured in
#: docs/charrnn.md): the text is short, and longer training memorises it.
DEFAULT_STEPS = 150
DEFAULT_HIDDEN = 192
#: Width of the character embedding of the gated cells (``"rnn"`` reads one-hot vectors).
DEFAULT_EMBEDDING = 64
DEFAULT_SEQ_LEN = 32
DEFAULT_BATCH = 32
DEFAULT_LR = 3e-3
DEFAULT_SAMPLE_EVERY = 50
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


class CharRNN:
    """Next-character model: a recurrent cell between characters and logits.

    ``vocab_size`` V distinct characters; ``hidden_size`` H; ``cell`` one of
    :data:`CELLS` (see the module docstring for the layers of each); ``embedding_dim``
    E for the gated cells (default :data:`DEFAULT_EMBEDDING`); ``device``, ``dtype``,
    ``seed`` as for :class:`~gpubackprop.Sequential` (the seed fixes every initial
    weight); ``chars``: the vocabulary, index i ↔ ``chars[i]`` (for :meth:`encode`,
    :meth:`decode`, :meth:`sample`).

    :attr:`model` is the :class:`~gpubackprop.Sequential` itself (one flat parameter
    buffer, ``flat_params`` / ``flat_grads``); :attr:`recurrent` its cell, whose state
    carries between windows (``h0`` below: (B, H), or the pair (h, c) for the LSTM).
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
        cell: str = DEFAULT_CELL,
        embedding_dim: int | None = None,
    ) -> None:
        self.vocab_size = check_int("CharRNN: vocab_size", vocab_size)
        self.hidden_size = check_int("CharRNN: hidden_size", hidden_size)
        if cell not in CELLS:
            raise ConfigError(f"CharRNN: cell must be one of {', '.join(CELLS)}; got {cell!r}")
        self.cell = cell
        if chars is not None and (len(chars) != self.vocab_size or len(set(chars)) != len(chars)):
            raise ConfigError(
                f"CharRNN: chars must be {self.vocab_size} distinct characters, got {chars!r}"
            )
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars or "")}
        v, h = self.vocab_size, self.hidden_size
        layers: list[Layer]
        if cell == "rnn":
            # its own buffers are a placeholder: the model's flat buffer replaces them
            self.recurrent: RNN | LSTM | GRU = RNN(v, h, "tanh", device="cpu")
            layers = [self.recurrent, Dense(h, v)]
        else:
            e = check_int("CharRNN: embedding_dim", embedding_dim or DEFAULT_EMBEDDING)
            self.recurrent = LSTM(e, h) if cell == "lstm" else GRU(e, h)
            layers = [Embedding(v, e), self.recurrent, Dense(h, v)]
        self.model = Sequential(layers, device=device, dtype=dtype, seed=seed)
        self.backend, self.dtype = self.model.backend, self.model.dtype
        self.loss_function = SoftmaxCrossEntropy()
        self._eye: Array | None = None
        #: the one-hot inputs of the "rnn" cell, one buffer per (B, T), reused every step
        self._onehot: dict[tuple[int, ...], Array] = {}

    # --- description and parameters ------------------------------------------------------
    def describe(self) -> str:
        return f"CharRNN(vocab={self.vocab_size}, hidden={self.hidden_size}, cell={self.cell})"

    def __repr__(self) -> str:
        return (
            f"CharRNN({self.vocab_size}, {self.hidden_size}, cell={self.cell!r}, "
            f"device={self.device!r}, dtype={self.dtype.name!r})  "
            f"# {self.num_parameters:,} parameters"
        )

    @property
    def device(self) -> str:
        return self.model.device

    @property
    def flat_params(self) -> Array:
        """Every parameter, in one buffer (the model's)."""
        return self.model.flat_params

    @property
    def flat_grads(self) -> Array:
        """Every gradient, in one buffer laid out as :attr:`flat_params`."""
        return self.model.flat_grads

    @property
    def num_parameters(self) -> int:
        return int(self.model.flat_params.size)

    def parameters(self) -> OrderedDict[str, Array]:
        """``"<layer>.<name>"`` -> live view of :attr:`flat_params` (the model's names)."""
        return self.model.parameters()

    def gradients(self) -> OrderedDict[str, Array]:
        """Like :meth:`parameters`, views of :attr:`flat_grads`."""
        return self.model.gradients()

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

    def _model_input(self, inputs: Any) -> Array:
        """The model's input for (B, T) indices: the ids, or one-hot rows for ``"rnn"``."""
        ids = self._indices(inputs, "inputs")
        if self.cell != "rnn":
            return ids
        xp, shape = self.backend.xp, tuple(ids.shape)
        with self.backend.activate():
            if self._eye is None:
                self._eye = xp.eye(self.vocab_size, dtype=self.dtype)
            if shape not in self._onehot:
                self._onehot[shape] = xp.empty((*shape, self.vocab_size), dtype=self.dtype)
            return xp.take(self._eye, ids, axis=0, out=self._onehot[shape])

    def _start(self, inputs: Any, h0: Any) -> Array:
        x = self._model_input(inputs)
        self.recurrent.initial_state = h0
        return x

    def _final_state(self) -> Any:
        """The cell's last state as new arrays (the layer's own are its buffers)."""
        state = self.recurrent.final_state
        assert state is not None, "a forward pass sets the final state"
        return tuple(s.copy() for s in state) if isinstance(state, tuple) else state.copy()

    def _batch(self, inputs: Any, targets: Any, h0: Any) -> Any:
        x = self._start(inputs, h0)
        targets = self._indices(targets, "targets")
        if targets.shape != inputs.shape:
            raise ShapeError(
                f"{self.describe()}: targets have shape {tuple(targets.shape)}, "
                f"inputs {tuple(inputs.shape)}; they must match"
            )
        return self.model.prepare_batch(x, targets, self.loss_function)

    def forward(self, inputs: Any, h0: Any = None) -> tuple[Array, Any]:
        """Logits (B, T, V) for ``inputs`` (B, T) and the last state (h_T; (h_T, c_T) for
        the LSTM), new arrays on the model's device; pass the state as the next ``h0``."""
        x = self._start(inputs, h0)
        logits = self.model.forward_batch(self.model.prepare_input(x)).copy()
        return logits, self._final_state()

    def loss(self, inputs: Any, targets: Any, h0: Any = None) -> tuple[float, Any]:
        """``(L, state)``: the mean cross-entropy per character; the gradients are untouched."""
        batch = self._batch(inputs, targets, h0)
        out = self.model.forward_batch(batch.x)
        with self.backend.activate():
            grad = self.model.loss_grad_buffer(out.shape)
            value = self.loss_function.write_value_and_grad(self.backend, out, batch.y, grad)
        return float(value), self._final_state()

    def loss_and_grad(self, inputs: Any, targets: Any, h0: Any = None) -> tuple[float, Any]:
        """Forward, loss and backward through time on one window.

        L = 1/(B·T) Σ_{b,t} −log softmax(y_{b,t})[target_{b,t}] for ``inputs`` and the
        next characters ``targets`` (B, T) in [0, V), from ``h0`` (None: zeros), e.g.
        the last window's state. Fills :meth:`gradients` (overwriting); returns
        ``(L, state)``, the state as new arrays (detached: backward stops at ``h0``).
        """
        batch = self._batch(inputs, targets, h0)
        value = self.model.read_loss(batch, self.model.loss_and_grad_batch(batch))
        return value, self._final_state()

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

    @property
    def best_validation(self) -> tuple[int, float]:
        """``(step, loss)``: the lowest validation loss recorded, and when."""
        return min(self.validation_losses, key=lambda entry: entry[1])


def run_charrnn(
    text: str | None = None,
    *,
    device: str = "auto",
    cell: str = DEFAULT_CELL,
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
    """Train a :class:`CharRNN` with ``cell`` on ``text`` (default: :func:`default_text`)
    and report.

    Each step takes the next window of every stream (:func:`text_streams`) from the
    state the last one ended in (zeros as a pass starts, at a random offset below
    ``seq_len`` so window boundaries move), clips the BPTT gradients to norm
    :data:`CLIP_NORM` and takes an Adam step. A progress bar with the mean loss and a
    sample every ``sample_every`` steps (0: at the end; ``quiet``: neither). The last
    :data:`VALIDATION_FRACTION` of the text is held out (:func:`split_text`): never
    trained on, its loss (:func:`text_loss`) reported after every chunk. At the end
    the training loss over one pass of the training text and the validation loss,
    against the target :data:`TARGET_FRACTION` · ln V, and the best validation loss seen
    (with its step: past it, the model starts to memorise the training text).
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
    model = CharRNN(len(chars), hidden, device, "float32", seed, chars=chars, cell=cell)
    data, held_out = split_text(model.encode(text))
    inputs, targets, windows = _device_streams(model, data, batch, seq_len)
    # each pass starts at a random offset, so window boundaries move between passes
    max_offset = min(seq_len - 1, len(data) - 1 - batch * seq_len)
    target_loss = TARGET_FRACTION * math.log(len(chars))
    result = CharRNNResult(model, target_loss=target_loss)
    print(
        f"char-RNN ({cell}) on {name or 'the text'}: {len(text):,} characters; training on the "
        f"first {len(data):,}, the last {len(held_out):,} ({VALIDATION_FRACTION:.0%}) held "
        f"out for validation\nvocabulary {len(chars)} (ln V = {math.log(len(chars)):.3f}; "
        f"target < {TARGET_FRACTION:g}·ln V = {target_loss:.3f} nats/char)\n"
        f"device: {model.device} ({model.backend.reason})\n"
        f"{model!r}; batch {batch} x seq-len {seq_len}, {windows} windows per pass, "
        f"{steps} steps, Adam lr {lr:g}, clip {CLIP_NORM:g}",
        file=out,
    )
    rng = np.random.default_rng(seed)  # the passes' offsets
    sample_rng = np.random.default_rng([seed, 1])  # the samples: --quiet changes nothing else
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
                print(_show_sample(model, text[0], sample_rng), file=out)
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
    result.sample = _show_sample(model, text[0], sample_rng)
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
        _best_line(result),
        f"target: a model that has learned nothing gives each of the {vocab} characters "
        f"probability 1/{vocab} and scores ln V = {ln_v:.3f} nats/char; the target is "
        f"{TARGET_FRACTION:.0%} of that, {result.target_loss:.3f} nats/char",
    ])


def _best_line(result: CharRNNResult) -> str:
    step, value = result.best_validation
    if step == result.validation_losses[-1][0]:
        return f"the validation loss was lowest at the end (step {step})"
    return (
        f"the validation loss was lowest after step {step}, {value:.3f} nats/char: since "
        "then the training loss fell while the validation loss rose (the model memorises "
        "the training text; fewer --steps, or a longer text)"
    )


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
            "Train a character-level language model (LSTM, GRU or the seed notes' RNN; "
            "truncated BPTT, Adam, gradient clipping) on the first 90% of a text; print the "
            "training loss and the loss on the held-out last 10% (validation) as it goes, and "
            "samples of generated text."
        ),
    )
    parser.add_argument("--text", type=Path, default=None,
                        help="UTF-8 text file to train on (default: a short story shipped "
                             "with gpubackprop)")
    parser.add_argument("--cell", choices=CELLS, default=DEFAULT_CELL,
                        help="the recurrent cell; rnn is the seed notes' vanilla char-RNN "
                             "(default: %(default)s)")
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
