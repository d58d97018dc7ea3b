"""Sequence tagging: token ids (B, T) in, one tag per position (B, T, tags) out.

A toy part-of-speech tagger: sentences of T = 12 word ids from a vocabulary of 30,
each word with one tag from its lexicon class (noun, verb, adjective, other). The
model embeds each id (gb.Embedding), then per-position Dense layers act on the last
axis of the (B, T, 16) activations; SoftmaxCrossEntropy takes the (B, T, 4) logits
with (B, T) integer tags and averages over the B·T positions. See docs/sequences.md.

Run: python examples/sequence_tagging.py [--device auto]
"""

from __future__ import annotations

import argparse

import numpy as np

import gpubackprop as gb

VOCAB, TAGS, STEPS = 30, 4, 12


def sentences(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, T) word ids and their (n, T) tags: word w has tag w mod 4 (its lexicon class)."""
    words = rng.integers(0, VOCAB, (n, STEPS))
    return words, words % TAGS


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x_train, y_train = sentences(512, rng)
    x_val, y_val = sentences(128, rng)

    model = gb.Sequential(
        [gb.Embedding(VOCAB, 16), gb.Dense(16, 32, "relu"), gb.Dense(32, TAGS)],
        device=args.device,
        seed=0,
    )
    print(model)
    print("ids", x_train[:2].shape, "-> logits", model.predict(x_train[:2]).shape)

    model.fit(
        x_train, y_train, loss="cross_entropy", optimizer=gb.optim.Adam(0.01),
        epochs=8, batch_size=32, validation_data=(x_val, y_val),
    )
    metrics = model.evaluate(x_val, y_val, "cross_entropy")  # accuracy over all B·T tags
    print(f"validation: loss {metrics['loss']:.4f}, tag accuracy {metrics['accuracy']:.3f}")
    tags = model.predict(x_val[:1]).argmax(axis=-1)
    print("sentence", x_val[0].tolist(), "\ntags    ", tags[0].tolist())
    return metrics


if __name__ == "__main__":
    main()
