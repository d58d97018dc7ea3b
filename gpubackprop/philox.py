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
so P(keep) = 1 − threshold/2³², within 2⁻³³ of 1 − p.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .arrays import Array

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
_LOW32 = 0xFFFFFFFF


def philox4x32_10(xp: ModuleType, counter: Array, key: tuple[int, int]) -> Array:
    """The four output words for each counter column: ``counter`` (4, n) uint32 (or any
    unsigned integers < 2³²), ``key`` (k0, k1); returns (4, n) uint32 (see the module)."""
    mask = np.uint64(_LOW32)
    c = [xp.asarray(counter[i], dtype=np.uint64) for i in range(4)]
    k0, k1 = int(key[0]) & _LOW32, int(key[1]) & _LOW32
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & _LOW32, (k1 + W1) & _LOW32
        p0 = c[0] * np.uint64(M0)
        p1 = c[2] * np.uint64(M1)
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0),
            p1 & mask,
            (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1),
            p0 & mask,
        ]
    return xp.stack([w.astype(np.uint32) for w in c])


def keep_threshold(p: float) -> int:
    """round(p·2³²) (Python's round: half to even), the integer threshold of
    :func:`dropout_words`: keep iff u32 ≥ threshold. p·2³² is exact in float64."""
    return round(float(p) * 2.0**32)


def dropout_words(xp: ModuleType, n: int, seed: int, step: int) -> Array:
    """The uint32 words u_0 ... u_{n−1} of elements 0 ... n−1 at ``step`` under ``seed``
    (64-bit integers): u_i = word i mod 4 of Philox(c = (j, s) as 32-bit halves, k = seed's
    halves), j = i div 4."""
    blocks = -(-n // 4)
    j = xp.arange(blocks, dtype=np.uint64)
    counter: Any = xp.empty((4, blocks), dtype=np.uint64)
    counter[0] = j & np.uint64(_LOW32)
    counter[1] = j >> np.uint64(32)
    counter[2] = step & _LOW32
    counter[3] = (step >> 32) & _LOW32
    words = philox4x32_10(xp, counter, (seed & _LOW32, (seed >> 32) & _LOW32))
    return words.T.reshape(-1)[:n]


__all__ = ["M0", "M1", "ROUNDS", "W0", "W1", "dropout_words", "keep_threshold", "philox4x32_10"]
