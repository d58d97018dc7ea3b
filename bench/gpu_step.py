"""Benchmark ONE training step on a GPU: gpubackprop (eager, captured) vs PyTorch, JAX, GEMMs.

A step is forward, loss, backward and a plain SGD update (lr 0.01), float32 with
TF32 off everywhere, on the networks of :data:`bench.networks.GPU_NETWORKS`
(seed-2layer, mnist-mlp, deep-narrow, wide-b512, wide). Contenders, all in this
process, on the same batch (already on the device) and from the same weights:

* ``gbp eager``: gpubackprop's eager step *without* the loss sync and input
  validation of ``train_step``: ``model.step(batch, optimizer)`` (forward, loss,
  backward, ``optimizer.step`` on the flat buffers) on a batch from
  ``model.prepare_batch``, prepared once (x float32 C-contiguous, y int64 labels
  or float32 targets);
* ``gbp captured``: ``step = model.compile_step(loss, optimizer)``, timed as
  ``step(x, y)`` (copies the batch into the graph's static buffers and replays
  one captured CUDA graph of the whole step; ``return_loss=False``, no sync);
* ``torch eager``: ``nn.Sequential`` of ``nn.Linear`` + activations,
  ``F.mse_loss`` / ``F.cross_entropy``, ``zero_grad(set_to_none=True)``,
  ``backward``, ``torch.optim.SGD(lr=0.01, foreach=True).step()``;
* ``torch graph``: the same step captured with ``torch.cuda.graph`` after a
  side-stream warm-up (PyTorch's documented whole-network recipe; static input
  and target tensors) and replayed with ``graph.replay()``;
* ``jax jit``: ``jax.jit`` of the whole step (``value_and_grad`` + SGD on a
  params pytree, params donated), steps issued back to back, timed on the host
  clock with ``block_until_ready`` only after the block;
* ``GEMM floor``: only the GEMMs a step needs (forward Z = A Wᵀ per layer,
  dW = Δᵀ A per layer, Δ_in = Δ W per layer but the first) on gpubackprop's own
  cuBLAS handle, captured in one CUDA graph on a CuPy stream and replayed (timed
  eagerly, and labelled ``eager``, if that capture fails).

Before timing, one step of every contender from identical weights is compared
with gpubackprop's ``train_step`` (loss and updated weights within float32
tolerance: the ``check`` column); the GEMM floor's products are compared with a
float64 product of the same operands. Timing: warm-up steps, then ``--reps``
rounds in which every contender runs a block of ``--iters`` steps (order rotated
each round), timed with CUDA events (the host clock for JAX); a sample is block
time / iters; median, p10 and p90 over the blocks are reported.

Run from the repository root: ``python bench/gpu_step.py [--networks a,b]
[--warmup 20] [--iters 50] [--reps 10] [--json PATH] [--png PATH]``. Without
CuPy or a GPU it says so and exits 0. Exit status 1 when a correctness check
failed or a gpubackprop contender raised, else 0 (targets missed do not count).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

# Import the checkout's gpubackprop (and bench.networks) even when run as a script.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import gpubackprop as gb  # noqa: E402
from bench.networks import GPU_NETWORKS, Network, build_model, get_networks, make_batch  # noqa: E402

SCHEMA = "gpubackprop.bench.gpu_step/1"
RESULTS_DIR = _ROOT / "bench" / "results"

LR = 0.01
# Pass bounds of the one-step check: relative loss difference, and per tensor
# ‖W_other − W_ref‖ / (‖W_ref − W_old‖ + ‖ulp(W_ref)‖) (Frobenius norms). The update
# bound is wider than cpu_step.py's max-norm 1e-3: on `wide` (ReLU, batch 4096) the
# float32 rounding differences of two correct implementations flip a few ReLU
# masks at z ≈ 0, and each flip moves a whole row of the backward pass: PyTorch vs
# gpubackprop on the CPU gave 1.5e-3 norm-wise (1.2e-2 max-norm) on its first
# layer, 3e-5 or less everywhere else. Real bugs (lr, loss scale, bias, transpose)
# give O(1).
LOSS_RTOL = 1e-4
UPDATE_RTOL = 1e-2
# GEMM floor check: ‖out − ref‖ / ‖ref‖ against a float64 product (TF32 gives ~3e-4).
GEMM_RTOL = 1e-4

GBP_EAGER = "gbp_eager"
GBP_CAPTURED = "gbp_captured"
TORCH_EAGER = "torch_eager"
TORCH_GRAPH = "torch_graph"
JAX_JIT = "jax_jit"
GEMM_FLOOR = "gemm_floor"
#: every contender, in table order
CONTENDERS: tuple[str, ...] = (
    GBP_EAGER,
    GBP_CAPTURED,
    TORCH_EAGER,
    TORCH_GRAPH,
    JAX_JIT,
    GEMM_FLOOR,
)
LABELS: dict[str, str] = {
    GBP_EAGER: "gbp eager",
    GBP_CAPTURED: "gbp captured",
    TORCH_EAGER: "torch eager",
    TORCH_GRAPH: "torch graph",
    JAX_JIT: "jax jit",
    GEMM_FLOOR: "GEMM floor",
}
#: the peers the captured step is measured against ("best peer" = the faster one)
PEERS: tuple[str, ...] = (TORCH_GRAPH, JAX_JIT)
#: contenders whose failure makes the run fail (a peer's failure is only reported)
OWN: tuple[str, ...] = (GBP_EAGER, GBP_CAPTURED)

CAPTURED_BEST_PEER = "captured/best-peer"
CAPTURED_TORCH_GRAPH = "captured/torch-graph"
CAPTURED_FLOOR = "captured/GEMM-floor"
EAGER_TORCH_EAGER = "eager/torch-eager"
RATIOS: tuple[str, ...] = (
    CAPTURED_BEST_PEER,
    CAPTURED_TORCH_GRAPH,
    CAPTURED_FLOOR,
    EAGER_TORCH_EAGER,
)

_SMALL = ("seed-2layer", "mnist-mlp", "deep-narrow")
_WIDE = ("wide-b512", "wide")
#: network -> [(ratio, upper bound)]: the targets printed as PASS / MISS
TARGETS: dict[str, list[tuple[str, float]]] = {
    **{n: [(CAPTURED_BEST_PEER, 0.6), (EAGER_TORCH_EAGER, 0.7)] for n in _SMALL},
    **{n: [(CAPTURED_BEST_PEER, 1.0), (CAPTURED_FLOOR, 1.02)] for n in _WIDE},
}

Params = list[tuple[np.ndarray, np.ndarray]]  # [(W (out, in), b (out,)), ...] per layer


# --- correctness: one step, compared with gpubackprop's ------------------------------------
def gb_params(model: gb.Sequential) -> Params:
    """Host copies of a gpubackprop model's (weight, bias) per layer."""
    p = model.parameters()
    to_host = model.backend.to_numpy
    return [
        (np.array(to_host(p[f"{i}.weight"])), np.array(to_host(p[f"{i}.bias"])))
        for i in range(len(model.layers))
    ]


