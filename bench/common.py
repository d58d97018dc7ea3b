"""What the CPU and the GPU training-step benchmarks share.

* **Parameters**: host copies of a model's ``(W, b)`` per layer, and loading them
  into a model on any device, so every contender starts from the same weights.
* **The float64 reference step** (:func:`reference_step`: the textbook formulas of
  :func:`textbook_pass` in float64) and **the one-step check** of every contender
  against it: :func:`update_error`, :func:`compare_step`, :func:`summarize_checks`.
* **The PyTorch twin** of a :class:`~bench.networks.Network` (any torch device).
* **Timing statistics**: :func:`summarize`, :func:`ratio`, :func:`paired_ratio`.
* **Output**: :func:`format_table`, :func:`write_json`, :func:`one_line`.
* **Environment**: the host, the versions and ``gpubackprop.info``'s report.
* **Command line**: the options both benchmarks take (:func:`bench_parser`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

import gpubackprop as gb
from bench.networks import Named, Network
from gpubackprop.info import collect_info, format_cuda_version

LR = 0.01
#: float32's unit roundoff u = 2^-24: a rounding moves a value by at most u relative.
U32 = 2.0**-24
#: A ReLU unit may flip where |z| ≤ FLIP_SIGMAS · σ_z (σ_z: :func:`reference_step`'s
#: estimate of the rounding error in z; the largest error seen over a million units of
#: wide-b512 was 1.0 σ_z).
FLIP_SIGMAS = 16.0
#: The one-step check's bounds: CHECK_SIGMAS · u · F (F: :func:`rounding_factor`).
CHECK_SIGMAS = 16.0
ACTIVATIONS = ("sigmoid", "tanh", "relu")

Params = list[tuple[np.ndarray, np.ndarray]]  # [(W (out, in), b (out,)), ...] per layer


# --- parameters ---------------------------------------------------------------------------
def gb_params(model: gb.Sequential) -> Params:
    """Host copies of a gpubackprop model's (weight, bias) per layer (any device)."""
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


# --- the textbook step and the float64 reference -------------------------------------------
def activate(name: str, z: np.ndarray) -> np.ndarray:
    """σ(z) of the benchmarks' hidden activations: 1 / (1 + e^−z), tanh z, max(z, 0)."""
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    raise ValueError(f"no textbook formula for activation {name!r}; known: {ACTIVATIONS}")


def activation_slope(name: str, a: np.ndarray) -> np.ndarray:
    """σ′ from the output a = σ(z): a(1 − a), 1 − a², [a > 0]."""
    if name == "sigmoid":
        return a * (1 - a)
    if name == "tanh":
        return 1 - a**2
    return (a > 0).astype(a.dtype)


@dataclass(frozen=True)
class TextbookPass:
    """What :func:`textbook_pass` computed: the loss, (dW, db) per layer, every z and a."""

    loss: float
    grads: Params
    pre_activations: list[np.ndarray]
    outputs: list[np.ndarray]  # x, then a_l per layer


def textbook_pass(
    net: Network,
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
) -> TextbookPass:
    """Forward, loss and backward with the textbook formulas, in the dtype of ``weights``.

    z_l = a_{l−1} W_lᵀ + b_l, a_l = σ(z_l) (the last layer linear), a_0 = x;
    MSE: L = mean((a_L − y)²), δ_L = 2 (a_L − y) / size; cross-entropy:
    L = −mean_i log p_i[y_i] with p = softmax(a_L), δ_L = (p − onehot(y)) / B;
    dW_l = δ_lᵀ a_{l−1}, db_l = δ_lᵀ 1, δ_{l−1} = (δ_l W_l) ⊙ σ′(a_{l−1}).
    A new array for every operation (the seed notes' loop).
    """
    a = x.astype(weights[0].dtype, copy=False)
    pre, outputs = [], [a]
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        z = a @ w.T + b
        a = z if i == last else activate(net.activation, z)
        pre.append(z)
        outputs.append(a)
    batch = a.shape[0]
    if net.loss == "mse":
        diff = a - y
        loss = np.mean(diff**2)
        delta = 2 * diff / diff.size
    else:
        shifted = a - a.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        probs = exp / exp.sum(axis=1, keepdims=True)
        rows = np.arange(batch)
        loss = -np.mean(np.log(probs[rows, y]))
        delta = probs
        delta[rows, y] -= 1
        delta = delta / batch
    grads = []
    for i in range(last, -1, -1):
        grads.append((delta.T @ outputs[i], delta.sum(axis=0)))
        if i > 0:
            delta = (delta @ weights[i]) * activation_slope(net.activation, outputs[i])
    return TextbookPass(float(loss), grads[::-1], pre, outputs)


