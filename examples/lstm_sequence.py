"""An LSTM learns to predict the next value of noisy sine waves, trained with truncated
backprop through time: each long series is cut into windows, and the LSTM's final
state of one window is the initial state of the next (detached, so backward stops
there). A Dense readout maps every step's hidden state to one number.

Run: python examples/lstm_sequence.py [--device auto] [--cell lstm|gru]
"""

from __future__ import annotations

import argparse

import numpy as np

import gpubackprop as gb

BATCH, LENGTH, WINDOW, HIDDEN = 16, 400, 20, 32


def _series() -> np.ndarray:
    """(BATCH, LENGTH + 1, 1): sines of random frequency and phase, plus a little noise."""
    rng = np.random.default_rng(0)
    t = np.arange(LENGTH + 1)
    freq = rng.uniform(0.05, 0.2, (BATCH, 1))
    phase = rng.uniform(0, 2 * np.pi, (BATCH, 1))
    return (np.sin(freq * t + phase) + 0.05 * rng.standard_normal((BATCH, LENGTH + 1)))[..., None]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train; returns the mean squared error of the first and last epochs and of the
    "next = this one" baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)

    cell = (gb.LSTM if args.cell == "lstm" else gb.GRU)(1, HIDDEN)
    cell.build(args.device, "float32", seed=0)
    readout = gb.Dense(HIDDEN, 1).build(args.device, "float32", seed=1)
    backend = cell.backend
    assert backend is not None and cell.owner is not None and readout.owner is not None
    optimizers = [(gb.optim.Adam(1e-2), layer.owner) for layer in (cell, readout)]
    data = backend.asarray(_series().astype(np.float32))
    rows = BATCH * WINDOW

    losses = []
    for _ in range(args.epochs):
        cell.initial_state = None  # every epoch starts the series from h = c = 0
        total = 0.0
        for start in range(0, LENGTH, WINDOW):
            x = data[:, start:start + WINDOW]
            y = data[:, start + 1:start + WINDOW + 1].reshape(rows, 1)
            hidden = cell.forward(x)                         # (B, T, H), state carried in
            pred = readout.forward(hidden.reshape(rows, HIDDEN))  # every step: one GEMM
            diff = pred - y                                  # MSE: L = mean (p − y)²
            total += float((diff * diff).mean())
            d_hidden = readout.backward(2.0 * diff / rows, True)
            cell.backward(d_hidden.reshape(BATCH, WINDOW, HIDDEN), False)
            cell.initial_state = cell.final_state  # detached: backward stops here
            for optimizer, owner in optimizers:
                optimizer.step(owner.flat_params, owner.flat_grads)
        losses.append(total / (LENGTH // WINDOW))

    series = _series()
    baseline = float(np.mean((series[:, 1:] - series[:, :-1]) ** 2))
    print(f"{type(cell).__name__} 1->{HIDDEN} + Dense on {backend.device}, windows of "
          f"{WINDOW} steps, state carried across windows")
    print(f"epoch 1 MSE {losses[0]:.4f}   epoch {args.epochs} MSE {losses[-1]:.4f}   "
          f"('next = this one' baseline {baseline:.4f})")
    return {"first": losses[0], "last": losses[-1], "baseline": baseline}


if __name__ == "__main__":
    main()