def load_params(model: gb.Sequential, params: Params) -> None:
    """Write host (weight, bias) pairs into a gpubackprop model (any device)."""
    views = model.parameters()
    with model.backend.activate():
        for i, (w, b) in enumerate(params):
            views[f"{i}.weight"][...] = model.backend.asarray(w)
            views[f"{i}.bias"][...] = model.backend.asarray(b)


def update_error(before: Params, ref: Params, other: Params) -> float:
    """Worst tensor's ‖other − ref‖ / (‖ref − before‖ + ‖ulp(ref)‖), Frobenius norms.

    The ulp term (one float32 spacing per weight) keeps a layer whose update is
    below the weights' rounding (deep tanh stacks) from dividing by ~0. NaN
    anywhere gives NaN.
    """
    worst = 0.0
    for old_pair, ref_pair, other_pair in zip(before, ref, other, strict=True):
        for old, new_ref, new_other in zip(old_pair, ref_pair, other_pair, strict=True):
            ref64 = new_ref.astype(np.float64)
            update = float(np.linalg.norm(ref64 - old.astype(np.float64)))
            ulps = np.spacing(np.abs(new_ref.astype(np.float32))).astype(np.float64)
            scale = update + float(np.linalg.norm(ulps))
            diff = float(np.linalg.norm(new_other.astype(np.float64) - ref64))
            if math.isnan(diff):
                return math.nan
            worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def compare_step(
    before: Params, ref_loss: float, ref_params: Params, loss: float, params: Params
) -> dict[str, Any]:
    """The check entry of one contender: its first step against the reference step."""
    loss_rel = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
    update_rel = update_error(before, ref_params, params)
    ok = bool(loss_rel <= LOSS_RTOL and update_rel <= UPDATE_RTOL)  # False for NaN
    verdict = "ok" if ok else "FAIL"
    return {
        "ok": ok,
        "loss_rel": float(loss_rel),
        "update_rel": float(update_rel),
        "summary": f"{verdict} (loss {loss_rel:.0e}, dW {update_rel:.0e})",
    }


def gemm_check(rel: float) -> dict[str, Any]:
    """The check entry of the GEMM floor: worst relative error of its products."""
    ok = bool(rel <= GEMM_RTOL)
    return {
        "ok": ok,
        "gemm_rel": float(rel),
        "summary": f"{'ok' if ok else 'FAIL'} (GEMM {rel:.0e})",
    }


# --- the GEMM floor's plan (array-module agnostic: tested with NumPy) -----------------------
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


# --- PyTorch twins (device-agnostic: tested on the CPU) ----------------------------------------
def build_torch_model(net: Network, init: Params, device: Any) -> Any:
    """``nn.Sequential`` of Linear + activation on ``device``, weights copied from ``init``."""
    import torch

    nn = torch.nn
    acts = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
    modules: list[Any] = []
    for (fan_in, fan_out, act), (w, b) in zip(net.layers, init, strict=True):
        linear = nn.Linear(fan_in, fan_out, device=device, dtype=torch.float32)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            linear.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))
        modules.append(linear)
        if act is not None:
            if act not in acts:
                raise ValueError(f"{net.name}: no torch twin for activation {act!r}")
            modules.append(acts[act]())
    return nn.Sequential(*modules)


def torch_loss_fn(net: Network) -> Callable[[Any, Any], Any]:
    """``F.mse_loss`` or ``F.cross_entropy`` (mean reduction, like gpubackprop's losses)."""
    import torch.nn.functional as functional

    return functional.mse_loss if net.loss == "mse" else functional.cross_entropy


def torch_sgd(model: Any) -> Any:
    """Plain SGD, lr 0.01, foreach (the multi-tensor path; capturable as it is)."""
    import torch

    return torch.optim.SGD(model.parameters(), lr=LR, foreach=True)


def torch_batch(x: np.ndarray, y: np.ndarray, device: Any) -> tuple[Any, Any]:
    """(x, y) as torch tensors on ``device`` (float32 inputs, int64 labels / float32 targets)."""
    import torch

    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


def torch_train_step(
    model: Any, opt: Any, loss_fn: Callable[[Any, Any], Any], x: Any, y: Any
) -> Any:
    """One eager step; returns the loss tensor (no sync)."""
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss


def torch_params(model: Any) -> Params:
    """Host copies of every Linear's (weight, bias)."""
    import torch

    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    return [
        (m.weight.detach().cpu().numpy().copy(), m.bias.detach().cpu().numpy().copy())
        for m in linears
    ]


