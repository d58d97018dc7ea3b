"""bench/distributed.py: the ring model and its fit, and a tiny whole run (1 and 2 ranks
under mpiexec, the all-reduce sweep, the tables and the JSON), so the bench cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import distributed


def test_ring_model_is_latency_plus_bandwidth_term() -> None:
    # 8 ranks: 14 steps of alpha, 2*7/8 of the bytes over the bandwidth
    assert distributed.ring_allreduce_seconds(8e6, 8, 1e-6, 1e9) == pytest.approx(
        14e-6 + 1.75 * 8e-3
    )
    assert distributed.ring_allreduce_seconds(8e6, 2, 0.0, 1e9) == pytest.approx(8e-3)
    assert distributed.ring_allreduce_seconds(8e6, 1, 1e-6, 1e9) == 0.0


def test_fit_recovers_alpha_and_bandwidth() -> None:
    sizes = distributed.SIZES
    for ranks in (2, 8):
        times = [distributed.ring_allreduce_seconds(b, ranks, 3e-6, 2.5e9) for b in sizes]
        alpha, bandwidth = distributed.fit_ring_model(sizes, times, ranks)
        assert alpha == pytest.approx(3e-6, rel=1e-9)
        assert bandwidth == pytest.approx(2.5e9, rel=1e-9)
        # with alpha given, only B is fitted
        assert distributed.fit_ring_model(sizes[4:], times[4:], ranks, 3e-6) == pytest.approx(
            (3e-6, 2.5e9), rel=1e-9
        )


def test_fit_sweep_takes_beyond_l2_bandwidth_with_the_small_message_alpha() -> None:
    def point(nbytes: int, bandwidth: float) -> dict[str, object]:
        us = 1e6 * distributed.ring_allreduce_seconds(nbytes, 2, 2e-6, bandwidth)
        return {"bytes": nbytes, "mpi": {"median_us": us}}

    sweep = [point(b, 3e9 if b < distributed.LARGE else 1e9) for b in distributed.SIZES]
    fits = distributed.fit_sweep(sweep)
    assert fits["large"]["least_bytes"] == distributed.LARGE
    assert fits["large"]["alpha_s"] == fits["all"]["alpha_s"]
    assert fits["large"]["bandwidth_Bps"] == pytest.approx(1e9, rel=0.05)


def test_paper_model_rows() -> None:
    rows = distributed.paper_rows(distributed.get_networks("mnist-mlp,wide-b512,seed-2layer"))
    assert [(r[0], r[2]) for r in rows] == [
        (net, link.name) for net in ("mnist-mlp", "wide-b512") for link in distributed.LINKS
    ]
    # mnist-mlp: 669,706 float32 parameters; 14 us + 1.75 * 2,678,824 B / 370 GB/s = 27 us
    assert rows[0][1] == "2.55 MiB" and rows[0][5] == "27" and rows[0][7] == "84%"


def test_sizes_bytes_and_iterations() -> None:
    assert distributed.SIZES[0] == 4096 and distributed.SIZES[-1] == 64 << 20
    assert all(b == 4 * a for a, b in zip(distributed.SIZES, distributed.SIZES[1:], strict=False))
    assert distributed.parse_bytes("256K") == 256 << 10
    assert distributed.parse_bytes("4m") == 4 << 20 and distributed.parse_bytes("123") == 123
    assert distributed.format_bytes(256 << 10) == "256 KiB"
    assert distributed.format_bytes(2678824) == "2.55 MiB"
    assert distributed.iterations_for(4096, 1000) == 1000
    assert distributed.iterations_for(1 << 20, 1000) == 62
    assert distributed.iterations_for(64 << 20, 1000) == 10


needs_mpi = pytest.mark.skipif(
    distributed.find_mpiexec() is None, reason="no mpiexec: pip install 'gpubackprop[mpi]'"
)


@needs_mpi
def test_tiny_run_prints_tables_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mpi4py")
    out = tmp_path / "distributed.json"
    argv = ["--quick", "--networks", "seed-2layer", "--max-bytes", "16K", "--iterations", "10",
            "--window-seconds", "0.01", "--rounds", "2", "--buckets", "1G", "--json", str(out)]
    assert distributed.main(argv) == 0
    printed = capsys.readouterr().out
    for words in ("1 process x 2 threads", "2 ranks x 1 thread, overlap, buckets 1 GiB",
                  "ring model fitted", "hidden", "not hidden by backward", f"wrote {out}"):
        assert words in printed
    results = json.loads(out.read_text())["results"]
    net = results["ranks"]["networks"]["seed-2layer"]
    assert net["ranks_identical"] and net["gradient_bytes"] == 4 * net["parameters"]
    assert set(net["steps"]) == {"overlap", "after", "overlap, buckets 1 GiB", "compute only"}
    assert net["buckets"]["overlap, buckets 1 GiB"] == 1
    assert net["allreduce_bucketed"]["mean_us"] > 0
    assert set(net["exposed"]) == set(net["steps"]) - {"compute only"}
    assert all(v["median_ms"] > 0 for v in net["exposed"].values())
    assert [p["bytes"] for p in results["ranks"]["sweep"]] == [4096, 16384]
    assert results["fits"]["all"]["bandwidth_Bps"] > 0 and "large" not in results["fits"]
    for key in ("1x1", "1x2"):
        assert results["single"][key]["seed-2layer"]["median_ms"] > 0
