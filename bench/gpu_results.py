"""The GPU benchmark's results: contender keys, JSON entries, ratios, targets, tables.

Pure functions of the measured numbers (no GPU, no gpubackprop model): what
``gpu_step.py`` prints and writes, and what ``plot.py`` and the tests read.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.common import format_table, ratio, summarize_checks
from bench.networks import Network

SCHEMA = "gpubackprop.bench.gpu_step/1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

GBP_EAGER = "gbp_eager"
GBP_CAPTURED = "gbp_captured"
TORCH_EAGER = "torch_eager"
TORCH_GRAPH = "torch_graph"
JAX_JIT = "jax_jit"
GEMM_FLOOR = "gemm_floor"
GBP_TF32 = "gbp_tf32_captured"
TORCH_TF32_EAGER = "torch_tf32_eager"
TORCH_TF32_GRAPH = "torch_tf32_graph"
#: the float32 contenders (TF32 off), in table order
CONTENDERS: tuple[str, ...] = (
    GBP_EAGER,
    GBP_CAPTURED,
    TORCH_EAGER,
    TORCH_GRAPH,
    JAX_JIT,
    GEMM_FLOOR,
)
#: the TF32 rows, run on :data:`TF32_NETWORKS` only
TF32_CONTENDERS: tuple[str, ...] = (GBP_TF32, TORCH_TF32_EAGER, TORCH_TF32_GRAPH)
ALL_CONTENDERS: tuple[str, ...] = CONTENDERS + TF32_CONTENDERS
TF32_NETWORKS: tuple[str, ...] = ("wide-b512", "wide")
LABELS: dict[str, str] = {
    GBP_EAGER: "gbp eager",
    GBP_CAPTURED: "gbp captured",
    TORCH_EAGER: "torch eager",
    TORCH_GRAPH: "torch graph",
    JAX_JIT: "jax jit",
    GEMM_FLOOR: "GEMM floor",
    GBP_TF32: "gpubackprop tf32 (captured)",
    TORCH_TF32_EAGER: "torch tf32 eager",
    TORCH_TF32_GRAPH: "torch tf32 graph",
}
#: the peers the captured step is measured against ("best peer" = the faster one)
PEERS: tuple[str, ...] = (TORCH_GRAPH, JAX_JIT)
#: PyTorch's TF32 steps (the TF32 row is measured against the faster one)
TF32_PEERS: tuple[str, ...] = (TORCH_TF32_EAGER, TORCH_TF32_GRAPH)
#: contenders whose failure makes the run fail (a peer's failure is only reported)
OWN: tuple[str, ...] = (GBP_EAGER, GBP_CAPTURED, GBP_TF32)

CAPTURED_BEST_PEER = "captured/best-peer"
CAPTURED_TORCH_GRAPH = "captured/torch-graph"
CAPTURED_FLOOR = "captured/GEMM-floor"
EAGER_TORCH_EAGER = "eager/torch-eager"
TF32_TORCH_TF32 = "tf32/torch-tf32"
#: the float32 ratios of the summary table
MAIN_RATIOS: tuple[str, ...] = (
    CAPTURED_BEST_PEER,
    CAPTURED_TORCH_GRAPH,
    CAPTURED_FLOOR,
    EAGER_TORCH_EAGER,
)
RATIOS: tuple[str, ...] = (*MAIN_RATIOS, TF32_TORCH_TF32)

_SMALL = ("seed-2layer", "mnist-mlp", "deep-narrow")
#: network -> [(ratio, upper bound)]: the targets printed as PASS / MISS
TARGETS: dict[str, list[tuple[str, float]]] = {
    **{n: [(CAPTURED_BEST_PEER, 0.6), (EAGER_TORCH_EAGER, 0.7)] for n in _SMALL},
    **{
        n: [(CAPTURED_BEST_PEER, 1.0), (CAPTURED_FLOOR, 1.02), (TF32_TORCH_TF32, 1.0)]
        for n in TF32_NETWORKS
    },
    "lstm-lm": [(CAPTURED_TORCH_GRAPH, 1.0)],
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
    for key in ALL_CONTENDERS:
        entry = contenders.get(key)
        ok = entry is not None and entry.get("status") == "ok"
        out[key] = float(entry["median_ms"]) if ok and entry.get("median_ms") else None
    return out


def _fastest(times: Mapping[str, float | None], keys: Sequence[str]) -> float | None:
    return min((t for k in keys if (t := times.get(k)) is not None), default=None)


def compute_ratios(times: Mapping[str, float | None]) -> dict[str, float | None]:
    """The ratios of :data:`RATIOS` from median times (None where a side is missing).

    Best peer is the faster of torch graph and jax jit (whichever ran); the TF32
    row is divided by the faster of torch's TF32 eager and graph steps.
    """
    return {
        CAPTURED_BEST_PEER: ratio(times.get(GBP_CAPTURED), _fastest(times, PEERS)),
        CAPTURED_TORCH_GRAPH: ratio(times.get(GBP_CAPTURED), times.get(TORCH_GRAPH)),
        CAPTURED_FLOOR: ratio(times.get(GBP_CAPTURED), times.get(GEMM_FLOOR)),
        EAGER_TORCH_EAGER: ratio(times.get(GBP_EAGER), times.get(TORCH_EAGER)),
        TF32_TORCH_TF32: ratio(times.get(GBP_TF32), _fastest(times, TF32_PEERS)),
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
    for name, bound in TARGETS.get(network, []):
        value = ratios.get(name)
        if value is None:
            verdict, why = "n/a", "not measured"
        elif name == CAPTURED_FLOOR and floor_mode != "graph":
            verdict, why = "n/a", "GEMM floor not captured"
        else:
            verdict, why = ("PASS" if value <= bound else "MISS"), ""
        rows.append({"ratio": name, "bound": bound, "value": value, "verdict": verdict, "why": why})
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


def check_summary(
    contenders: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = ALL_CONTENDERS
) -> str:
    """The check cell of ``keys``: ``ok (max loss 1e-07, dW 2e-05)`` or ``FAIL: torch graph``."""
    return summarize_checks(
        {LABELS[k]: e["check"] for k, e in contenders.items() if k in keys and e.get("check")}
    )


MAIN_HEAD = [
    "network",
    *(f"{LABELS[k]} ms" for k in CONTENDERS),
    *MAIN_RATIOS,
    "check",
]
TF32_HEAD = [
    "network",
    *(f"{LABELS[k]} ms" for k in TF32_CONTENDERS),
    TF32_TORCH_TF32,
    "tf32 check",
]


def table_rows(results: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The float32 summary table's rows (see :data:`MAIN_HEAD`)."""
    rows = []
    for r in results:
        c = r["contenders"]
        rows.append(
            [r["network"]]
            + [format_ms(c.get(k)) for k in CONTENDERS]
            + [format_ratio(r["ratios"].get(k)) for k in MAIN_RATIOS]
            + [check_summary(c, CONTENDERS)]
        )
    return rows