# --- JAX twin (device-agnostic: tested on the CPU where JAX is installed) ----------------------
def make_jax_step(net: Network) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    """``step(params, x, y) -> (new_params, loss)``: forward, loss, grad, SGD (not jitted).

    params is a list of (W (out, in), b (out,)); y int labels for cross-entropy,
    float targets for MSE. The caller jits it (with ``donate_argnums=(0,)``).
    """
    import jax
    import jax.numpy as jnp

    acts = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu}
    layer_acts = [act for _, _, act in net.layers]
    for act in layer_acts:
        if act is not None and act not in acts:
            raise ValueError(f"{net.name}: no JAX twin for activation {act!r}")

    def loss_fn(params: Any, x: Any, y: Any) -> Any:
        a = x
        for (w, b), act in zip(params, layer_acts, strict=True):
            a = a @ w.T + b
            if act is not None:
                a = acts[act](a)
        if net.loss == "mse":
            return jnp.mean((a - y) ** 2)
        logp = jax.nn.log_softmax(a, axis=1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def step(params: Any, x: Any, y: Any) -> tuple[Any, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        new = jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads)
        return new, loss

    return step


def jax_params(init: Params, device: Any) -> list[tuple[Any, Any]]:
    """The weights as a JAX pytree on ``device`` (fresh buffers: safe to donate)."""
    import jax

    return [(jax.device_put(w.copy(), device), jax.device_put(b.copy(), device)) for w, b in init]


def jax_batch(x: np.ndarray, y: np.ndarray, device: Any) -> tuple[Any, Any]:
    """(x, y) on ``device``; labels as int32 (JAX's default integer width)."""
    import jax

    y_host = y.astype(np.int32) if y.dtype.kind in "iu" else y.astype(np.float32)
    return jax.device_put(x, device), jax.device_put(y_host, device)


def jax_to_host(params: Any) -> Params:
    """Host copies of a JAX params pytree."""
    return [(np.array(w), np.array(b)) for w, b in params]


# --- contenders (GPU only) ---------------------------------------------------------------------
class Timed(Protocol):
    """What :func:`measure` needs of a contender."""

    def warmup(self, steps: int) -> None: ...

    def time_block(self, steps: int) -> float: ...


class Contender:
    """A training step on a fixed batch, issued without host syncs.

    Subclasses set ``clock`` and define :meth:`issue` (``steps`` steps, no sync),
    :meth:`sync`, and for model contenders :meth:`first_step`.
    """

    clock = "cuda-event"
    mode: str | None = None
    note = ""

    def first_step(self) -> tuple[float, Params]:
        """One step from the initial weights: (loss, updated weights on the host)."""
        raise NotImplementedError

    def issue(self, steps: int) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        raise NotImplementedError

    def warmup(self, steps: int) -> None:
        self.issue(steps)
        self.sync()

    def time_block(self, steps: int) -> float:
        """Milliseconds for ``steps`` steps issued back to back."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop device references (memory is freed between networks)."""
        self.__dict__.clear()


class CupyContender(Contender):
    """A contender on CuPy, timed with CuPy events on ``self.stream`` (None: current)."""

    def __init__(self, cp: ModuleType) -> None:
        self.cp = cp
        self.stream: Any = None

    def _stream(self) -> Any:
        return self.stream if self.stream is not None else self.cp.cuda.get_current_stream()

    def sync(self) -> None:
        self.cp.cuda.Device().synchronize()

    def time_block(self, steps: int) -> float:
        cp = self.cp
        stream = self._stream()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        self.sync()
        start.record(stream)
        self.issue(steps)
        end.record(stream)
        end.synchronize()
        return float(cp.cuda.get_elapsed_time(start, end))


class GbpEager(CupyContender):
    """gpubackprop eager: ``model.step`` (forward, loss, backward, update) on a prepared batch."""

    device = "cuda"  # the tests run the same class on "cpu" with NumPy as ``cp``

    def __init__(self, cp: ModuleType, net: Network, init: Params, x: np.ndarray, y: np.ndarray):
        super().__init__(cp)
        self.model = build_model(net, device=self.device, dtype="float32", seed=0)
        load_params(self.model, init)
        self.opt = gb.optim.SGD(LR)
        backend = self.model.backend
        with backend.activate():
            xd, yd = cp.asarray(x, dtype=np.float32), cp.asarray(y)
        self.raw = (xd, yd)
        self.batch = self.model.prepare_batch(xd, yd, net.loss)

    def first_step(self) -> tuple[float, Params]:
        # the public API for the reference step (validation included)
        value = self.model.train_step(self.raw[0], self.raw[1], self.batch.loss, self.opt)
        return float(value), gb_params(self.model)

    def issue(self, steps: int) -> None:
        model, opt, batch = self.model, self.opt, self.batch
        for _ in range(steps):
            model.step(batch, opt)


class GbpCaptured(CupyContender):
    """gpubackprop captured: ``model.compile_step(loss, opt)`` replayed as ``step(x, y)``."""

    device = "cuda"

    def __init__(self, cp: ModuleType, net: Network, init: Params, x: np.ndarray, y: np.ndarray):
        super().__init__(cp)
        self.model = build_model(net, device=self.device, dtype="float32", seed=0)
        load_params(self.model, init)
        self.opt = gb.optim.SGD(LR)
        with self.model.backend.activate():
            self.x, self.y = cp.asarray(x, dtype=np.float32), cp.asarray(y)
        self.step = self.model.compile_step(gb.losses.get_loss(net.loss), self.opt)

    def first_step(self) -> tuple[float, Params]:
        value = self.step(self.x, self.y, return_loss=True)
        return float(value), gb_params(self.model)

    def issue(self, steps: int) -> None:
        step, x, y = self.step, self.x, self.y
        for _ in range(steps):
            step(x, y)

    def captures_note(self) -> str:
        captures = getattr(self.step, "captures", None)
        return "" if captures in (None, 1) else f"{captures} captures (expected 1)"


class TorchContender(Contender):
    """A PyTorch contender, timed with torch CUDA events on the current stream."""

    device = "cuda"  # the tests run TorchEager on "cpu"

    def __init__(self, torch: ModuleType, net: Network, init: Params, x: np.ndarray, y: np.ndarray):
        self.torch = torch
        device = torch.device(self.device)
        self.model = build_torch_model(net, init, device)
        self.opt = torch_sgd(self.model)
        self.loss_fn = torch_loss_fn(net)
        self.x, self.y = torch_batch(x, y, device)
        self.init = init

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def time_block(self, steps: int) -> float:
        torch = self.torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        self.sync()
        start.record()
        self.issue(steps)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))


class TorchEager(TorchContender):
    """PyTorch eager: zero_grad, forward, loss, backward, SGD(foreach) step."""

    def first_step(self) -> tuple[float, Params]:
        loss = torch_train_step(self.model, self.opt, self.loss_fn, self.x, self.y)
        return float(loss.item()), torch_params(self.model)

    def issue(self, steps: int) -> None:
        model, opt, loss_fn, x, y = self.model, self.opt, self.loss_fn, self.x, self.y
        for _ in range(steps):
            torch_train_step(model, opt, loss_fn, x, y)