def rounding_factor(net: Network) -> float:
    """F = Σ √n over the inner dimensions n of every sum a float32 step rounds.

    Forward z_l (fan-in), backward δ_{l−1} = δ_l W_l (fan-out, all layers but the
    first), dW = δᵀ a (the batch) and the loss (the output width). A sum of n terms
    rounded independently is off by about u √n relative, and relative errors add
    along the step: u · F is the step's expected relative error.
    """
    forward = sum(math.sqrt(i) for i, _, _ in net.layers)
    backward = sum(math.sqrt(o) for _, o, _ in net.layers[1:])
    return forward + backward + math.sqrt(net.batch) + math.sqrt(net.widths[-1])


def _augmented(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """[W | b] in float64."""
    w, b = pair
    return np.hstack([w, b[:, None]]).astype(np.float64)


def _norm_outside(m: np.ndarray, basis: np.ndarray | None) -> float:
    """‖m (I − Q Qᵀ)‖_F: the Frobenius norm of m's rows with the span of Q left out."""
    total = float(np.sum(m * m))
    inside = 0.0 if basis is None else float(np.sum((m @ basis) ** 2))
    return math.sqrt(max(total - inside, 0.0)) if math.isfinite(total) else math.nan


@dataclass(frozen=True)
class ReferenceStep:
    """What the one-step check compares a contender's first step with.

    Attributes:
        before: the initial (W, b) per layer that every contender starts from.
        loss: the reference loss.
        after: the reference's updated (W, b) per layer (float64).
        loss_rtol: bound on |L − L_ref| / |L_ref|.
        update_rtol: bound on :func:`update_error`.
        flip_bases: per layer, an orthonormal basis (in + 1, k) of the rows
            [a_{l−1}, 1] of the samples in which a ReLU unit at layer l or above may
            flip under float32 rounding, or None (empty: no flippable units).
    """

    before: Params
    loss: float
    after: Params
    loss_rtol: float
    update_rtol: float
    flip_bases: Sequence[np.ndarray | None] = ()

    @property
    def bases(self) -> list[np.ndarray | None]:
        """:attr:`flip_bases`, one entry per layer (None where empty)."""
        return list(self.flip_bases) or [None] * len(self.before)

    @cached_property
    def update_norms(self) -> list[float]:
        """‖U‖ per layer: the reference's update [ΔW | Δb], flip directions left out."""
        return [
            _norm_outside(_augmented(new) - _augmented(old), basis)
            for old, new, basis in zip(self.before, self.after, self.bases, strict=True)
        ]


def flip_bases(
    net: Network, step: TextbookPass, weights: Sequence[np.ndarray]
) -> list[np.ndarray | None]:
    """:attr:`ReferenceStep.flip_bases` from a float64 :func:`textbook_pass`.

    The rounding error of z = a Wᵀ + b in float32 is estimated as
    σ_z² = n u² (a² (W²)ᵀ) + σ_a² (W²)ᵀ: n roundings of size ≤ u |a_j W_ij| each
    (independent, so variances add), plus the error σ_a = σ_z of the layer below
    carried through W (every activation here has slope ≤ 1). A ReLU unit with
    |z| ≤ FLIP_SIGMAS · σ_z may flip in a correct float32 step. A flip at layer k
    changes δ_k, and every δ below it, in that sample s only, so it moves each
    [dW_l | db_l] (l ≤ k) only along the sample's row [a_{l−1}(s), 1]: the check
    leaves out those directions.
    """
    last = len(weights) - 1
    near = []
    carried: np.ndarray | None = None  # σ_a² of the layer's input; x is exact
    for i, w in enumerate(weights):
        w2, a = w * w, step.outputs[i]
        variance = w.shape[1] * U32**2 * ((a * a) @ w2.T)
        if carried is not None:
            variance += carried @ w2.T
        carried = variance
        kink = net.activation == "relu" and i < last
        close = np.abs(step.pre_activations[i]) <= FLIP_SIGMAS * np.sqrt(variance)
        near.append(np.any(close, axis=1) if kink else None)
    bases: list[np.ndarray | None] = []
    samples = np.zeros(len(step.outputs[0]), dtype=bool)
    for i in range(last, -1, -1):
        if near[i] is not None:
            samples |= near[i]
        rows = step.outputs[i][samples]
        if len(rows) == 0:
            bases.append(None)
            continue
        bases.append(row_basis(np.hstack([rows, np.ones((len(rows), 1))])))
    return bases[::-1]


def row_basis(rows: np.ndarray) -> np.ndarray:
    """An orthonormal basis (columns) of the span of ``rows``: Rᵀ V Λ^(−1/2), R Rᵀ = V Λ Vᵀ.

    Eigenvalues below 1e-12 λ_max (dependent rows) are dropped. The Gram matrix is
    small (one row per flippable sample); LAPACK's QR of the tall Rᵀ is as exact here
    but ran 20× slower under OpenBLAS threads on a busy machine.
    """
    lam, vecs = np.linalg.eigh(rows @ rows.T)
    keep = lam > 1e-12 * lam.max()
    return rows.T @ (vecs[:, keep] / np.sqrt(lam[keep]))


def reference_step(net: Network, x: np.ndarray, y: np.ndarray, init: Params) -> ReferenceStep:
    """One SGD step (lr :data:`LR`) of ``net`` from ``init`` on (x, y) in float64.

    The textbook formulas (:func:`textbook_pass`) in NumPy float64: independent of
    gpubackprop and PyTorch, and exact to ~1e-16, so the only errors the check sees
    are the contender's. The bounds are CHECK_SIGMAS · u · F (u = 2^−24,
    F = :func:`rounding_factor`) for the loss and the update, after leaving out the
    directions in which ReLU units that rounding may flip move the update
    (:func:`flip_bases`).
    """
    weights = [w.astype(np.float64) for w, _ in init]
    biases = [b.astype(np.float64) for _, b in init]
    step = textbook_pass(net, weights, biases, x, y)
    after = [
        (w - LR * dw, b - LR * db)
        for w, b, (dw, db) in zip(weights, biases, step.grads, strict=True)
    ]
    bound = CHECK_SIGMAS * U32 * rounding_factor(net)
    return ReferenceStep(init, step.loss, after, bound, bound, flip_bases(net, step, weights))


# --- the one-step check -------------------------------------------------------------------
def update_error(ref: ReferenceStep, params: Params) -> float:
    """Worst layer's (‖E‖ − ½‖ulp(W)‖)₊ / ‖U‖ over [W | b], Frobenius norms.

    E = contender's [W | b] − the reference's, U = the reference's update, both with
    the flip directions left out (:attr:`ReferenceStep.flip_bases`); ½ ulp per
    weight (float32 spacing of the contender's values) is what storing the updated
    weight in float32 may round, whatever the update. NaN anywhere gives NaN.
    """
    worst = 0.0
    layers = zip(ref.after, params, ref.bases, ref.update_norms, strict=True)
    for new_ref, new, basis, update in layers:
        got = _augmented(new)
        error = _norm_outside(got - _augmented(new_ref), basis)
        if math.isnan(error):
            return math.nan
        storage = 0.5 * float(np.linalg.norm(np.spacing(np.abs(got).astype(np.float32))))
        excess = max(error - storage, 0.0)
        worst = max(worst, excess / update if update > 0 else (0.0 if excess == 0 else math.inf))
    return worst


def compare_step(
    ref: ReferenceStep,
    loss: float,
    params: Params,
    *,
    loss_rtol: float | None = None,
    update_rtol: float | None = None,
) -> dict[str, Any]:
    """The check entry of one contender: its first step against the reference step.

    ok ⇔ |L − L_ref| / |L_ref| ≤ loss_rtol and :func:`update_error` ≤ update_rtol
    (the reference's bounds unless given).
    """
    loss_rtol = ref.loss_rtol if loss_rtol is None else loss_rtol
    update_rtol = ref.update_rtol if update_rtol is None else update_rtol
    loss_rel = abs(loss - ref.loss) / max(abs(ref.loss), 1e-30)
    return check_entry(loss_rel, update_error(ref, params), loss_rtol, update_rtol)


def check_entry(
    loss_rel: float, update_rel: float, loss_rtol: float, update_rtol: float
) -> dict[str, Any]:
    """A check entry: ok ⇔ loss_rel ≤ loss_rtol and update_rel ≤ update_rtol (NaN fails)."""
    ok = bool(loss_rel <= loss_rtol and update_rel <= update_rtol)  # False for NaN
    verdict = "ok" if ok else "FAIL"
    return {
        "ok": ok,
        "loss_rel": float(loss_rel),
        "update_rel": float(update_rel),
        "loss_rtol": loss_rtol,
        "update_rtol": update_rtol,
        "summary": f"{verdict} (loss {loss_rel:.0e}, dW {update_rel:.0e})",
    }


def summarize_checks(checks: Mapping[str, Mapping[str, Any]]) -> str:
    """One cell for several checks (label -> entry): ``ok (max loss 1e-07, dW 2e-05)``,
    ``FAIL: torch graph`` or ``n/a``."""
    if not checks:
        return "n/a"
    failed = [label for label, c in checks.items() if not c.get("ok")]
    if failed:
        return "FAIL: " + ", ".join(failed)
    loss = max((c.get("loss_rel") or 0.0 for c in checks.values()), default=0.0)
    update = max((c.get("update_rel") or 0.0 for c in checks.values()), default=0.0)
    return f"ok (max loss {loss:.0e}, dW {update:.0e})"


# --- the PyTorch twin (any torch device) ------------------------------------------------------
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


def torch_sgd(model: Any, foreach: bool | None = True) -> Any:
    """Plain SGD, lr 0.01; ``foreach=True`` is the multi-tensor path (capturable as it is),
    None lets torch pick (its CPU default is the per-tensor loop)."""
    import torch

    return torch.optim.SGD(model.parameters(), lr=LR, foreach=foreach)


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


# --- timing statistics ---------------------------------------------------------------------
def summarize(samples_ms: Sequence[float], keep_samples: bool = True) -> dict[str, Any]:
    """median / p10 / p90 (ms) of per-step samples, and the samples themselves if kept."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    stats: dict[str, Any] = {
        "median_ms": float(np.median(arr)),
        "p10_ms": float(np.percentile(arr, 10)),
        "p90_ms": float(np.percentile(arr, 90)),
    }
    if keep_samples:
        stats["samples_ms"] = [float(v) for v in arr]
    return stats


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when a side is missing or b ≤ 0."""
    return None if a is None or b is None or b <= 0 else a / b


def paired_ratio(
    num_blocks: Sequence[Sequence[float]], den_blocks: Sequence[Sequence[float]]
) -> float:
    """median over rounds r of median(num_blocks[r]) / median(den_blocks[r]).

    Blocks of one round run seconds apart, so load that comes and goes on the
    machine cancels out more than in the ratio of the overall medians.
    """
    return float(
        np.median(
            [np.median(a) / np.median(b) for a, b in zip(num_blocks, den_blocks, strict=True)]
        )
    )


# --- output ------------------------------------------------------------------------------
def format_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, `` | `` between them, a rule under the head."""
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("-|-".join("-" * w for w in widths))
    for row in rows:
        lines.append(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """``payload`` as indented JSON at ``path`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- environment --------------------------------------------------------------------------
def cuda_version_str(version: int | None) -> str | None:
    """CUDA's integer version (13000) as ``13.0``; None stays None."""
    return None if version is None else format_cuda_version(version)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host_environment() -> dict[str, Any]:
    """Date, host machine, and ``python -m gpubackprop info``'s rows (label -> value)."""
    try:
        info: dict[str, str] = dict(collect_info())
    except Exception as exc:  # a broken CUDA stack must not stop the benchmark
        info = {"error": one_line(exc)}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "gpubackprop_info": info,
    }


def core_versions() -> dict[str, str]:
    """Python, NumPy and gpubackprop versions (the start of both benchmarks' version lists)."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gpubackprop": gb.__version__,
    }


# --- command line --------------------------------------------------------------------------
def bench_parser(
    prog: str | None, description: str, networks: Sequence[Named], json_help: str, quick_help: str
) -> argparse.ArgumentParser:
    """A parser with the options both benchmarks take: --networks, --seed, --json, --quick."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    names = ",".join(n.name for n in networks)
    parser.add_argument(
        "--networks", default="", help=f"comma-separated subset of {names} (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the batch and the weights")
    parser.add_argument("--json", type=Path, default=None, help=json_help)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


def resolve_quick(
    args: argparse.Namespace, full: Mapping[str, Any], quick: Mapping[str, Any]
) -> None:
    """Fill every option left at None from ``quick`` (with --quick) or ``full`` (without)."""
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


__all__ = [
    "ACTIVATIONS",
    "CHECK_SIGMAS",
    "FLIP_SIGMAS",
    "LR",
    "U32",
    "Params",
    "ReferenceStep",
    "TextbookPass",
    "activate",
    "activation_slope",
    "bench_parser",
    "build_torch_model",
    "check_entry",
    "compare_step",
    "core_versions",
    "cpu_model",
    "cuda_version_str",
    "flip_bases",
    "format_table",
    "gb_params",
    "host_environment",
    "load_params",
    "one_line",
    "paired_ratio",
    "ratio",
    "reference_step",
    "resolve_quick",
    "rounding_factor",
    "row_basis",
    "summarize",
    "summarize_checks",
    "textbook_pass",
    "torch_batch",
    "torch_loss_fn",
    "torch_params",
    "torch_sgd",
    "torch_train_step",
    "update_error",
    "write_json",
]
