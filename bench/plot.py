"""Bar chart of a ``bench/gpu_step.py`` results file.

``plot_results(json_path, png_path)`` draws one group of bars per network, one
bar per contender (median ms per training step, log scale, p10–p90 whiskers),
titled with the device and the date. Only the JSON is read (no GPU, no
gpubackprop import), so a results file fetched from a GPU machine can be
plotted anywhere: ``python bench/plot.py RESULTS.json [OUT.png]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: bar colours per contender key (unknown keys get matplotlib's cycle)
COLORS = {
    "gbp_eager": "#9ecae1",
    "gbp_captured": "#08519c",
    "torch_eager": "#fdae6b",
    "torch_graph": "#d94801",
    "jax_jit": "#74c476",
    "gemm_floor": "#636363",
    "gbp_tf32_captured": "#6a51a3",
    "torch_tf32_eager": "#fdd0a2",
    "torch_tf32_graph": "#a63603",
}


def _bars(results: list[dict[str, Any]]) -> list[str]:
    """Contender keys that have a timing on at least one network, in file order."""
    keys: list[str] = []
    for r in results:
        for key, entry in r["contenders"].items():
            if entry.get("median_ms") is not None and key not in keys:
                keys.append(key)
    return keys


def plot_results(json_path: str | Path, png_path: str | Path) -> Path:
    """Write the grouped, log-scale bar chart of ``json_path`` to ``png_path``; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    payload = json.loads(Path(json_path).read_text(encoding="utf-8"))
    results = payload["results"]
    networks = [r["network"] for r in results]
    keys = _bars(results)
    width = 0.8 / max(len(keys), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.9 * len(networks) + 2.5), 5.5))
    for i, key in enumerate(keys):
        xs, heights, low, high = [], [], [], []
        label = key
        eager_floor = False
        for j, r in enumerate(results):
            entry = r["contenders"].get(key)
            if not entry or entry.get("median_ms") is None:
                continue
            label = entry.get("label", key)
            eager_floor = eager_floor or entry.get("mode") == "eager"
            median = float(entry["median_ms"])
            xs.append(j - 0.4 + width * (i + 0.5))
            heights.append(median)
            low.append(max(median - float(entry.get("p10_ms") or median), 0.0))
            high.append(max(float(entry.get("p90_ms") or median) - median, 0.0))
        if eager_floor:
            label += " (eager on some)"
        bars = ax.bar(
            xs,
            heights,
            width,
            label=label,
            color=COLORS.get(key),
            yerr=[low, high],
            capsize=2,
            error_kw={"elinewidth": 0.8},
        )
        for bar, value in zip(bars, heights, strict=True):
            ax.annotate(
                f"{value:.3g}",
                (bar.get_x() + bar.get_width() / 2, value),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=6,
                rotation=90,
            )
    ax.set_yscale("log")
    ax.set_xticks(range(len(networks)), networks)
    ax.set_xlim(-0.6, len(networks) - 0.4)
    ax.set_ylabel("ms per training step (median; whiskers p10–p90)")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.set_axisbelow(True)
    device = payload.get("device", {}).get("name", "unknown device")
    date = str(payload.get("date", ""))[:10]
    ax.set_title(f"One training step, float32 (TF32 only in the tf32 bars): {device}, {date}")
    ax.legend(fontsize=8, ncol=min(len(keys), 3) or 1, loc="upper left")
    fig.tight_layout()
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot a bench/gpu_step.py results file.")
    parser.add_argument("json", type=Path, help="results JSON written by gpu_step.py")
    parser.add_argument("png", type=Path, nargs="?", help="output (default: JSON path, .png)")
    args = parser.parse_args(argv)
    out = plot_results(args.json, args.png or args.json.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
