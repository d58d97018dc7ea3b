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

Before timing, one step of each contender from identical weights must give the
same loss and the same updated weights within float32 tolerance (the ``check``
column). Timing: warm-up steps, then rounds in which every contender runs a
block of steps (order rotated each round, a short pause before each block so the
other library's idle BLAS/OpenMP worker threads stop spinning on the cores);
each step is timed with ``time.perf_counter_ns``. Reported: median, p10 and p90
per contender, gpubackprop's median over the others' (the ratios), and the
median over rounds of the per-round ratio of block medians (the paired ratios,
steadier when load on the machine comes and goes).

Run from the repository root: ``python bench/cpu_step.py [--networks a,b]
[--repeat-seconds 1] [--json results.json]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Import the checkout's gpubackprop (and bench.networks) even when run as a script.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import gpubackprop as gb  # noqa: E402
from bench.networks import Network, build_model, get_networks, make_batch  # noqa: E402

try:
    import torch
except ImportError:  # the torch column then reads n/a
    torch = None

try:
    import threadpoolctl
except ImportError:  # thread counts are then reported, not set
    threadpoolctl = None

LR = 0.01
WARMUP_STEPS = 5
MIN_STEPS = 10
# Pass bounds of the correctness check (see _update_error): relative loss
# difference, and weight difference relative to the size of the update.
LOSS_RTOL = 1e-4
UPDATE_RTOL = 1e-3
# p90/p10 of a contender's step times above this flags the network as noisy.
NOISY_SPREAD = 2.0

GB, GB_INTERNAL, TORCH, TEXTBOOK = "gpubackprop", "gb internal", "torch", "textbook numpy"

Params = list[tuple[np.ndarray, np.ndarray]]  # [(W (out, in), b (out,)), ...] per layer


# --- contenders ----------------------------------------------------------------------
@dataclass
class Contender:
    """A named training step on a fixed batch; ``step()`` returns the loss as a float."""

    name: str
    step: Callable[[], float]
    params: Callable[[], Params]


def gb_params(model: gb.Sequential) -> Params:
    """Host copies of a gpubackprop model's (weight, bias) per layer."""
    p = model.parameters()
    return [
        (np.array(p[f"{i}.weight"]), np.array(p[f"{i}.bias"])) for i in range(len(model.layers))
    ]


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

    def step() -> float:
        return float(model.step(batch, opt))

    return Contender(GB_INTERNAL, step, lambda: gb_params(model))


def torch_contender(net: Network, x: np.ndarray, y: np.ndarray, init: Params) -> Contender:
    """PyTorch eager: nn.Sequential of Linear + activation, torch.optim.SGD."""
    assert torch is not None
    nn, functional = torch.nn, torch.nn.functional
    acts = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
    modules: list[Any] = []
    for (fan_in, fan_out, act), (w, b) in zip(net.layers, init, strict=True):
        linear = nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w))
            linear.bias.copy_(torch.from_numpy(b))
        modules.append(linear)
        if act is not None:
            if act not in acts:
                raise ValueError(f"{net.name}: no torch twin for activation {act!r}")
            modules.append(acts[act]())
    model = nn.Sequential(*modules)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = functional.mse_loss if net.loss == "mse" else functional.cross_entropy
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(tx), ty)
        loss.backward()
        opt.step()
        return loss.item()

    def params() -> Params:
        linears = [m for m in model if isinstance(m, nn.Linear)]
        return [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in linears]

    return Contender(TORCH, step, params)


