"""A tour of the API: pick a device, build a model, train it, look at its gradients.

Run: python examples/quickstart.py [--device auto]
"""

from __future__ import annotations

import argparse

import numpy as np

import gpubackprop as gb


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    # A toy problem: which of 3 Gaussian blobs does a 2-D point come from?
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 1.5], [-1.5, -1.0], [1.5, -1.0]])
    labels = rng.integers(0, 3, 3000)
    points = centers[labels] + rng.standard_normal((3000, 2))

    model = gb.Sequential(
        [gb.Dense(2, 32, "tanh"), gb.Dense(32, 32, "relu"), gb.Dense(32, 3)],
        device=args.device,  # "cpu", "cuda", "cuda:1" or "auto"
        seed=0,
    )
    print(model)
    print("device:", model.device, "-", model.backend.reason)

    loss = gb.losses.SoftmaxCrossEntropy()
    optimizer = gb.optim.SGD(lr=0.1, momentum=0.9)
    history = model.fit(
        points[:2500], labels[:2500], loss=loss, optimizer=optimizer,
        epochs=5, batch_size=64, validation_data=(points[2500:], labels[2500:]),
    )
    print("val accuracy per epoch:", [round(a, 3) for a in history["val_accuracy"]])

    # Gradients are explicit: one backward pass fills one flat buffer, seen per layer.
    x, y = model.to_device(points[:8]), model.to_device(labels[:8])
    value = model.loss_and_grad(x, y, loss)
    for name, grad in model.gradients().items():
        print(f"{name:9s} shape {tuple(grad.shape)}  |grad| = {float((grad**2).sum()) ** 0.5:.4f}")
    print(f"loss on 8 samples: {value:.4f}")
    return model.evaluate(points[2500:], labels[2500:], loss)


if __name__ == "__main__":
    print(main())
