"""Philox4x32-10, the counter-based generator of Dropout's masks (NumPy reference).

Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11;
the Random123 library) maps a 128-bit counter c = (c0, c1, c2, c3) and a 64-bit key
k = (k0, k1) to four uint32 words by ten rounds of::

    (hi0, lo0) = M0 · c0      (hi1, lo1) = M1 · c2          (64-bit products)
    c ← (hi1 ⊕ c1 ⊕ k0,  lo1,  hi0 ⊕ c3 ⊕ k1,  lo0)
    k ← (k0 + W0, k1 + W1)    (mod 2³², between rounds)

with M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85. The same
function is the device function ``gbp::philox4x32_10`` of ``kernels/dropout.cu``.

The counter scheme of :func:`dropout_words` (the one both devices use): element i of
step s under key (seed) K is word i mod 4 of Philox(c = (j mod 2³², j div 2³², s mod 2³²,
s div 2³²), k = (K mod 2³², K div 2³²)) with j = i div 4. The element is kept iff that
word u ≥ :func:`keep_threshold` (p) = round(p·2³²): integers compared, no float rounding,
so P(keep) = 1 − threshold/2³², within 2⁻³³ of 1 − p. i is the element's index in the
whole (global) batch: a forward over rows r, r+1, ... of it (a data-parallel shard) starts
at the 64-bit counter base i = r·(elements per row), so its masks are those rows' masks.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .arrays import Array
from .errors import ConfigError

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
#: groups of four words computed at once by :func:`dropout_words` (their arrays stay in cache)
CHUNK = 1 << 14
_LOW32 = 0xFFFFFFFF


def philox4x32_10(xp: ModuleType, counter: Array, key: tuple[int, int]) -> Array:
    """The four output words for each counter column: ``counter`` (4, n) uint32 (or any
    unsigned integers < 2³²), ``key`` (k0, k1); returns (4, n) uint32 (see the module).

    Vectorised over the columns in uint64 arithmetic, in place (no temporaries per round)."""
    c = [xp.array(counter[i], dtype=np.uint64) for i in range(4)]
    _rounds(xp, c, key)
    return xp.stack([w.astype(np.uint32) for w in c])


def _rounds(xp: ModuleType, c: list[Any], key: tuple[int, int]) -> None:
    """The ten rounds on the counter words ``c`` (four uint64 arrays, overwritten)."""
    c0, c1, c2, c3 = c
    p0, p1 = xp.empty_like(c0), xp.empty_like(c0)
    low, shift = np.uint64(_LOW32), np.uint64(32)
    m0, m1 = np.uint64(M0), np.uint64(M1)
    k0, k1 = int(key[0]) & _LOW32, int(key[1]) & _LOW32
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & _LOW32, (k1 + W1) & _LOW32
        xp.multiply(c0, m0, out=p0)
        xp.multiply(c2, m1, out=p1)
        xp.right_shift(p1, shift, out=c0)  # c0 ← hi1 ⊕ c1 ⊕ k0
        xp.bitwise_xor(c0, c1, out=c0)
        xp.bitwise_xor(c0, np.uint64(k0), out=c0)
        xp.right_shift(p0, shift, out=c2)  # c2 ← hi0 ⊕ c3 ⊕ k1
        xp.bitwise_xor(c2, c3, out=c2)
        xp.bitwise_xor(c2, np.uint64(k1), out=c2)
        xp.bitwise_and(p1, low, out=c1)  # c1 ← lo1
        xp.bitwise_and(p0, low, out=c3)  # c3 ← lo0


def keep_threshold(p: float) -> int:
    """round(p·2³²) (Python's round: half to even), the integer threshold of
    :func:`dropout_words`: keep iff u32 ≥ threshold. p·2³² is exact in float64."""
    return round(float(p) * 2.0**32)


def dropout_words(xp: ModuleType, n: int, seed: int, step: int, offset: int = 0) -> Array:
    """The uint32 words u_o ... u_{o+n−1} of elements o ... o+n−1 (o = ``offset``, a
    64-bit counter base) at ``step`` under ``seed`` (64-bit integers): u_i = word i mod 4
    of Philox(c = (j, s) as 32-bit halves, k = seed's halves), j = i div 4. Computed
    :data:`CHUNK` groups of four at a time (in cache). ``offset`` = r·(elements per row)
    gives the words of rows r, r+1, ... of a batch (a data-parallel shard's masks)."""
    if not 0 <= offset < 2**64 - n:
        raise ConfigError(f"philox.dropout_words: offset must be in [0, 2**64 - n), got {offset}")
    first, head = divmod(offset, 4)
    groups = -(-(head + n) // 4)
    words = xp.empty((groups, 4), dtype=np.uint32)
    key = (seed & _LOW32, (seed >> 32) & _LOW32)
    for start in range(0, groups, CHUNK):
        j = xp.arange(start, min(groups, start + CHUNK), dtype=np.uint64) + np.uint64(first)
        c = [
            j & np.uint64(_LOW32),
            j >> np.uint64(32),
            xp.full(j.shape, step & _LOW32, dtype=np.uint64),
            xp.full(j.shape, (step >> 32) & _LOW32, dtype=np.uint64),
        ]
        _rounds(xp, c, key)
        for w in range(4):
            words[start : start + len(j), w] = c[w]
    return words.reshape(-1)[head : head + n]

__all__ = [
    "CHUNK", "M0", "M1", "ROUNDS", "W0", "W1", "dropout_words", "keep_threshold", "philox4x32_10",
]
