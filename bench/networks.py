"""The benchmark networks, shared by the CPU benchmark and any device benchmark.

Each :class:`Network` is a plain MLP: Dense layers of the given widths, the
hidden activation after every layer but the last (the last is linear), and a
loss by its gpubackprop name (``"mse"`` or ``"cross_entropy"``, integer labels).
:func:`make_batch` gives the fixed, seeded data every contender trains on and
:func:`build_model` the gpubackprop model, so two benchmarks that use these
helpers time the same work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    from gpubackprop import Sequential

LOSSES = ("mse", "cross_entropy")


@dataclass(frozen=True)
class Network:
    """One benchmark network.

    Attributes:
        name: short identifier, used by ``--networks``.
        batch: rows per training step.
        widths: layer widths, input first: ``(1000, 100, 10)`` is two Dense layers.
        activation: gpubackprop name of the hidden activation (``"relu"``, ...).
        loss: ``"mse"`` (normal targets) or ``"cross_entropy"`` (integer labels).
    """

    name: str
    batch: int
    widths: tuple[int, ...]
    activation: str
    loss: str

    def __post_init__(self) -> None:
        if len(self.widths) < 2:
            raise ValueError(f"{self.name}: need at least an input and an output width")
        if self.loss not in LOSSES:
            raise ValueError(f"{self.name}: loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def layers(self) -> list[tuple[int, int, str | None]]:
        """``(in, out, activation)`` per Dense layer; the last has activation None."""
        pairs = list(zip(self.widths[:-1], self.widths[1:], strict=True))
        last = len(pairs) - 1
        return [(i, o, None if k == last else self.activation) for k, (i, o) in enumerate(pairs)]

    @property
    def num_parameters(self) -> int:
        """Weights plus biases."""
        return sum(i * o + o for i, o, _ in self.layers)

    @property
    def flops_per_step(self) -> int:
        """Multiply-adds ×2 of the GEMMs of one step: forward, dW, and Δ_in except layer 0."""
        gemm = sum(2 * self.batch * i * o for i, o, _ in self.layers)
        first = 2 * self.batch * self.widths[0] * self.widths[1]
        return 3 * gemm - first

    def describe(self) -> str:
        """``784-512-512-10 relu, softmax CE, batch 256``."""
        loss = "MSE" if self.loss == "mse" else "softmax CE"
        widths = "-".join(str(w) for w in self.widths)
        return f"{widths} {self.activation}, {loss}, batch {self.batch}"

    def summary(self) -> dict[str, Any]:
        """The network as the benchmarks' JSON results describe it."""
        return {
            "network": self.name,
            "description": self.describe(),
            "batch": self.batch,
            "widths": list(self.widths),
            "activation": self.activation,
            "loss": self.loss,
            "flops_per_step": self.flops_per_step,
        }


NETWORKS: list[Network] = [
    Network("seed-2layer", 64, (1000, 100, 10), "sigmoid", "mse"),
    Network("mnist-mlp", 256, (784, 512, 512, 10), "relu", "cross_entropy"),
    Network("deep-narrow", 128, (256,) * 11, "tanh", "mse"),
    Network("wide-b512", 512, (2048, 2048, 2048, 2048, 10), "relu", "cross_entropy"),
]

#: The GPU benchmark's networks: :data:`NETWORKS` plus ``wide``, a GEMM-bound
#: case (about 1.1 TFLOP per step) too slow for the CPU benchmark's default set.
GPU_NETWORKS: list[Network] = [
    *NETWORKS,
    Network("wide", 4096, (4096, 4096, 4096, 4096), "relu", "mse"),
]


class Named(Protocol):
    """Anything with a ``name``: a :class:`Network` or ``bench.lstm_lm.LSTMNetwork``."""

    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)


def get_networks(names: str | None = None, networks: Sequence[N] | None = None) -> list[N]:
    """The networks named in a comma-separated list (all of them for None or "").

    ``networks`` is the table to pick from: :data:`NETWORKS` (the default, the MLPs),
    :data:`GPU_NETWORKS`, or the CPU benchmark's ``CPU_NETWORKS`` (with the LSTM LM).
    """
    pool: list[Any] = list(NETWORKS if networks is None else networks)
    if not names:
        return pool
    by_name = {net.name: net for net in pool}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"unknown network(s) {unknown}; known: {', '.join(by_name)}")
    return [by_name[n] for n in wanted]


def make_batch(net: Network, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed float32 batch ``(x, y)`` on the host.

    x is standard normal, shape (batch, in). y is int64 labels in [0, out) for
    cross-entropy, else standard normal float32 of shape (batch, out).
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((net.batch, net.widths[0]), dtype=np.float32)
    if net.loss == "cross_entropy":
        y = rng.integers(0, net.widths[-1], size=net.batch, dtype=np.int64)
    else:
        y = rng.standard_normal((net.batch, net.widths[-1]), dtype=np.float32)
    return x, y


def build_model(
    net: Network,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    precision: str | None = None,
) -> Sequential:
    """The network as a ``gpubackprop.Sequential`` (seeded initial weights).

    ``precision`` (``"fp32"`` / ``"tf32"``) is passed on only when given, so a
    gpubackprop without that argument still builds the default models.
    """
    import gpubackprop as gb

    layers = [gb.Dense(i, o, act) for i, o, act in net.layers]
    extra = {} if precision is None else {"precision": precision}
    return gb.Sequential(layers, device=device, dtype=dtype, seed=seed, **extra)


__all__ = [
    "GPU_NETWORKS",
    "LOSSES",
    "NETWORKS",
    "Named",
    "Network",
    "build_model",
    "get_networks",
    "make_batch",
]