class TextbookNumpy:
    """The seed notes' NumPy loop generalised to L layers: readable, a new array per op."""

    def __init__(self, net: Network, x: np.ndarray, y: np.ndarray, init: Params) -> None:
        if net.activation not in ("sigmoid", "tanh", "relu"):
            raise ValueError(f"{net.name}: no textbook twin for {net.activation!r}")
        self.activation = net.activation
        self.loss = net.loss
        self.x, self.y = x, y
        self.weights = [w.copy() for w, _ in init]
        self.biases = [b.copy() for _, b in init]

    def act(self, z: np.ndarray) -> np.ndarray:
        if self.activation == "sigmoid":
            return 1 / (1 + np.exp(-z))
        if self.activation == "tanh":
            return np.tanh(z)
        return np.maximum(z, 0)

    def act_grad(self, a: np.ndarray) -> np.ndarray:
        """σ′ from the activation's output a."""
        if self.activation == "sigmoid":
            return a * (1 - a)
        if self.activation == "tanh":
            return 1 - a**2
        return (a > 0).astype(a.dtype)

    def step(self) -> float:
        # forward, keeping every layer's output
        a = self.x
        outputs = [a]
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = a @ w.T + b
            a = z if i == last else self.act(z)
            outputs.append(a)
        # loss and δ_L = ∂L/∂output
        batch = a.shape[0]
        if self.loss == "mse":
            diff = a - self.y
            loss = np.mean(diff**2)
            delta = 2 * diff / diff.size
        else:
            shifted = a - a.max(axis=1, keepdims=True)
            exp = np.exp(shifted)
            probs = exp / exp.sum(axis=1, keepdims=True)
            rows = np.arange(batch)
            loss = -np.mean(np.log(probs[rows, self.y]))
            delta = probs
            delta[rows, self.y] -= 1
            delta = delta / batch
        # backward
        grads = []
        for i in range(last, -1, -1):
            grads.append((delta.T @ outputs[i], delta.sum(axis=0)))
            if i > 0:
                delta = (delta @ self.weights[i]) * self.act_grad(outputs[i])
        # SGD
        for i, (dw, db) in enumerate(reversed(grads)):
            self.weights[i] -= LR * dw
            self.biases[i] -= LR * db
        return float(loss)

    def params(self) -> Params:
        return [(w.copy(), b.copy()) for w, b in zip(self.weights, self.biases, strict=True)]


def textbook_contender(net: Network, x: np.ndarray, y: np.ndarray, init: Params) -> Contender:
    """The textbook NumPy loop."""
    loop = TextbookNumpy(net, x, y, init)
    return Contender(TEXTBOOK, loop.step, loop.params)


# --- correctness ------------------------------------------------------------------------
@dataclass
class Check:
    """One step from identical weights, compared with gpubackprop's step."""

    loss_rel: dict[str, float] = field(default_factory=dict)
    update_rel: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(v <= LOSS_RTOL for v in self.loss_rel.values()) and all(
            v <= UPDATE_RTOL for v in self.update_rel.values()
        )

    def summary(self) -> str:
        worst_loss = max(self.loss_rel.values(), default=0.0)
        worst_update = max(self.update_rel.values(), default=0.0)
        verdict = "ok" if self.ok else "FAIL"
        return f"{verdict} (loss {worst_loss:.0e}, dW {worst_update:.0e})"


def _update_error(before: Params, ref: Params, other: Params) -> float:
    """Worst weight difference after one step, relative to the size of ref's update.

    Two float32 ulps of the largest weight are forgiven first: ``W − lr·dW`` is
    rounded to the weights' precision, and libraries round that update
    differently (torch fuses ``add_(g, alpha=-lr)``), which alone can move a
    weight by one ulp when the update is ~1000 ulps (deep tanh stacks).
    """
    eps = float(np.finfo(np.float32).eps)
    worst = 0.0
    for old_pair, ref_pair, other_pair in zip(before, ref, other, strict=True):
        for old, new_ref, new_other in zip(old_pair, ref_pair, other_pair, strict=True):
            update = float(np.max(np.abs(new_ref - old)))
            diff = float(np.max(np.abs(new_other - new_ref)))
            diff = max(0.0, diff - 2 * eps * float(np.max(np.abs(old))))
            worst = max(worst, diff / update if update > 0 else diff)
    return worst


def check_contenders(contenders: list[Contender], before: Params) -> Check:
    """Step every contender once (all start from ``before``); compare with the first."""
    losses = [c.step() for c in contenders]
    params = [c.params() for c in contenders]
    check = Check()
    for c, loss, p in zip(contenders[1:], losses[1:], params[1:], strict=True):
        check.loss_rel[c.name] = abs(loss - losses[0]) / max(abs(losses[0]), 1e-30)
        check.update_rel[c.name] = _update_error(before, params[0], p)
    return check


# --- timing ------------------------------------------------------------------------------
@dataclass
class Timing:
    """Per-step wall times of one contender, in nanoseconds, one list per round."""

    blocks: list[list[int]] = field(default_factory=list)

    @property
    def samples(self) -> list[int]:
        return [t for block in self.blocks for t in block]

    def ms(self, q: float) -> float:
        return float(np.percentile(self.samples, q)) / 1e6

    def as_dict(self) -> dict[str, float | int]:
        return {
            "median_ms": self.ms(50),
            "p10_ms": self.ms(10),
            "p90_ms": self.ms(90),
            "steps": len(self.samples),
            "block_medians_ms": [float(np.median(b)) / 1e6 for b in self.blocks],
        }


