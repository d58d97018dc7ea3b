"""The GEMM floor's plan: the GEMMs of one training step, on any array module.

:func:`floor_plan` lists the step's GEMMs; :func:`floor_buffers` allocates them
with the real weights and input; :func:`run_plan` issues them through a
``gemm(a, b, out, *, trans_a, trans_b)`` (gpubackprop's ``CublasHandle.gemm`` on
the GPU, ``numpy.matmul`` in the tests); :func:`plan_error` checks every product
against float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from bench.common import Params
from bench.networks import Network

# GEMM floor check: ‖out − ref‖ / ‖ref‖ against a float64 product (TF32 gives ~3e-4).
GEMM_RTOL = 1e-4


def gemm_check(rel: float) -> dict[str, Any]:
    """The check entry of the GEMM floor: worst relative error of its products."""
    ok = bool(rel <= GEMM_RTOL)
    return {
        "ok": ok,
        "gemm_rel": float(rel),
        "summary": f"{'ok' if ok else 'FAIL'} (GEMM {rel:.0e})",
    }


@dataclass(frozen=True)
class Gemm:
    """``bufs[out] = op(bufs[a]) · op(bufs[b])`` (row-major, op = transpose when flagged)."""

    out: str
    a: str
    b: str
    trans_a: bool = False
    trans_b: bool = False


def floor_plan(net: Network) -> list[Gemm]:
    """The GEMMs of one step, in the step's order.

    Buffers: ``X`` the input, ``W{k}`` layer k's weight (out, in), ``Z{k}`` its
    output (B, out), which is also layer k+1's input, ``D{k}`` ∂L/∂Z{k} (B, out)
    and ``dW{k}``. Forward: Z{k} = A Wᵀ. Backward from the last layer:
    dW{k} = D{k}ᵀ A and, but for the first layer, D{k−1} = D{k} W{k}.
    """
    count = len(net.layers)
    inputs = ["X"] + [f"Z{k}" for k in range(count - 1)]
    plan = [Gemm(f"Z{k}", inputs[k], f"W{k}", trans_b=True) for k in range(count)]
    for k in range(count - 1, -1, -1):
        plan.append(Gemm(f"dW{k}", f"D{k}", inputs[k], trans_a=True))
        if k > 0:
            plan.append(Gemm(f"D{k - 1}", f"D{k}", f"W{k}"))
    return plan


def floor_buffers(
    xp: ModuleType, net: Network, init: Params, x: np.ndarray, seed: int = 0
) -> dict[str, Any]:
    """Device buffers for :func:`floor_plan`: real weights and input, a random output Δ."""
    bufs: dict[str, Any] = {"X": xp.asarray(x, dtype=np.float32)}
    rng = np.random.default_rng(seed + 1)
    last = len(net.layers) - 1
    for k, ((fan_in, fan_out, _), (w, _b)) in enumerate(zip(net.layers, init, strict=True)):
        bufs[f"W{k}"] = xp.asarray(w, dtype=np.float32)
        bufs[f"Z{k}"] = xp.empty((net.batch, fan_out), dtype=np.float32)
        bufs[f"dW{k}"] = xp.empty((fan_out, fan_in), dtype=np.float32)
        if k == last:  # the seed of the backward pass: never written, so never zeros
            delta = rng.standard_normal((net.batch, fan_out), dtype=np.float32)
            bufs[f"D{k}"] = xp.asarray(delta)
        else:
            bufs[f"D{k}"] = xp.empty((net.batch, fan_out), dtype=np.float32)
    return bufs


GemmFn = Callable[..., Any]  # gemm(a, b, out, *, trans_a, trans_b)


def run_plan(gemm: GemmFn, plan: Sequence[Gemm], bufs: Mapping[str, Any]) -> None:
    """Issue every GEMM of the plan (``gemm`` as :meth:`CublasHandle.gemm`)."""
    for g in plan:
        gemm(bufs[g.a], bufs[g.b], bufs[g.out], trans_a=g.trans_a, trans_b=g.trans_b)


def plan_flops(plan: Sequence[Gemm], bufs: Mapping[str, Any]) -> int:
    """2·M·N·K summed over the plan."""
    total = 0
    for g in plan:
        a = bufs[g.a]
        k = a.shape[0] if g.trans_a else a.shape[1]
        m, n = bufs[g.out].shape
        total += 2 * m * n * k
    return total


def poison_outputs(plan: Sequence[Gemm], bufs: Mapping[str, Any]) -> None:
    """Fill every GEMM output with NaN, so an output the plan fails to write shows."""
    for g in plan:
        bufs[g.out].fill(np.nan)


def plan_error(xp: ModuleType, plan: Sequence[Gemm], bufs: Mapping[str, Any]) -> float:
    """Worst ‖out − ref‖ / ‖ref‖ over the plan, ref = op(a)·op(b) in float64 (NaN fails)."""
    worst = 0.0
    for g in plan:
        a = bufs[g.a].astype(np.float64)
        b = bufs[g.b].astype(np.float64)
        ref = xp.matmul(a.T if g.trans_a else a, b.T if g.trans_b else b)
        err = float(xp.linalg.norm(bufs[g.out].astype(np.float64) - ref))
        norm = float(xp.linalg.norm(ref))
        rel = err / norm if norm > 0 else err
        if math.isnan(rel):
            return math.nan
        worst = max(worst, rel)
    return worst