class TorchGraph(TorchContender):
    """PyTorch's whole-network CUDA-graph recipe: warm up on a side stream, capture, replay.

    ``zero_grad(set_to_none=True)`` runs before the capture, as in PyTorch's recipe:
    it launches no kernel, and backward inside the graph then writes (not adds)
    the gradients on every replay.
    """

    def __init__(self, torch: ModuleType, net: Network, init: Params, x: np.ndarray, y: np.ndarray):
        super().__init__(torch, net, init, x, y)
        model, opt, loss_fn, sx, sy = self.model, self.opt, self.loss_fn, self.x, self.y
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                torch_train_step(model, opt, loss_fn, sx, sy)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = loss_fn(model(sx), sy)
            self.static_loss.backward()
            opt.step()
        # the warm-up stepped the weights: put the initial ones back, in place
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for m, (w, b) in zip(linears, init, strict=True):
                m.weight.copy_(torch.from_numpy(w))
                m.bias.copy_(torch.from_numpy(b))
        torch.cuda.synchronize()

    def first_step(self) -> tuple[float, Params]:
        self.graph.replay()
        return float(self.static_loss.item()), torch_params(self.model)

    def issue(self, steps: int) -> None:
        graph = self.graph
        for _ in range(steps):
            graph.replay()


class JaxJit(Contender):
    """``jax.jit`` of the whole step, params donated, steps issued back to back."""

    clock = "wall"

    def __init__(
        self,
        jax: ModuleType,
        device: Any,
        net: Network,
        init: Params,
        x: np.ndarray,
        y: np.ndarray,
    ) -> None:
        self.jax = jax
        self.step = jax.jit(make_jax_step(net), donate_argnums=(0,))
        self.params = jax_params(init, device)
        self.x, self.y = jax_batch(x, y, device)
        self.loss: Any = None

    def first_step(self) -> tuple[float, Params]:
        self.params, self.loss = self.step(self.params, self.x, self.y)
        return float(self.loss), jax_to_host(self.params)

    def issue(self, steps: int) -> None:
        step, x, y = self.step, self.x, self.y
        params, loss = self.params, self.loss
        for _ in range(steps):
            params, loss = step(params, x, y)
        self.params, self.loss = params, loss

    def sync(self) -> None:
        self.jax.block_until_ready((self.params, self.loss))

    def time_block(self, steps: int) -> float:
        self.sync()
        start = time.perf_counter()
        self.issue(steps)
        self.sync()
        return (time.perf_counter() - start) * 1e3


class GemmFloor(CupyContender):
    """The step's GEMMs only, on a gpubackprop cuBLAS handle, as one CUDA graph.

    ``handle`` is a ``gpubackprop.backend.cublas.CublasHandle`` (one for the run:
    this class binds it to its own stream before capturing).
    """

    def __init__(
        self, cp: ModuleType, handle: Any, net: Network, init: Params, x: np.ndarray, seed: int
    ):
        super().__init__(cp)
        self.handle = handle
        self.plan = floor_plan(net)
        self.bufs = floor_buffers(cp, net, init, x, seed)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.graph: Any = None
        cp.cuda.Device().synchronize()
        with self.stream:
            self.handle.bind()
            run_plan(self.handle.gemm, self.plan, self.bufs)  # loads the kernels, eagerly
            self.stream.synchronize()
            try:
                self.stream.begin_capture()
                try:
                    run_plan(self.handle.gemm, self.plan, self.bufs)
                except BaseException:
                    try:
                        self.stream.end_capture()
                    except Exception:  # the capture is already invalid; keep the cause
                        pass
                    raise
                self.graph = self.stream.end_capture()
                self.mode = "graph"
            except Exception as exc:
                self.graph = None
                self.mode = "eager"
                self.note = f"capture failed, timed eagerly: {_one_line(exc)}"
        cp.cuda.Device().synchronize()

    def issue(self, steps: int) -> None:
        if self.graph is not None:
            graph, stream = self.graph, self.stream
            for _ in range(steps):
                graph.launch(stream)
            return
        with self.stream:
            gemm, plan, bufs = self.handle.gemm, self.plan, self.bufs
            for _ in range(steps):
                run_plan(gemm, plan, bufs)

    def check(self) -> dict[str, Any]:
        """Poison the outputs, run one step (replay), compare with float64 products."""
        cp = self.cp
        with self.stream:
            poison_outputs(self.plan, self.bufs)
        self.issue(1)
        self.sync()
        return gemm_check(plan_error(cp, self.plan, self.bufs))


# --- timing ----------------------------------------------------------------------------------
def measure(
    contenders: Mapping[str, Timed], warmup: int, iters: int, reps: int
) -> tuple[dict[str, list[float]], dict[str, BaseException]]:
    """Warm every contender up, then ``reps`` rounds of one timed block each.

    The order rotates every round. Returns per-step milliseconds (block / iters)
    per contender, and the exception of each contender that raised (it is
    dropped from the later rounds; the others go on).
    """
    errors: dict[str, BaseException] = {}
    for key, c in contenders.items():
        try:
            c.warmup(warmup)
        except Exception as exc:
            errors[key] = exc
    keys = [k for k in contenders if k not in errors]
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(reps):
        shift = r % len(keys) if keys else 0
        for key in keys[shift:] + keys[:shift]:
            if key in errors:
                continue
            try:
                samples[key].append(contenders[key].time_block(iters) / iters)
            except Exception as exc:
                errors[key] = exc
    return {k: v for k, v in samples.items() if k not in errors}, errors


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """median / p10 / p90 (ms) of per-step samples, and the samples themselves."""
    arr = np.asarray(samples, dtype=np.float64)
    return {
        "median_ms": float(np.median(arr)),
        "p10_ms": float(np.percentile(arr, 10)),
        "p90_ms": float(np.percentile(arr, 90)),
        "samples_ms": [float(v) for v in arr],
    }


