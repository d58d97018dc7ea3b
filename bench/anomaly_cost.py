"""What anomaly detection costs per training step on the CPU.

For every network of :mod:`bench.networks`, times ``model.train_step(x, y, loss,
SGD(0.01))`` (float32, CPU) without checks and inside ``gb.detect_anomaly()``,
which checks the input, every layer output, the loss and its gradient, and every
layer's parameter and input gradients (one reduction Σa per array, see
:mod:`gpubackprop.anomaly`). The two variants alternate in rounds; each reports
the median ms per step, and the overhead is

    overhead = median(checked) / median(plain) − 1        (target: < 10 %)

Run from the repository root: ``python bench/anomaly_cost.py [--networks a,b]
[--rounds 7] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gpubackprop as gb
from bench.networks import Network, build_model, get_networks, make_batch


def _block(step: gb.Sequential, x: object, y: object, net: Network,
           opt: gb.optim.Optimizer, steps: int) -> list[float]:
    """ms per step for ``steps`` consecutive steps."""
    times = []
    for _ in range(steps):
        start = time.perf_counter_ns()
        step.train_step(x, y, net.loss, opt)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def measure(net: Network, rounds: int, steps: int) -> tuple[float, float]:
    """(plain, checked) median ms per step, from alternating rounds."""
    model = build_model(net)
    x, y = make_batch(net)
    opt = gb.optim.SGD(0.01)
    plain: list[float] = []
    checked: list[float] = []
    _block(model, x, y, net, opt, 3)  # warm-up: workspaces allocated
    for r in range(rounds):
        for variant in ((0, 1) if r % 2 == 0 else (1, 0)):
            if variant:
                with gb.detect_anomaly():
                    checked += _block(model, x, y, net, opt, steps)
            else:
                plain += _block(model, x, y, net, opt, steps)
    return statistics.median(plain), statistics.median(checked)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"{'network':<14} {'shape':<44} {'plain ms':>9} {'checked ms':>11} {'overhead':>9}")
    for net in get_networks(args.networks):
        plain, checked = measure(net, args.rounds, args.steps)
        print(f"{net.name:<14} {net.describe():<44} {plain:>9.3f} {checked:>11.3f} "
              f"{checked / plain - 1:>+9.1%}")


if __name__ == "__main__":
    main()
