"""A character-level LSTM learns a short story: truncated BPTT, Adam, gradient clipping.

The last 10% of the story is held out: the model never trains on it, and its loss
there (the validation loss) says how well it predicts text it has not seen.

Run: python examples/char_rnn.py [--steps 150] [--cell lstm|gru|rnn] [--device auto]
(the full trainer with progress bars is ``python -m gpubackprop charrnn``)
"""

from __future__ import annotations

import argparse

import gpubackprop as gb
from gpubackprop.charrnn import CELLS, default_text, split_text, text_loss, text_streams


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--cell", choices=CELLS, default="lstm")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    text = default_text()
    chars = "".join(sorted(set(text)))
    # Embedding -> LSTM -> Dense in one Sequential (model.model); "rnn": the seed notes' RNN
    model = gb.CharRNN(len(chars), 96, device=args.device, seed=0, chars=chars, cell=args.cell)
    print(model, "on", model.device)

    train, held_out = split_text(model.encode(text))  # the last 10% for validation
    # 16 parallel streams through the training text, read in windows of 24 characters
    inputs, targets = text_streams(train, batch=16, seq_len=24)
    inputs, targets = model.backend.asarray(inputs), model.backend.asarray(targets)
    windows = inputs.shape[1] // 24
    optimizer = gb.optim.Adam(lr=3e-3)

    losses, h = [], None
    for step in range(args.steps):
        k = step % windows
        if k == 0:
            h = None  # a new pass over the text starts from a zero state
        cols = slice(24 * k, 24 * (k + 1))
        # h: the previous window's last state ((h, c) for the LSTM), carried over
        # (values only, detached: backward stops there)
        loss, h = model.loss_and_grad(inputs[:, cols], targets[:, cols], h)
        gb.clip_grad_norm(model.flat_grads, 5.0)  # one global norm over every parameter
        optimizer.step(model.flat_params, model.flat_grads)  # every layer in one buffer
        losses.append(loss)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  training loss {loss:.3f} nats/char")

    validation = text_loss(model, held_out, seq_len=24)  # no gradients, no update
    print(f"validation loss {validation:.3f} nats/char on {len(held_out)} held-out characters")

    print("sample:", "The" + model.sample("The", 160, temperature=0.7, rng=0))
    return losses


if __name__ == "__main__":
    main()
