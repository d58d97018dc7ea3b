"""The seed notes' 2-layer sigmoid network, trained by gpubackprop and by the notes' loop.

The notes train h = sigmoid(x w1), y_pred = h w2 with loss Σ (y_pred − y)² and
plain SGD (N=64, D_in=1000, H=100, D_out=10, no biases). Here the same network is
built from two Dense layers (weights stored as (out, in), i.e. w1ᵀ and w2ᵀ),
started from the same weights, and both are trained side by side: the losses
agree at every step.

Run: python examples/seed_two_layer.py [--steps 200] [--device cpu]
"""

from __future__ import annotations

import argparse

import numpy as np

import gpubackprop as gb


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    n, d_in, h, d_out = 64, 1000, 100, 10
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((n, d_in)), rng.standard_normal((n, d_out))
    learning_rate = 1e-4

    model = gb.Sequential(
        [gb.Dense(d_in, h, "sigmoid", bias=False), gb.Dense(h, d_out, bias=False)],
        device=args.device,
        dtype="float64",
        seed=0,
    )
    loss = gb.losses.MSE(reduction="sum")  # the notes' Σ (y_pred − y)²
    optimizer = gb.optim.SGD(lr=learning_rate)

    # The notes' loop, from the model's initial weights (w1 is (D_in, H) there).
    params = model.parameters()
    w1 = np.array(model.backend.to_numpy(params["0.weight"])).T.copy()
    w2 = np.array(model.backend.to_numpy(params["1.weight"])).T.copy()

    xd, yd = model.to_device(x), model.to_device(y)
    for t in range(args.steps):
        # --- the seed notes, verbatim but for the frad_y_pred typo ---
        h_act = 1 / (1 + np.exp(-x.dot(w1)))
        y_pred = h_act.dot(w2)
        seed_loss = np.square(y_pred - y).sum()
        grad_y_pred = 2.0 * (y_pred - y)
        grad_w2 = h_act.T.dot(grad_y_pred)
        grad_h = grad_y_pred.dot(w2.T)
        grad_w1 = x.T.dot(grad_h * h_act * (1 - h_act))
        w1 -= learning_rate * grad_w1
        w2 -= learning_rate * grad_w2
        # --- the same step with gpubackprop ---
        engine_loss = model.train_step(xd, yd, loss, optimizer)
        if t % max(args.steps // 10, 1) == 0 or t == args.steps - 1:
            print(f"step {t:4d}  notes loss {seed_loss:12.4f}  "
                  f"gpubackprop loss {engine_loss:12.4f}")
        if not np.isclose(seed_loss, engine_loss, rtol=1e-9):
            raise SystemExit(f"losses diverged at step {t}: {seed_loss} vs {engine_loss}")
    return engine_loss


if __name__ == "__main__":
    main()
