"""Dropout on a shard of a batch (what a data-parallel rank forwards): with
``model.row_offset = a``, rows a:b of a batch draw exactly the masks they get in the
whole-batch forward; ``model.advance_generators()`` is one forward's step advance.
On ``cpu`` and, with a GPU, ``cuda`` (the ``device`` fixture)."""

from __future__ import annotations

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.philox import dropout_words, keep_threshold, philox4x32_10

#: (first, stop) row ranges of an 11-row batch: the whole, halves, inner, the last row
SHARDS = [(0, 11), (0, 6), (6, 11), (3, 7), (10, 11)]


def _model(device: str, seed: int = 5) -> gb.Sequential:
    return gb.Sequential(
        [gb.Dense(5, 9, "tanh"), gb.Dropout(0.3), gb.Dense(9, 3)],
        device=device, dtype="float64", seed=seed,
    )


def _mask(model: gb.Sequential, shape: tuple[int, ...], layer: int = 1) -> np.ndarray:
    dropout = model.layers[layer]
    assert dropout.workspaces is not None
    return model.backend.to_numpy(dropout.workspaces.get(shape, {})["mask"])


@pytest.mark.parametrize(("first", "stop"), SHARDS)
def test_rows_of_a_batch_draw_their_whole_batch_masks(
    device: str, rng: np.random.Generator, first: int, stop: int
) -> None:
    """(B, F): 9 elements per row, so shards start inside a Philox group of four; the
    masks are equal at two steps."""
    x = rng.standard_normal((11, 5))
    whole = _model(device)
    for _ in range(2):  # step 0, then step 1
        expected = whole.backend.to_numpy(whole.forward(whole.to_device(x)))
        mask = _mask(whole, (11, 9))
    shard = _model(device)
    shard.row_offset = first
    for _ in range(2):
        out = shard.backend.to_numpy(shard.forward(shard.to_device(x[first:stop])))
    np.testing.assert_array_equal(_mask(shard, (stop - first, 9)), mask[first:stop])
    # the same masks; the Dense GEMMs of fewer rows may round differently
    np.testing.assert_allclose(out, expected[first:stop], rtol=0, atol=1e-12)
    assert shard.generator_states() == whole.generator_states()


def test_sequence_rows_count_every_element_of_a_row(device: str, rng: np.random.Generator) -> None:
    """(B, T, F): a row is T·F elements (here 3·5 = 15)."""
    x = rng.standard_normal((7, 3, 5)) + 5.0
    whole = gb.Sequential([gb.Dropout(0.4)], device=device, dtype="float64", seed=2)
    expected = whole.backend.to_numpy(whole.forward(whole.to_device(x)))
    for first, stop in [(1, 4), (4, 7), (6, 7)]:
        shard = gb.Sequential([gb.Dropout(0.4)], device=device, dtype="float64", seed=2)
        shard.row_offset = first
        got = shard.backend.to_numpy(shard.forward(shard.to_device(x[first:stop])))
        np.testing.assert_array_equal(got, expected[first:stop])