# --- results: ratios, targets, table (pure functions) --------------------------------------------
def contender_entry(
    key: str,
    status: str,
    *,
    timing: Mapping[str, Any] | None = None,
    check: Mapping[str, Any] | None = None,
    error: str | None = None,
    detail: str | None = None,
    clock: str | None = None,
    mode: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One contender's JSON entry.

    ``status`` is "ok", "error" (it raised: ``error``, ``traceback``) or
    "missing" (not run; ``error`` says why: library absent, not selected).
    """
    if status not in ("ok", "error", "missing"):
        raise ValueError(f"bad status {status!r}")
    timing = dict(timing or {})
    return {
        "label": LABELS.get(key, key),
        "status": status,
        "median_ms": timing.get("median_ms"),
        "p10_ms": timing.get("p10_ms"),
        "p90_ms": timing.get("p90_ms"),
        "samples_ms": list(timing.get("samples_ms", [])),
        "clock": clock,
        "mode": mode,
        "check": None if check is None else dict(check),
        "error": error,
        "traceback": detail,
        "note": note,
    }


def medians(contenders: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """key -> median ms of every contender that ran (None for errors and missing ones)."""
    out: dict[str, float | None] = {}
    for key in CONTENDERS:
        entry = contenders.get(key)
        ok = entry is not None and entry.get("status") == "ok"
        out[key] = float(entry["median_ms"]) if ok and entry.get("median_ms") else None
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def compute_ratios(times: Mapping[str, float | None]) -> dict[str, float | None]:
    """The four ratios of the table from median times (None where a side is missing).

    Best peer is the faster of torch graph and jax jit (whichever ran).
    """
    peers = [times.get(p) for p in PEERS]
    best = min((t for t in peers if t is not None), default=None)
    return {
        CAPTURED_BEST_PEER: _div(times.get(GBP_CAPTURED), best),
        CAPTURED_TORCH_GRAPH: _div(times.get(GBP_CAPTURED), times.get(TORCH_GRAPH)),
        CAPTURED_FLOOR: _div(times.get(GBP_CAPTURED), times.get(GEMM_FLOOR)),
        EAGER_TORCH_EAGER: _div(times.get(GBP_EAGER), times.get(TORCH_EAGER)),
    }


def best_peer(times: Mapping[str, float | None]) -> str | None:
    """Which peer is the best peer (None when neither ran)."""
    ran = [(t, p) for p in PEERS if (t := times.get(p)) is not None]
    return min(ran)[1] if ran else None


def evaluate_targets(
    network: str, ratios: Mapping[str, float | None], floor_mode: str | None = "graph"
) -> list[dict[str, Any]]:
    """PASS / MISS / n/a for every target of ``network`` (none for other networks).

    A GEMM-floor target is n/a when the floor was not captured (an eager floor
    is no floor).
    """
    rows = []
    for ratio, bound in TARGETS.get(network, []):
        value = ratios.get(ratio)
        if value is None:
            verdict, why = "n/a", "not measured"
        elif ratio == CAPTURED_FLOOR and floor_mode != "graph":
            verdict, why = "n/a", "GEMM floor not captured"
        else:
            verdict, why = ("PASS" if value <= bound else "MISS"), ""
        rows.append(
            {"ratio": ratio, "bound": bound, "value": value, "verdict": verdict, "why": why}
        )
    return rows


def format_ms(entry: Mapping[str, Any] | None) -> str:
    """A table cell: "0.123", "ERR", "n/a"; an eagerly timed floor gets " (eager)"."""
    if entry is None or entry.get("status") == "missing":
        return "n/a"
    if entry.get("status") == "error" or entry.get("median_ms") is None:
        return "ERR"
    text = f"{entry['median_ms']:.3f}"
    if entry.get("mode") == "eager":
        text += " (eager)"
    return text


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def check_summary(contenders: Mapping[str, Mapping[str, Any]]) -> str:
    """The table's check cell: ``ok (max loss 1e-07, dW 2e-05)`` or ``FAIL: torch graph``."""
    checks = {k: e["check"] for k, e in contenders.items() if e.get("check")}
    if not checks:
        return "n/a"
    failed = [LABELS.get(k, k) for k, c in checks.items() if not c.get("ok")]
    if failed:
        return "FAIL: " + ", ".join(failed)
    loss = max((c.get("loss_rel") or 0.0 for c in checks.values()), default=0.0)
    update = max((c.get("update_rel") or 0.0 for c in checks.values()), default=0.0)
    return f"ok (max loss {loss:.0e}, dW {update:.0e})"


MAIN_HEAD = [
    "network",
    *(f"{LABELS[k]} ms" for k in CONTENDERS),
    *RATIOS,
    "check",
]


def table_rows(results: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The summary table's rows (see :data:`MAIN_HEAD`)."""
    rows = []
    for r in results:
        c = r["contenders"]
        rows.append(
            [r["network"]]
            + [format_ms(c.get(k)) for k in CONTENDERS]
            + [format_ratio(r["ratios"].get(k)) for k in RATIOS]
            + [check_summary(c)]
        )
    return rows


def detail_rows(results: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Per contender: median, p10, p90, blocks, TFLOP/s, clock, check, note."""
    rows = []
    for r in results:
        for key in CONTENDERS:
            e = r["contenders"].get(key)
            if e is None or e.get("median_ms") is None:
                continue
            tflops = r["flops_per_step"] / (e["median_ms"] * 1e9)
            check = (e.get("check") or {}).get("summary", "n/a")
            rows.append(
                [
                    r["network"],
                    e["label"] + (" (eager)" if e.get("mode") == "eager" else ""),
                    f"{e['median_ms']:.4f}",
                    f"{e['p10_ms']:.4f}",
                    f"{e['p90_ms']:.4f}",
                    str(len(e.get("samples_ms", []))),
                    f"{tflops:.2f}",
                    e.get("clock") or "",
                    check,
                    e.get("note") or "",
                ]
            )
    return rows


DETAIL_HEAD = [
    "network",
    "contender",
    "median ms",
    "p10 ms",
    "p90 ms",
    "blocks",
    "TFLOP/s",
    "clock",
    "check",
    "note",
]


def target_rows(results: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """network | target | value | verdict, for every target of every network."""
    rows = []
    for r in results:
        for t in r["targets"]:
            value = format_ratio(t["value"])
            verdict = t["verdict"] + (f" ({t['why']})" if t.get("why") else "")
            rows.append([r["network"], f"{t['ratio']} <= {t['bound']:g}", value, verdict])
    return rows


TARGET_HEAD = ["network", "target", "value", "verdict"]


def error_lines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """``network / contender: status: message`` for every contender that did not run."""
    lines = []
    for r in results:
        for key in CONTENDERS:
            e = r["contenders"].get(key)
            if e is not None and e.get("status") != "ok" and e.get("error"):
                lines.append(f"{r['network']} / {e['label']}: {e['status']}: {e['error']}")
    return lines


def format_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, `` | `` between them, a rule under the head."""
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("-|-".join("-" * w for w in widths))
    for row in rows:
        lines.append(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def report(results: Sequence[Mapping[str, Any]]) -> str:
    """The printed report: details, what did not run, then the summary and targets last
    (a log cut to its tail keeps the summary)."""
    parts = [format_table(DETAIL_HEAD, detail_rows(results))]
    errors = error_lines(results)
    if errors:
        parts.append("not run / failed:\n" + "\n".join("  " + e for e in errors))
    parts.append(format_table(MAIN_HEAD, table_rows(results)))
    targets = target_rows(results)
    if targets:
        parts.append("targets:\n" + format_table(TARGET_HEAD, targets))
    return "\n\n".join(parts)


def run_failed(results: Sequence[Mapping[str, Any]]) -> bool:
    """True when a check failed or a gpubackprop contender raised."""
    for r in results:
        for key, e in r["contenders"].items():
            if e.get("check") is not None and not e["check"].get("ok"):
                return True
            if key in OWN and e.get("status") == "error":
                return True
    return False


def network_result(net: Network, contenders: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON entry of one network, with ratios and targets from its contenders."""
    ordered = {k: dict(contenders[k]) for k in CONTENDERS if k in contenders}
    ratios = compute_ratios(medians(ordered))
    floor_mode = (ordered.get(GEMM_FLOOR) or {}).get("mode")
    return {
        **net.summary(),
        "contenders": ordered,
        "best_peer": best_peer(medians(ordered)),
        "ratios": ratios,
        "targets": evaluate_targets(net.name, ratios, floor_mode),
    }


def validate_payload(payload: Mapping[str, Any]) -> None:
    """ValueError unless ``payload`` has this benchmark's JSON layout."""
    if payload.get("schema") != SCHEMA:
        raise ValueError(f"schema is {payload.get('schema')!r}, expected {SCHEMA!r}")
    for key in ("date", "device", "versions", "tf32", "settings", "results"):
        if key not in payload:
            raise ValueError(f"missing top-level key {key!r}")
    for r in payload["results"]:
        for key in ("network", "flops_per_step", "contenders", "ratios", "targets"):
            if key not in r:
                raise ValueError(f"result {r.get('network')!r}: missing {key!r}")
        for name, e in r["contenders"].items():
            for key in ("label", "status", "median_ms", "p10_ms", "p90_ms", "samples_ms", "check"):
                if key not in e:
                    raise ValueError(f"{r['network']} / {name}: missing {key!r}")


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    validate_payload(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict[str, Any]:
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    validate_payload(payload)
    return payload


def device_slug(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "gpu"


def default_json_path(device_name: str, day: datetime.date) -> Path:
    """``bench/results/gpu_step_<device-slug>_<YYYY-MM-DD>.json``."""
    return RESULTS_DIR / f"gpu_step_{device_slug(device_name)}_{day.isoformat()}.json"


def cuda_version_str(version: int | None) -> str | None:
    """CUDA's integer version (13000) as ``13.0``."""
    if version is None:
        return None
    return f"{version // 1000}.{(version % 1000) // 10}"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


# --- environment -------------------------------------------------------------------------------
def unset_cupy_tf32() -> str | None:
    """Remove ``CUPY_TF32`` from the environment (CuPy reads it at import); its old value."""
    return os.environ.pop("CUPY_TF32", None)


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the benchmark (None when CuPy sees a GPU)."""
    from gpubackprop import arrays

    cp = arrays.cupy_module()
    if cp is None:
        return f"CuPy is not importable ({arrays.cupy_import_error()})"
    try:
        count = int(cp.cuda.runtime.getDeviceCount())
    except Exception as exc:
        return f"CuPy is installed but the CUDA runtime found no device ({_one_line(exc)})"
    if count < 1:
        return "CuPy is installed but sees no CUDA device"
    return None


def import_torch() -> tuple[ModuleType | None, str | None]:
    """torch with CUDA and TF32 switched off, or (None, why not)."""
    try:
        import torch
    except Exception as exc:
        return None, f"torch is not importable ({_one_line(exc)})"
    try:
        if not torch.cuda.is_available():
            return None, f"torch {torch.__version__} sees no CUDA device"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    except Exception as exc:
        return None, f"torch CUDA setup failed ({_one_line(exc)})"
    return torch, None


def import_jax() -> tuple[ModuleType | None, Any, str | None]:
    """(jax, its first GPU device, None) with full-precision matmuls, or (None, None, why)."""
    # before JAX starts: do not let it take 75% of the GPU memory up front
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    try:
        import jax
    except Exception as exc:
        return None, None, f"jax is not importable ({_one_line(exc)})"
    try:
        jax.config.update("jax_default_matmul_precision", "highest")
    except Exception as exc:
        return None, None, f"jax {jax.__version__}: cannot set matmul precision ({_one_line(exc)})"
    problems = []
    for platform_name in ("cuda", "gpu"):
        try:
            gpus = jax.devices(platform_name)
        except Exception as exc:
            problems.append(_one_line(exc, 150))
            continue
        if gpus:
            return jax, gpus[0], None
    return None, None, f"jax {jax.__version__} has no GPU backend ({'; '.join(problems)})"


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip().splitlines()[0] or None
    except Exception:
        return None


def gpu_environment(
    cp: ModuleType,
    torch: ModuleType | None,
    jax: ModuleType | None,
    cupy_tf32_before: str | None,
) -> dict[str, Any]:
    """Device, versions and TF32 state (every probe defensive)."""
    props: dict[str, Any] = {}
    device: dict[str, Any] = {"name": "unknown GPU"}
    try:
        dev_id = cp.cuda.Device().id
        props = cp.cuda.runtime.getDeviceProperties(dev_id)
        name = props.get("name", b"unknown GPU")
        device = {
            "id": dev_id,
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": f"{props.get('major')}.{props.get('minor')}",
            "multiprocessors": props.get("multiProcessorCount"),
            "memory_gib": round(props.get("totalGlobalMem", 0) / 2**30, 1),
        }
    except Exception as exc:
        device["error"] = _one_line(exc)
    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gpubackprop": gb.__version__,
        "cupy": cp.__version__,
        "torch": None,
        "torch_cuda": None,
        "jax": None,
        "jaxlib": None,
        "cuda_runtime": None,
        "cuda_driver_api": None,
        "driver": _driver_version(),
        "cublas": None,
    }
    try:
        versions["cuda_runtime"] = cuda_version_str(cp.cuda.runtime.runtimeGetVersion())
        versions["cuda_driver_api"] = cuda_version_str(cp.cuda.runtime.driverGetVersion())
    except Exception:
        pass
    try:
        from cupy_backends.cuda.libs import cublas

        versions["cublas"] = cublas.getVersion(cp.cuda.device.get_cublas_handle())
    except Exception:
        pass
    if torch is not None:
        versions["torch"] = torch.__version__
        versions["torch_cuda"] = torch.version.cuda
    if jax is not None:
        versions["jax"] = jax.__version__
        try:
            import jaxlib

            versions["jaxlib"] = jaxlib.__version__
        except Exception:
            pass
    tf32: dict[str, Any] = {
        "CUPY_TF32_before": cupy_tf32_before,
        "CUPY_TF32_now": os.environ.get("CUPY_TF32"),
        "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE"),
        "gpubackprop_cublas_math_mode": "CUBLAS_DEFAULT_MATH (no TF32)",
    }
    if torch is not None:
        tf32["torch_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        tf32["torch_cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        tf32["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
    if jax is not None:
        try:
            tf32["jax_default_matmul_precision"] = jax.config.jax_default_matmul_precision
        except Exception:
            tf32["jax_default_matmul_precision"] = "highest (set; not read back)"
    return {"device": device, "versions": versions, "tf32": tf32}


def print_environment(env: Mapping[str, Any]) -> None:
    d, v, t = env["device"], env["versions"], env["tf32"]
    print(
        f"{env['date']}  {d['name']} (cc {d.get('compute_capability')}, "
        f"{d.get('multiprocessors')} SMs, {d.get('memory_gib')} GiB)"
    )
    print(
        "versions: " + ", ".join(f"{k} {val if val is not None else 'n/a'}" for k, val in v.items())
    )
    before = t["CUPY_TF32_before"]
    was = "was not set" if before is None else f"was {before!r}, unset before importing CuPy"
    torch_part = (
        f"torch allow_tf32 matmul={t['torch_matmul_allow_tf32']} "
        f"cudnn={t['torch_cudnn_allow_tf32']} precision={t['torch_float32_matmul_precision']}"
        if "torch_matmul_allow_tf32" in t
        else "torch n/a"
    )
    jax_part = (
        f"jax matmul precision={t['jax_default_matmul_precision']}"
        if "jax_default_matmul_precision" in t
        else "jax n/a"
    )
    print(
        f"TF32: off. CUPY_TF32 {was}; gpubackprop cuBLAS default math; {torch_part}; {jax_part}"
        + (
            f"; NVIDIA_TF32_OVERRIDE={t['NVIDIA_TF32_OVERRIDE']}"
            if t["NVIDIA_TF32_OVERRIDE"] is not None
            else ""
        )
    )


# --- one network ---------------------------------------------------------------------------------
@dataclass
class Libraries:
    """What this process has: CuPy always; torch and JAX when usable (else why not)."""

    cp: ModuleType
    torch: ModuleType | None = None
    torch_why: str | None = None
    jax: ModuleType | None = None
    jax_device: Any = None
    jax_why: str | None = None
    floor_handle: Any = None

    def cublas_handle(self) -> Any:
        """The GEMM floor's own CublasHandle, created on first use."""
        if self.floor_handle is None:
            from gpubackprop.backend.cublas import CublasHandle

            self.floor_handle = CublasHandle(self.cp)
        return self.floor_handle


def _free_memory(libs: Libraries) -> None:
    gc.collect()
    try:
        libs.cp.get_default_memory_pool().free_all_blocks()
    except Exception:
        pass
    if libs.torch is not None:
        try:
            libs.torch.cuda.empty_cache()
        except Exception:
            pass


def run_network(net: Network, libs: Libraries, args: argparse.Namespace) -> dict[str, Any]:
    """Build, check and time every contender on one network (each failure contained)."""
    x, y = make_batch(net, seed=args.seed)
    init = gb_params(build_model(net, device="cpu", dtype="float32", seed=args.seed))
    cp, torch, jax = libs.cp, libs.torch, libs.jax
    builders: dict[str, tuple[Callable[[], Contender] | None, str | None]] = {
        GBP_EAGER: (lambda: GbpEager(cp, net, init, x, y), None),
        GBP_CAPTURED: (lambda: GbpCaptured(cp, net, init, x, y), None),
        TORCH_EAGER: (
            (lambda: TorchEager(torch, net, init, x, y)) if torch else None,
            libs.torch_why,
        ),
        TORCH_GRAPH: (
            (lambda: TorchGraph(torch, net, init, x, y)) if torch else None,
            libs.torch_why,
        ),
        JAX_JIT: (
            (lambda: JaxJit(jax, libs.jax_device, net, init, x, y)) if jax else None,
            libs.jax_why,
        ),
        GEMM_FLOOR: (lambda: GemmFloor(cp, libs.cublas_handle(), net, init, x, args.seed), None),
    }
    entries: dict[str, dict[str, Any]] = {}
    live: dict[str, Contender] = {}
    checks: dict[str, dict[str, Any]] = {}
    reference: tuple[float, Params] | None = None

    def fail(key: str, exc: BaseException, stage: str) -> None:
        print(f"  {LABELS[key]}: {stage} failed: {_one_line(exc)}", flush=True)
        entries[key] = contender_entry(
            key, "error", error=f"{stage}: {_one_line(exc)}", detail=_traceback(exc)
        )
        c = live.pop(key, None)
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    for key in CONTENDERS:
        if key not in args.contenders:
            entries[key] = contender_entry(key, "missing", error="not selected (--contenders)")
            continue
        build, why = builders[key]
        if build is None:
            entries[key] = contender_entry(key, "missing", error=why)
            continue
        try:
            live[key] = build()
        except Exception as exc:
            fail(key, exc, "setup")
            continue
        try:
            if key == GEMM_FLOOR:
                checks[key] = live[key].check()  # type: ignore[attr-defined]
            else:
                loss, params = live[key].first_step()
                if key == GBP_EAGER:
                    reference = (loss, params)
                    checks[key] = compare_step(init, loss, params, loss, params)
                elif reference is not None:  # else unchecked (gbp eager's failure is shown)
                    checks[key] = compare_step(init, reference[0], reference[1], loss, params)
        except Exception as exc:
            fail(key, exc, "first step")
    samples, errors = measure(live, args.warmup, args.iters, args.reps)
    for key, c in live.items():
        if key in errors:
            exc = errors[key]
            entries[key] = contender_entry(
                key,
                "error",
                error=f"timing: {_one_line(exc)}",
                detail=_traceback(exc),
                check=checks.get(key),
                mode=c.mode,
            )
            print(f"  {LABELS[key]}: timing failed: {_one_line(exc)}", flush=True)
            continue
        note = c.note
        if isinstance(c, GbpCaptured):
            note = "; ".join(n for n in (note, c.captures_note()) if n)
        entries[key] = contender_entry(
            key,
            "ok",
            timing=summarize(samples[key]),
            check=checks.get(key),
            clock=c.clock,
            mode=c.mode,
            note=note,
        )
        e = entries[key]
        check = (e["check"] or {}).get("summary", "")
        print(f"  {LABELS[key]:<13} {format_ms(e):>16} ms  {check}", flush=True)
    for c in live.values():
        try:
            c.close()
        except Exception:
            pass
    live.clear()
    _free_memory(libs)
    return network_result(net, entries)


# --- main -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    names = ",".join(n.name for n in GPU_NETWORKS)
    parser.add_argument("--networks", default="", help=f"comma-separated subset of {names}")
    parser.add_argument(
        "--contenders",
        default="",
        help=f"comma-separated subset of {','.join(CONTENDERS)} (default: all)",
    )
    parser.add_argument("--warmup", type=int, default=20, help="warm-up steps per contender")
    parser.add_argument("--iters", type=int, default=50, help="steps per timed block")
    parser.add_argument("--reps", type=int, default=10, help="timed blocks per contender")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="results file (default bench/results/gpu_step_<device>_<date>.json)",
    )
    parser.add_argument(
        "--png", type=Path, default=None, help="bar chart (default: the JSON path with .png)"
    )
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.iters < 1 or args.reps < 1:
        parser.error("--warmup >= 0, --iters >= 1 and --reps >= 1 are required")
    try:
        args.network_list = get_networks(args.networks, GPU_NETWORKS)
    except ValueError as exc:
        parser.error(str(exc))
    wanted = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {unknown}; known: {', '.join(CONTENDERS)}")
    args.contenders = tuple(wanted or CONTENDERS)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark. 0 on success or without a GPU; 1 if a check or gbp contender failed."""
    args = parse_args(argv)
    cupy_tf32_before = unset_cupy_tf32()
    reason = no_gpu_reason()
    if reason is not None:
        print(f"gpu_step: no GPU benchmark on this machine: {reason}. Nothing was timed.")
        return 0
    from gpubackprop import arrays

    cp = arrays.cupy_module()
    assert cp is not None
    if cupy_tf32_before is not None and cupy_tf32_before != "0":
        print(f"warning: CUPY_TF32={cupy_tf32_before!r} was set; unset now (cupy.matmul only)")
    # gpubackprop's cuBLAS handle first (it opens the libcublas CuPy loaded), then the peers
    try:
        gb.get_backend("cuda").ops.blas  # noqa: B018
    except Exception as exc:  # the gbp contenders will report it
        print(f"warning: gpubackprop's cuBLAS handle: {_one_line(exc)}")
    libs = Libraries(cp)
    if TORCH_EAGER in args.contenders or TORCH_GRAPH in args.contenders:
        libs.torch, libs.torch_why = import_torch()
    else:
        libs.torch_why = "not selected"
    if JAX_JIT in args.contenders:
        libs.jax, libs.jax_device, libs.jax_why = import_jax()
    else:
        libs.jax_why = "not selected"
    now = datetime.datetime.now(datetime.timezone.utc)
    env = {"date": now.isoformat(timespec="seconds")}
    env.update(gpu_environment(cp, libs.torch, libs.jax, cupy_tf32_before))
    print_environment(env)
    for why in (libs.torch_why, libs.jax_why):
        if why and why != "not selected":
            print(f"note: {why}")
    print()
    results = []
    for net in args.network_list:
        gflop = net.flops_per_step / 1e9
        print(f"{net.name}: {net.describe()}, {gflop:.3g} GFLOP/step", flush=True)
        start = time.perf_counter()
        try:
            results.append(run_network(net, libs, args))
        except Exception as exc:  # outside any one contender: the network is reported
            print(f"  {net.name} failed: {_one_line(exc)}", flush=True)
            failed = {
                k: contender_entry(
                    k, "error", error=f"network: {_one_line(exc)}", detail=_traceback(exc)
                )
                for k in args.contenders
            }
            results.append(network_result(net, failed))
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    print()
    print(report(results))
    payload = {
        "schema": SCHEMA,
        **env,
        "settings": {
            "lr": LR,
            "dtype": "float32",
            "warmup": args.warmup,
            "iters": args.iters,
            "reps": args.reps,
            "seed": args.seed,
            "contenders": list(args.contenders),
            "loss_rtol": LOSS_RTOL,
            "update_rtol": UPDATE_RTOL,
            "gemm_rtol": GEMM_RTOL,
        },
        "results": results,
    }
    json_path = args.json or default_json_path(env["device"]["name"], now.date())
    try:
        write_json(json_path, payload)
        print(f"\nwrote {json_path}")
    except Exception as exc:
        print(f"\ncould not write {json_path}: {_one_line(exc)}")
        return 1
    if not args.no_plot:
        png_path = args.png or json_path.with_suffix(".png")
        try:
            from bench.plot import plot_results

            plot_results(json_path, png_path)
            print(f"wrote {png_path}")
        except Exception as exc:
            print(f"no PNG: {_one_line(exc)} (later: python bench/plot.py {json_path})")
    return 1 if run_failed(results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
