"""Dropout and LayerNorm in an MLP: train/eval modes, the same masks after a resume.

Classifies the 8x8 handwritten digits (scikit-learn's ``load_digits``, the ``demo``
extra) with ``Dense -> Dropout -> LayerNorm -> Dense``: ``fit`` trains in training mode
(Dropout drops half the units), ``evaluate`` and ``predict`` run in eval mode (Dropout
is the identity). A checkpoint holds Dropout's generator state, so a resumed run draws
the same masks as the run that never stopped: both end with the same bits.

Run: python examples/dropout_layernorm.py [--device auto] [--epochs 15]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

import gpubackprop as gb


def build(device: str) -> gb.Sequential:
    return gb.Sequential(
        [
            gb.Dense(64, 128, "relu"),
            gb.Dropout(0.5),  # training mode: zero half the units, scale the rest by 2
            gb.LayerNorm(128),  # per row: (a - mean) / sqrt(var + eps) * weight + bias
            gb.Dense(128, 10),
        ],
        device=device,
        seed=0,  # seeds the weights and (with the layer index) Dropout's Philox key
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))
    train, val = order[:1400], order[1400:]

    model = build(args.device)
    print(model)
    loss = gb.losses.SoftmaxCrossEntropy()
    opt = gb.optim.Adam(1e-3)
    half = args.epochs // 2
    model.fit(x[train], y[train], loss=loss, optimizer=opt, epochs=half, batch_size=64,
              validation_data=(x[val], y[val]), verbose=False)
    print(f"after {half} epochs: mode training={model.training}, "
          f"dropout state (seed, step) = {model.layers[1].generator_state()}")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mid.safetensors"
        model.save(path, optimizer=opt)  # parameters, Adam state and Dropout's generator
        resumed, resumed_opt = gb.load(path, device=args.device, with_optimizer=True)
    assert resumed_opt is not None
    rest = args.epochs - half
    for m, o in ((model, opt), (resumed, resumed_opt)):
        m.fit(x[train], y[train], loss=loss, optimizer=o, epochs=rest, batch_size=64,
              verbose=False)
    same = bool((model.backend.to_numpy(model.flat_params)
                 == resumed.backend.to_numpy(resumed.flat_params)).all())
    print(f"resumed run = uninterrupted run, bit for bit: {same}")

    metrics = model.evaluate(x[val], y[val], loss)  # eval mode: no dropout
    print(f"validation loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.3f}")
    model.eval()
    first = model.predict(x[val[:5]])
    print(f"eval mode is deterministic: {bool((first == model.predict(x[val[:5]])).all())}")
    return {**metrics, "resumed_same": float(same)}


if __name__ == "__main__":
    main()