def tf32_rows(results: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The TF32 table's rows (see :data:`TF32_HEAD`), for networks that have TF32 rows."""
    rows = []
    for r in results:
        c = r["contenders"]
        if not any(k in c for k in TF32_CONTENDERS):
            continue
        rows.append(
            [r["network"]]
            + [format_ms(c.get(k)) for k in TF32_CONTENDERS]
            + [format_ratio(r["ratios"].get(TF32_TORCH_TF32)), check_summary(c, TF32_CONTENDERS)]
        )
    return rows


def detail_rows(results: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Per contender: median, p10, p90, blocks, TFLOP/s, clock, check, note."""
    rows = []
    for r in results:
        for key in ALL_CONTENDERS:
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
        for key in ALL_CONTENDERS:
            e = r["contenders"].get(key)
            if e is not None and e.get("status") != "ok" and e.get("error"):
                lines.append(f"{r['network']} / {e['label']}: {e['status']}: {e['error']}")
    return lines


def report(results: Sequence[Mapping[str, Any]]) -> str:
    """The printed report: details, what did not run, then the summary and targets last
    (a log cut to its tail keeps the summary)."""
    parts = [format_table(DETAIL_HEAD, detail_rows(results))]
    errors = error_lines(results)
    if errors:
        parts.append("not run / failed:\n" + "\n".join("  " + e for e in errors))
    parts.append(format_table(MAIN_HEAD, table_rows(results)))
    tf32 = tf32_rows(results)
    if tf32:
        title = "TF32 (target: tf32 <= 1.0x the faster torch TF32 step):\n"
        parts.append(title + format_table(TF32_HEAD, tf32))
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
    ordered = {k: dict(contenders[k]) for k in ALL_CONTENDERS if k in contenders}
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
    """:func:`validate_payload`, then ``common.write_json``."""
    validate_payload(payload)
    common.write_json(path, payload)


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
