"""Benchmark ONE training step on the CPU: gpubackprop vs PyTorch vs a textbook NumPy loop.

A step is forward, loss, backward and a plain SGD update (lr 0.01), float32, on
the networks of :mod:`bench.networks`. Contenders, in this process, on the same
batch and starting from the same weights:

* ``gpubackprop``: ``model.train_step(x, y, loss, optimizer)`` on ``device="cpu"``
  (the public API, input validation included);
* ``gb internal``: the same step without validation (``model.step`` on
  a batch from ``model.prepare_batch``, prepared once), to show what validation costs;
* ``torch``: PyTorch CPU eager, ``nn.Sequential`` of ``nn.Linear`` + activations
  and ``torch.optim.SGD``, with as many threads as NumPy's BLAS uses;
* ``textbook numpy``: the seed notes' loop, a new array for every operation.

The LSTM language model (``lstm-lm``, :mod:`bench.lstm_lm`: Embedding → LSTM → Dense
on (B, T) tokens) has the contenders ``gpubackprop`` and ``torch`` (``nn.Embedding`` +
``nn.LSTM`` + ``nn.Linear``); there is no textbook loop for it (n/a in the table), and its
float64 reference step is PyTorch float64 autograd (``lstm_lm.reference_lstm_step``).
With --quick it is timed with fewer steps (:data:`LSTM_QUICK`): one step takes about a second.

Before timing, one step of each contender from identical weights is compared with
a float64 step of the textbook formulas (``common.reference_step``): the same loss
and the same updated weights within float32 rounding (the ``check`` column).
Timing: warm-up steps, then rounds in which every contender runs a block of steps
(order rotated each round, a short pause before each block so the other library's
idle BLAS/OpenMP worker threads stop spinning on the cores);
each step is timed with ``time.perf_counter_ns``. Reported: median, p10 and p90
per contender, gpubackprop's median over the others' (the ratios), and the
median over rounds of the per-round ratio of block medians (the paired ratios,
steadier when load on the machine comes and goes).

Run from the repository root: ``python bench/cpu_step.py [--quick] [--networks a,b]
[--repeat-seconds 1] [--json results.json]``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Import the checkout's gpubackprop (and bench.*) even when run as a script.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import gpubackprop as gb  # noqa: E402
from bench import common  # noqa: E402
from bench.common import (  # noqa: E402
    ACTIVATIONS,
    LR,
    Params,
    ReferenceStep,
    build_torch_model,
    compare_step,
    format_table,
    gb_params,
    paired_ratio,
    ratio,
    reference_step,
    summarize,
    summarize_checks,
    textbook_pass,
    torch_batch,
    torch_loss_fn,
    torch_params,
    torch_sgd,
    torch_train_step,
)
from bench.lstm_lm import (  # noqa: E402
    LSTM_LM,
    LSTMNetwork,
    build_lstm_model,
    build_torch_lstm,
    compare_lstm_step,
    gb_named_params,
    make_lstm_batch,
    reference_lstm_step,
    torch_lstm_loss,
    torch_named_params,
)
from bench.networks import NETWORKS, Network, build_model, get_networks, make_batch  # noqa: E402

try:
    import torch
except ImportError:  # the torch column then reads n/a
    torch = None

try:
    import threadpoolctl
except ImportError:  # thread counts are then reported, not set
    threadpoolctl = None

#: "gpubackprop bench --cpu" when ``python -m gpubackprop bench --cpu`` runs this file
PROG = "gpubackprop bench --cpu" if __name__ == "gpubackprop_bench" else None
WARMUP_STEPS = 5
MIN_STEPS = 10
# p90/p10 of a contender's step times above this flags the network as noisy.
NOISY_SPREAD = 2.0
#: --repeat-seconds / --rounds / --settle-ms defaults, and --quick's
FULL = {"repeat_seconds": 1.0, "rounds": 5, "settle_ms": 150.0}
QUICK = {"repeat_seconds": 0.2, "rounds": 3, "settle_ms": 50.0}
#: The CPU benchmark's networks: the MLPs, then the LSTM language model.
CPU_NETWORKS: list[Network | LSTMNetwork] = [*NETWORKS, LSTM_LM]
#: warm-up steps and least timed steps of the LSTM LM with --quick (a step takes ~1 s)
LSTM_QUICK = {"warmup": 1, "min_steps": 3}

GB, GB_INTERNAL, TORCH, TEXTBOOK = "gpubackprop", "gb internal", "torch", "textbook numpy"


# --- contenders ----------------------------------------------------------------------
@dataclass
class Contender:
    """A named training step on a fixed batch; ``step()`` returns the loss as a float."""

    name: str
    step: Callable[[], float]
    params: Callable[[], Any]  # Params for the MLPs, lstm_lm.NamedParams for the LSTM LM


def gb_contender(net: Network, x: np.ndarray, y: np.ndarray, seed: int) -> Contender:
    """gpubackprop through the public ``train_step``."""
    model = build_model(net, device="cpu", dtype="float32", seed=seed)
    loss = gb.losses.get_loss(net.loss)
    opt = gb.optim.SGD(LR)
    return Contender(GB, lambda: model.train_step(x, y, loss, opt), lambda: gb_params(model))


def gb_internal_contender(net: Network, x: np.ndarray, y: np.ndarray, seed: int) -> Contender:
    """gpubackprop's step without input validation: the batch is prepared once."""
    model = build_model(net, device="cpu", dtype="float32", seed=seed)
    opt = gb.optim.SGD(LR)
    batch = model.prepare_batch(x, y, net.loss)
    return Contender(GB_INTERNAL, lambda: float(model.step(batch, opt)), lambda: gb_params(model))


