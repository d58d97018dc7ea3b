"""Save a training run half way, load it back, and finish it: the result is the same,
bit for bit, as training without the break. Then save the trained model and load it
alone, as a program that only predicts would.

Run: python examples/checkpoint.py [--device auto] [--dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import gpubackprop as gb


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 1.5], [-1.5, -1.0], [1.5, -1.0]])
    labels = rng.integers(0, 3, 600)
    return centers[labels] + rng.standard_normal((600, 2)), labels


def _model(device: str) -> gb.Sequential:
    return gb.Sequential([gb.Dense(2, 16, "tanh"), gb.Dense(16, 3)], device=device, seed=0)


def main(argv: list[str] | None = None) -> bool:
    """Train 4 epochs straight and 2 + 2 epochs through a checkpoint; True when equal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dir", default=None, help="where to write the checkpoint")
    args = parser.parse_args(argv)
    x, y = _blobs()
    train = {"loss": gb.losses.SoftmaxCrossEntropy(), "batch_size": 32, "verbose": False}

    straight = _model(args.device)
    straight.fit(x, y, optimizer=gb.optim.Adam(1e-2), epochs=4, **train)

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(args.dir or scratch) / "checkpoint.safetensors"
        model, optimizer = _model(args.device), gb.optim.Adam(1e-2)
        model.fit(x, y, optimizer=optimizer, epochs=2, **train)
        # parameters, Adam's moments and step count, and the shuffling generator
        model.save(path, optimizer=optimizer)
        print(f"saved {path.name} ({path.stat().st_size:,} bytes) after 2 epochs")

        # a new process would start here: rebuild everything from the file
        model, optimizer = gb.load(path, device=args.device, with_optimizer=True)
        model.fit(x, y, optimizer=optimizer, epochs=2, **train)

        # to serve predictions, the model alone: gb.load returns it
        model.save(path)
        served = gb.load(path, device=args.device)
        served_same = np.array_equal(served.predict(x), model.predict(x))

    same = all(
        np.array_equal(model.backend.to_numpy(a), straight.backend.to_numpy(b))
        for a, b in zip(model.parameters().values(), straight.parameters().values(), strict=True)
    )
    if same:
        print("resumed training equals uninterrupted training, bit for bit")
    else:
        print("resumed training differs from uninterrupted training")
    print(f"the loaded model predicts {'as' if served_same else 'unlike'} the trained one")
    return same and served_same


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