def paired_ratio(num: Timing, den: Timing) -> float:
    """Median over rounds of (num's block median / den's block median of that round).

    Blocks of one round run seconds apart, so load that comes and goes on the
    machine cancels out more than in the ratio of the overall medians.
    """
    return float(
        np.median(
            [np.median(a) / np.median(b) for a, b in zip(num.blocks, den.blocks, strict=True)]
        )
    )


def _timed(step: Callable[[], float]) -> int:
    start = time.perf_counter_ns()
    step()
    return time.perf_counter_ns() - start


def measure(
    contenders: list[Contender], repeat_seconds: float, rounds: int, settle_s: float
) -> dict[str, Timing]:
    """Warm up, then ``rounds`` rounds of one timed block per contender.

    Each contender gets about ``repeat_seconds`` of timed steps in all, and at
    least :data:`MIN_STEPS`. Before a block: a pause of ``settle_s`` (the other
    library's worker threads finish spinning) and one untimed step.
    """
    # the fastest warm-up step estimates the step time (slow ones are noise)
    estimate = {c.name: min(_timed(c.step) for _ in range(WARMUP_STEPS)) / 1e9 for c in contenders}
    per_round = {
        name: max(math.ceil(MIN_STEPS / rounds), math.ceil(repeat_seconds / rounds / est))
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
    """Machine, versions, BLAS libraries and thread counts."""
    blas = _numpy_blas()
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_model(),
            "logical_cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "versions": {
            "gpubackprop": gb.__version__,
            "numpy": np.__version__,
            "torch": None if torch is None else torch.__version__,
            "threadpoolctl": None if threadpoolctl is None else threadpoolctl.__version__,
        },
        "numpy_blas": None
        if blas is None
        else {
            k: blas.get(k)
            for k in ("internal_api", "version", "architecture", "threading_layer", "num_threads")
        },
        "env_vars": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def set_threads(threads: int | None) -> Any:
    """Match torch's thread count to NumPy's BLAS (or set both to ``threads``).

    Returns the threadpoolctl limiter to keep alive (None when nothing was limited).
    """
    limiter = None
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
    if name not in timings:
        return None
    return timings[GB]["median_ms"] / timings[name]["median_ms"]


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
    _print_rows(head, rows)
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
    _print_rows(spread[0], spread[1:])
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


def _print_rows(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    line = " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


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
    if "torch" in env:
        print(f"torch: {env['torch']['blas']} BLAS, {env['torch']['num_threads']} threads")
    if env["env_vars"]:
        print("env: " + " ".join(f"{k}={val}" for k, val in env["env_vars"].items()))


# --- main ----------------------------------------------------------------------------------
def run_network(net: Network, args: argparse.Namespace) -> dict[str, Any]:
    """Build, check and time every contender on one network."""
    load = os.getloadavg()[0]  # other processes on the machine skew every contender
    x, y = make_batch(net, seed=args.seed)
    contenders = [
        gb_contender(net, x, y, args.seed),
        gb_internal_contender(net, x, y, args.seed),
    ]
    init = contenders[0].params()
    if torch is not None:
        contenders.append(torch_contender(net, x, y, init))
    contenders.append(textbook_contender(net, x, y, init))
    check = check_contenders(contenders, init)
    timings = measure(contenders, args.repeat_seconds, args.rounds, args.settle_ms / 1e3)
    return {
        **net.summary(),
        "loadavg_1min_before": load,
        "timings": {name: t.as_dict() for name, t in timings.items()},
        "paired_ratios": {
            name: paired_ratio(timings[GB], t) for name, t in timings.items() if name != GB
        },
        "check": {
            "ok": check.ok,
            "summary": check.summary(),
            "loss_rel": check.loss_rel,
            "update_rel": check.update_rel,
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="", help="comma-separated names (default: all)")
    parser.add_argument(
        "--repeat-seconds",
        type=float,
        default=1.0,
        help=f"timed seconds per contender per network (at least {MIN_STEPS} steps)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--settle-ms",
        type=float,
        default=150.0,
        help="pause before each timed block so idle worker threads stop spinning",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS and torch threads (default: NumPy's BLAS default; torch matches it)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeat_seconds <= 0 or args.settle_ms < 0:
        parser.error("--rounds >= 1, --repeat-seconds > 0 and --settle-ms >= 0 are required")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 if every correctness check passed, 1 if one failed, 2 on bad usage."""
    args = parse_args(argv)
    try:
        networks = get_networks(args.networks)
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
                "warmup_steps": WARMUP_STEPS,
                "repeat_seconds": args.repeat_seconds,
                "rounds": args.rounds,
                "settle_ms": args.settle_ms,
                "seed": args.seed,
            },
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    if limiter is not None:
        limiter.restore_original_limits()
    return 0 if all(r["check"]["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