def torch_contender(net: Network, x: np.ndarray, y: np.ndarray, init: Params) -> Contender:
    """PyTorch eager: ``bench.common``'s twin on the CPU, torch.optim.SGD (torch's CPU loop)."""
    device = torch.device("cpu")
    model = build_torch_model(net, init, device)
    opt = torch_sgd(model, foreach=None)
    loss_fn = torch_loss_fn(net)
    tx, ty = torch_batch(x, y, device)
    return Contender(
        TORCH,
        lambda: torch_train_step(model, opt, loss_fn, tx, ty).item(),
        lambda: torch_params(model),
    )


def gb_lstm_contender(net: LSTMNetwork, x: np.ndarray, y: np.ndarray, seed: int) -> Contender:
    """gpubackprop's LSTM LM through the public ``train_step``."""
    model = build_lstm_model(net, device="cpu", dtype="float32", seed=seed)
    loss = gb.losses.get_loss(net.loss)
    opt = gb.optim.SGD(LR)
    return Contender(GB, lambda: model.train_step(x, y, loss, opt), lambda: gb_named_params(model))


def torch_lstm_contender(
    net: LSTMNetwork, x: np.ndarray, y: np.ndarray, init: dict[str, np.ndarray]
) -> Contender:
    """PyTorch eager LSTM LM on the CPU, torch.optim.SGD (torch's CPU loop)."""
    model = build_torch_lstm(net, init, torch.device("cpu"))
    opt = torch_sgd(model, foreach=None)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    return Contender(
        TORCH,
        lambda: torch_train_step(model, opt, torch_lstm_loss, tx, ty).item(),
        lambda: torch_named_params(model),
    )


class TextbookNumpy:
    """The seed notes' NumPy loop generalised to L layers (``common.textbook_pass``) + SGD."""

    def __init__(self, net: Network, x: np.ndarray, y: np.ndarray, init: Params) -> None:
        if net.activation not in ACTIVATIONS:
            raise ValueError(f"{net.name}: no textbook twin for {net.activation!r}")
        self.net = net
        self.x, self.y = x, y
        self.weights = [w.copy() for w, _ in init]
        self.biases = [b.copy() for _, b in init]

    def step(self) -> float:
        step = textbook_pass(self.net, self.weights, self.biases, self.x, self.y)
        for i, (dw, db) in enumerate(step.grads):
            self.weights[i] -= LR * dw
            self.biases[i] -= LR * db
        return step.loss

    def params(self) -> Params:
        return [(w.copy(), b.copy()) for w, b in zip(self.weights, self.biases, strict=True)]


def textbook_contender(net: Network, x: np.ndarray, y: np.ndarray, init: Params) -> Contender:
    """The textbook NumPy loop."""
    loop = TextbookNumpy(net, x, y, init)
    return Contender(TEXTBOOK, loop.step, loop.params)


