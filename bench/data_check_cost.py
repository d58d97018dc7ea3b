"""What fit's data check (``check_data=True``) costs, against one epoch of training.

Two datasets: the demo's (scikit-learn digits, 1347 x 64 float32, the 64-128-64-10
MLP, batch 32) and a 100 MB one (25,000 x 1,024 standard normal float32, integer
labels, a 1024-128-10 ReLU MLP, batch 256). For each, on the CPU:

* ``check``: :func:`gpubackprop.anomaly.check_finite_input` on x, as ``fit`` runs
  it (blocks of ``DATA_CHECK_BLOCK`` elements into one reused boolean buffer), and
  its peak of new memory (``tracemalloc``: NumPy reports its allocations to it);
* ``isfinite``: ``np.isfinite(x).all()`` on the whole array at once, the same
  pass with a boolean temporary the size of x in elements;
* ``epoch``: one epoch of ``fit(..., check_data=False)``.

Each time is the median of ``--repeat`` runs; the share is check / epoch.
Run from the repository root: ``python bench/data_check_cost.py [--repeat 9]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

import gpubackprop as gb
from gpubackprop.anomaly import check_finite_input


def _median_seconds(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_bytes(run: Callable[[], object]) -> int:
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def _datasets() -> list[tuple[str, np.ndarray, np.ndarray, gb.Sequential, int]]:
    """(name, x, labels, model, batch size) for each dataset."""
    from gpubackprop.demo import DEFAULT_BATCH_SIZE, build_model, load_digits_split

    x_digits, _, y_digits, _ = load_digits_split(0)
    rng = np.random.default_rng(0)
    x_big = rng.standard_normal((25_000, 1_024), dtype=np.float32)
    y_big = rng.integers(0, 10, len(x_big))
    big = gb.Sequential([gb.Dense(1024, 128, "relu"), gb.Dense(128, 10)], device="cpu", seed=0)
    return [
        ("digits (demo)", x_digits, y_digits, build_model("cpu", 0), DEFAULT_BATCH_SIZE),
        ("100 MB", x_big, y_big, big, 256),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    print(f"{'dataset':<14} {'x':>16} {'MB':>6} {'check ms':>9} {'check peak':>11} "
          f"{'isfinite ms':>12} {'isfinite peak':>14} {'epoch s':>8} {'share':>7}")
    for name, x, y, model, batch in _datasets():

        def check(x: np.ndarray = x) -> None:
            check_finite_input(x, "x", caller="fit")

        def whole(x: np.ndarray = x) -> bool:
            return bool(np.isfinite(x).all())

        def epoch(model: gb.Sequential = model, x: np.ndarray = x, y: np.ndarray = y,
                  batch: int = batch) -> None:
            model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.Adam(1e-3),
                      batch_size=batch, verbose=False, check_data=False)

        check_s, whole_s = _median_seconds(check, args.repeat), _median_seconds(whole, args.repeat)
        epoch_s = _median_seconds(epoch, max(1, args.repeat // 3))
        print(f"{name:<14} {x.shape!s:>16} {x.nbytes / 1e6:>6.1f} {check_s * 1e3:>9.3f} "
              f"{_peak_bytes(check) / 1e6:>8.2f} MB {whole_s * 1e3:>12.3f} "
              f"{_peak_bytes(whole) / 1e6:>11.2f} MB {epoch_s:>8.3f} {check_s / epoch_s:>7.2%}")


if __name__ == "__main__":
    main()
