"""What the CPU and the GPU training-step benchmarks share.

* **Parameters**: host copies of a model's ``(W, b)`` per layer, and loading them
  into a model on any device, so every contender starts from the same weights.
* **The one-step check**: :func:`update_error`, :func:`compare_step`,
  :func:`summarize_checks`.
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
from pathlib import Path
from typing import Any

import numpy as np

import gpubackprop as gb
from bench.networks import Network
from gpubackprop.info import collect_info, format_cuda_version

LR = 0.01
#: Pass bounds of the one-step check (:func:`compare_step`): relative loss difference,
#: and per tensor ‖W_other − W_ref‖ / (‖W_ref − W_old‖ + ‖ulp(W_ref)‖) (Frobenius
#: norms). The update bound allows for ReLU masks that rounding flips at z ≈ 0: on
#: `wide` (ReLU, batch 4096) two correct float32 steps (PyTorch vs gpubackprop on the
#: CPU) differ by 1.5e-3 norm-wise on the first layer, 3e-5 or less elsewhere. Real
#: bugs (lr, loss scale, bias, transpose) give O(1).
LOSS_RTOL = 1e-4
UPDATE_RTOL = 1e-2

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


# --- the one-step check -------------------------------------------------------------------
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
    before: Params,
    ref_loss: float,
    ref_params: Params,
    loss: float,
    params: Params,
    *,
    loss_rtol: float = LOSS_RTOL,
    update_rtol: float = UPDATE_RTOL,
) -> dict[str, Any]:
    """The check entry of one contender: its first step against the reference step.

    ok ⇔ |L − L_ref| / |L_ref| ≤ ``loss_rtol`` and :func:`update_error` ≤ ``update_rtol``.
    """
    loss_rel = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
    update_rel = update_error(before, ref_params, params)
    ok = bool(loss_rel <= loss_rtol and update_rel <= update_rtol)  # False for NaN
    verdict = "ok" if ok else "FAIL"
    return {
        "ok": ok,
        "loss_rel": float(loss_rel),
        "update_rel": float(update_rel),
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
    prog: str | None, description: str, networks: Sequence[Network], json_help: str, quick_help: str
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
    "LOSS_RTOL",
    "LR",
    "UPDATE_RTOL",
    "Params",
    "bench_parser",
    "build_torch_model",
    "compare_step",
    "core_versions",
    "cpu_model",
    "cuda_version_str",
    "format_table",
    "gb_params",
    "host_environment",
    "load_params",
    "one_line",
    "paired_ratio",
    "ratio",
    "resolve_quick",
    "summarize",
    "summarize_checks",
    "torch_batch",
    "torch_loss_fn",
    "torch_params",
    "torch_sgd",
    "torch_train_step",
    "update_error",
    "write_json",
]