# --- correctness ------------------------------------------------------------------------
def check_contenders(
    contenders: list[Contender], reference: ReferenceStep
) -> dict[str, dict[str, Any]]:
    """Step every contender once (all start from ``reference.before``); compare each with
    the float64 reference step.

    Returns name -> ``common.compare_step`` entry for every contender.
    """
    return {c.name: compare_step(reference, c.step(), c.params()) for c in contenders}


# --- timing ------------------------------------------------------------------------------
@dataclass
class Timing:
    """Per-step wall times of one contender, in milliseconds, one list per round."""

    blocks: list[list[float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """median / p10 / p90 over every step, the number of steps, each block's median."""
        samples = [t for block in self.blocks for t in block]
        return {
            **summarize(samples, keep_samples=False),
            "steps": len(samples),
            "block_medians_ms": [float(np.median(b)) for b in self.blocks],
        }


def _timed(step: Callable[[], float]) -> float:
    """Milliseconds of one call of ``step``."""
    start = time.perf_counter_ns()
    step()
    return (time.perf_counter_ns() - start) / 1e6


def measure(
    contenders: list[Contender],
    repeat_seconds: float,
    rounds: int,
    settle_s: float,
    warmup: int = WARMUP_STEPS,
    min_steps: int = MIN_STEPS,
) -> dict[str, Timing]:
    """``warmup`` steps, then ``rounds`` rounds of one timed block per contender.

    Each contender gets about ``repeat_seconds`` of timed steps in all, and at
    least ``min_steps``. Before a block: a pause of ``settle_s`` (the other
    library's worker threads finish spinning) and one untimed step.
    """
    # the fastest warm-up step estimates the step time (slow ones are noise)
    estimate = {c.name: min(_timed(c.step) for _ in range(warmup)) / 1e3 for c in contenders}
    per_round = {
        name: max(math.ceil(min_steps / rounds), math.ceil(repeat_seconds / rounds / est))
        for name, est in estimate.items()
    }
    timings = {c.name: Timing() for c in contenders}
    for r in range(rounds):
        shift = r % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            time.sleep(settle_s)
            c.step()
            timings[c.name].blocks.append([_timed(c.step) for _ in range(per_round[c.name])])
    return timings


# --- environment -----------------------------------------------------------------------
def _numpy_blas() -> dict[str, Any] | None:
    """threadpoolctl's entry for the BLAS NumPy is linked to (None without threadpoolctl)."""
    if threadpoolctl is None:
        return None
    blas = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    for info in blas:
        if Path(info["filepath"]).resolve().parent.name.startswith("numpy"):
            return info
    return blas[0] if blas else None


def environment() -> dict[str, Any]:
    """``common.host_environment()`` plus versions, BLAS libraries and thread counts."""
    blas = _numpy_blas()
    env: dict[str, Any] = {
        **common.host_environment(),
        "versions": {
            **common.core_versions(),
            "torch": None if torch is None else torch.__version__,
            "threadpoolctl": None if threadpoolctl is None else threadpoolctl.__version__,
        },
        "numpy_blas": None
        if blas is None
        else {
            k: blas.get(k)
            for k in ("internal_api", "version", "architecture", "threading_layer", "num_threads")
        },
        # the GEMM gpubackprop's CPU ops use (gpubackprop.backend.cpu_blas: NumPy's BLAS,
        # or MKL when the mkl package is installed)
        "gb_cpu_gemm": gb.backend.cpu_blas.describe(gb.backend.cpu_gemm()),
        # its LSTM / GRU cell (gpubackprop.backend.cpu_kernels: compiled or NumPy passes)
        "gb_cpu_cells": gb.backend.cpu_kernels.describe(gb.backend.cpu_cells()),
        "env_vars": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                      "GPUBACKPROP_CPU_BLAS", "GPUBACKPROP_CPU_KERNELS")
            if k in os.environ
        },
    }
    if torch is not None:
        found = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
        env["torch"] = {
            "num_threads": torch.get_num_threads(),
            "blas": found.group(1) if found else "unknown",
        }
    return env


def set_threads(threads: int | None) -> Any:
    """Match torch's thread count to NumPy's BLAS (or set both to ``threads``).

    Returns the threadpoolctl limiter to keep alive (None when nothing was limited).
    """
    limiter = None
    gb.backend.cpu_gemm()  # loads MKL when gpubackprop uses it, so the limit reaches it
    if threads is not None and threadpoolctl is not None:
        limiter = threadpoolctl.threadpool_limits(threads, user_api="blas")
    blas = _numpy_blas()
    target = threads if threads is not None else (blas or {}).get("num_threads")
    if torch is not None and target is not None:
        torch.set_num_threads(int(target))
    return limiter