def test_row_offset_zero_is_the_plain_forward(device: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((8, 5))
    plain, zero = _model(device), _model(device)
    assert plain.row_offset == 0
    zero.row_offset = 0
    a = plain.backend.to_numpy(plain.forward(plain.to_device(x)))
    np.testing.assert_array_equal(zero.backend.to_numpy(zero.forward(zero.to_device(x))), a)


def test_counters_beyond_two_to_the_32_groups(device: str, rng: np.random.Generator) -> None:
    """A row offset whose counter base r·F is past 2³² groups of four (the counter's
    second 32-bit word is used): the mask is Philox of those 64-bit counters."""
    model = gb.Sequential([gb.Dropout(0.5)], device=device, dtype="float64", seed=9)
    model.row_offset = 2**33 + 3
    x = rng.standard_normal((3, 7)) + 5.0
    kept = model.backend.to_numpy(model.forward(model.to_device(x))) != 0
    seed = model.layers[0].generator_state()[0]
    base = (2**33 + 3) * 7
    assert base // 4 >= 2**32
    np.testing.assert_array_equal(
        kept.reshape(-1), dropout_words(np, x.size, seed, 0, base) >= keep_threshold(0.5)
    )


def test_dropout_words_from_an_offset_are_the_philox_words() -> None:
    """Element i = offset + k is word i mod 4 of Philox(counter (i div 4 as two 32-bit
    halves, step as two), key): against philox4x32_10 itself, small and past 2⁶⁴/2⁴."""
    seed, step, n = 0x0123456789ABCDEF, 2**32 + 5, 23
    for offset in (0, 1, 6, 4 * 2**32 - 2, 2**62 + 3):
        index = np.arange(offset, offset + n, dtype=object)
        groups = np.array([i // 4 for i in index], dtype=np.uint64)
        counter = np.stack([
            groups & np.uint64(0xFFFFFFFF), groups >> np.uint64(32),
            np.full(n, step & 0xFFFFFFFF, np.uint64), np.full(n, step >> 32, np.uint64),
        ])
        words = philox4x32_10(np, counter, (seed & 0xFFFFFFFF, seed >> 32))
        expected = words[[int(i % 4) for i in index], np.arange(n)]
        np.testing.assert_array_equal(dropout_words(np, n, seed, step, offset), expected)
    whole = dropout_words(np, 4100, seed, step)
    np.testing.assert_array_equal(dropout_words(np, 4093, seed, step, 7), whole[7:])
    assert dropout_words(np, 0, seed, step, 3).shape == (0,)
    with pytest.raises(gb.ConfigError, match=r"offset must be in \[0, 2\*\*64 - n\)"):
        dropout_words(np, 4, seed, step, -1)


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_row_offset_is_validated(value: object) -> None:
    model = _model("cpu")
    with pytest.raises(gb.ConfigError, match=r"Sequential\.row_offset must be"):
        model.row_offset = value  # type: ignore[assignment]
    assert model.row_offset == 0


def test_a_standalone_dropout_counts_from_zero(rng: np.random.Generator) -> None:
    layer = gb.Dropout(0.5).build("cpu", "float64", seed=1)
    x = rng.standard_normal((4, 6)) + 5.0
    assert layer.counter_base(x.shape) == 0
    seed, _ = layer.generator_state()
    kept = layer.forward(x) != 0
    np.testing.assert_array_equal(
        kept.reshape(-1), dropout_words(np, x.size, seed, 0) >= keep_threshold(0.5)
    )


def test_advance_generators_is_one_forwards_step(device: str, rng: np.random.Generator) -> None:
    """Every Dropout with p > 0 steps once (p = 0 draws nothing, as its forward), also
    from 2⁶⁴ − 1 (mod 2⁶⁴) and in eval mode; the next forward draws what a model that
    ran one forward more draws."""
    def build() -> gb.Sequential:
        return gb.Sequential(
            [gb.Dense(4, 6), gb.Dropout(0.5), gb.Dropout(0.0), gb.Dropout(0.2)],
            device=device, dtype="float64", seed=3,
        )

    x = rng.standard_normal((5, 4))
    ran, advanced = build(), build()
    ran.layers[3].set_generator_state((ran.layers[3].generator_state()[0], 2**64 - 1))
    advanced.set_generator_states(ran.generator_states())
    ran.forward(ran.to_device(x))
    advanced.eval()
    advanced.advance_generators()
    assert advanced.generator_states() == ran.generator_states()
    assert ran.generator_states()[1][1] == 1 and ran.generator_states()[3][1] == 0
    assert ran.generator_states()[2][1] == 0
    advanced.train()
    for model in (ran, advanced):
        model.forward(model.to_device(x))
    for layer in (1, 3):
        np.testing.assert_array_equal(_mask(advanced, (5, 6), layer), _mask(ran, (5, 6), layer))


def test_advance_generators_without_a_generator_does_nothing() -> None:
    model = gb.Sequential([gb.Dense(3, 2)], device="cpu", seed=0)
    model.advance_generators()
    assert model.generator_states() == {}
    with pytest.raises(gb.ConfigError, match="no generator yet"):
        gb.Dropout(0.5).advance_generator()