# --- report --------------------------------------------------------------------------------
def _fmt_ms(result: dict[str, Any], name: str) -> str:
    timing = result["timings"].get(name)
    return "n/a" if timing is None else f"{timing['median_ms']:.3f}"


def _ratio(result: dict[str, Any], name: str) -> float | None:
    timings = result["timings"]
    return ratio(timings[GB]["median_ms"], timings.get(name, {}).get("median_ms"))


def print_table(results: list[dict[str, Any]]) -> None:
    """The summary table (medians and ratios), then the spread of every contender."""
    head = [
        "network",
        f"{GB} ms",
        f"{GB_INTERNAL} ms",
        f"{TORCH} ms",
        f"{TEXTBOOK} ms",
        "gb/torch",
        "gb/textbook",
        "paired gb/torch",
        "paired gb/textbook",
        "check",
    ]
    rows = []
    for r in results:
        paired = r["paired_ratios"]
        ratios = [_ratio(r, TORCH), _ratio(r, TEXTBOOK), paired.get(TORCH), paired.get(TEXTBOOK)]
        rows.append(
            [r["network"]]
            + [_fmt_ms(r, n) for n in (GB, GB_INTERNAL, TORCH, TEXTBOOK)]
            + ["n/a" if q is None else f"{q:.2f}" for q in ratios]
            + [r["check"]["summary"]]
        )
    print(format_table(head, rows))
    print()
    spread = [["network", "contender", "median ms", "p10 ms", "p90 ms", "steps", "GFLOP/s"]]
    for r in results:
        for name, t in r["timings"].items():
            gflops = r["flops_per_step"] / (t["median_ms"] * 1e6)
            spread.append(
                [
                    r["network"],
                    name,
                    f"{t['median_ms']:.3f}",
                    f"{t['p10_ms']:.3f}",
                    f"{t['p90_ms']:.3f}",
                    str(t["steps"]),
                    f"{gflops:.0f}",
                ]
            )
    print(format_table(spread[0], spread[1:]))
    spreads = {
        r["network"]: max(t["p90_ms"] / t["p10_ms"] for t in r["timings"].values()) for r in results
    }
    noisy = ", ".join(
        f"{name} (p90/p10 up to {v:.1f})" for name, v in spreads.items() if v > NOISY_SPREAD
    )
    if noisy:
        print(
            f"\nnoisy: {noisy}. Other load on the machine; rerun when it is quiet, "
            "or compare with --threads 1."
        )


def print_environment(env: dict[str, Any]) -> None:
    m, v = env["machine"], env["versions"]
    print(f"{env['date']}  {m['processor']}, {m['logical_cpus']} logical CPUs, {m['platform']}")
    print("versions: " + ", ".join(f"{k} {val or 'n/a'}" for k, val in v.items()))
    blas = env["numpy_blas"]
    if blas is None:
        print("numpy BLAS: unknown (threadpoolctl not installed)")
    else:
        print(
            f"numpy BLAS: {blas['internal_api']} {blas['version']} ({blas['architecture']}, "
            f"{blas['threading_layer']}), {blas['num_threads']} threads"
        )
    print(f"gpubackprop CPU GEMM: {env['gb_cpu_gemm']}")
    print(f"gpubackprop CPU LSTM/GRU cell: {env['gb_cpu_cells']}")
    if "torch" in env:
        print(f"torch: {env['torch']['blas']} BLAS, {env['torch']['num_threads']} threads")
    if env["env_vars"]:
        print("env: " + " ".join(f"{k}={val}" for k, val in env["env_vars"].items()))


# --- main ----------------------------------------------------------------------------------
def run_network(net: Network | LSTMNetwork, args: argparse.Namespace) -> dict[str, Any]:
    """Build, check and time every contender on one network."""
    load = os.getloadavg()[0]  # other processes on the machine skew every contender
    if isinstance(net, LSTMNetwork):
        contenders, checks = _lstm_contenders(net, args.seed)
        extra = LSTM_QUICK if args.quick else {}
    else:
        contenders, checks = _mlp_contenders(net, args.seed)
        extra = {}
    timings = measure(contenders, args.repeat_seconds, args.rounds, args.settle_ms / 1e3, **extra)
    return {
        **net.summary(),
        "loadavg_1min_before": load,
        "timings": {name: t.as_dict() for name, t in timings.items()},
        "paired_ratios": {
            name: paired_ratio(timings[GB].blocks, t.blocks)
            for name, t in timings.items()
            if name != GB
        },
        "check": {
            "ok": all(c["ok"] for c in checks.values()),
            "summary": summarize_checks(checks),
            "contenders": checks,
        },
    }


def _mlp_contenders(net: Network, seed: int) -> tuple[list[Contender], dict[str, dict[str, Any]]]:
    """An MLP's contenders and their checks against the textbook float64 step."""
    x, y = make_batch(net, seed=seed)
    contenders = [gb_contender(net, x, y, seed), gb_internal_contender(net, x, y, seed)]
    init = contenders[0].params()
    if torch is not None:
        contenders.append(torch_contender(net, x, y, init))
    contenders.append(textbook_contender(net, x, y, init))
    return contenders, check_contenders(contenders, reference_step(net, x, y, init))


def _lstm_contenders(
    net: LSTMNetwork, seed: int
) -> tuple[list[Contender], dict[str, dict[str, Any]]]:
    """The LSTM LM's contenders (gpubackprop, torch) and their checks against torch float64
    (without torch: gpubackprop alone, check n/a)."""
    x, y = make_lstm_batch(net, seed=seed)
    contenders = [gb_lstm_contender(net, x, y, seed)]
    if torch is None:
        return contenders, {}
    init = contenders[0].params()
    contenders.append(torch_lstm_contender(net, x, y, init))
    reference = reference_lstm_step(net, x, y, init)
    checks = {c.name: compare_lstm_step(reference, c.step(), c.params()) for c in contenders}
    return contenders, checks


def build_parser(prog: str | None = PROG) -> argparse.ArgumentParser:
    """The options: ``bench.common``'s shared ones, then the CPU benchmark's."""
    parser = common.bench_parser(
        prog,
        (__doc__ or "").splitlines()[0],
        CPU_NETWORKS,
        json_help="write the results here",
        quick_help=(
            "short repetitions: --repeat-seconds {repeat_seconds} --rounds {rounds} "
            "--settle-ms {settle_ms:g} unless given".format(**QUICK)
        ),
    )
    parser.add_argument(
        "--repeat-seconds",
        type=float,
        default=None,
        help=f"timed seconds per contender per network, at least {MIN_STEPS} steps "
        f"(default {FULL['repeat_seconds']:g})",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help=f"interleaved rounds (default {FULL['rounds']})"
    )
    parser.add_argument(
        "--settle-ms",
        type=float,
        default=None,
        help="pause before each timed block so idle worker threads stop spinning "
        f"(default {FULL['settle_ms']:g})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS and torch threads (default: NumPy's BLAS default; torch matches it)",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    common.resolve_quick(args, FULL, QUICK)
    if args.rounds < 1 or args.repeat_seconds <= 0 or args.settle_ms < 0:
        parser.error("--rounds >= 1, --repeat-seconds > 0 and --settle-ms >= 0 are required")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 if every correctness check passed, 1 if one failed, 2 on bad usage."""
    args = parse_args(argv)
    try:
        networks = get_networks(args.networks, CPU_NETWORKS)
    except ValueError as exc:
        print(f"--networks: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None and threadpoolctl is None:
        print("--threads needs threadpoolctl (pip install threadpoolctl)", file=sys.stderr)
        return 2
    limiter = set_threads(args.threads)
    env = environment()
    print_environment(env)
    print()
    results = []
    for net in networks:
        print(f"{net.name}: {net.describe()} ...", end=" ", flush=True)
        results.append(run_network(net, args))
        print(f"(load average before: {results[-1]['loadavg_1min_before']:.2f})")
    print()
    print_table(results)
    if args.json is not None:
        payload = {
            **env,
            "settings": {
                "lr": LR,
                "dtype": "float32",
                "quick": args.quick,
                "warmup_steps": WARMUP_STEPS,
                "repeat_seconds": args.repeat_seconds,
                "rounds": args.rounds,
                "settle_ms": args.settle_ms,
                "seed": args.seed,
            },
            "results": results,
        }
        common.write_json(args.json, payload)
        print(f"\nwrote {args.json}")
    if limiter is not None:
        limiter.restore_original_limits()
    return 0 if all(r["check"]["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
