"""Data-parallel training on the CPU: steps per second and parallel efficiency, the
all-reduce time against message size, and what overlapping the all-reduce with
backward gains.

``python bench/distributed.py [--quick] [--networks mnist-mlp,wide-b512] [--async-progress]``
runs sub-runs of itself under ``mpiexec`` (one BLAS thread per rank unless said),
prints the tables and writes ``bench/results/distributed-cpu.json``:

1. **Steps per second** of training steps on the same global batch (the network's
   batch, :mod:`bench.networks`), float32, plain SGD: one process with 1 and with 2
   BLAS threads (``model.step`` on the whole batch) against 2 ranks with 1 thread each
   (``comm.train_step`` on each rank's shard, the step ``fit`` takes), with the
   all-reduce overlapped with backward (``overlap``, several ``bucket_bytes``) or
   after it (``after``), and 2 ranks without any all-reduce (``compute only``: the
   floor). Warm-up, then rounds of timed windows (the variants rotated each round,
   a barrier before each window, the slower rank's time): the median per step.
   Parallel efficiency = (t_1x1 / t) / 2. After the timed steps the ranks' parameters
   must be bit-identical, or the bench fails.
2. **All-reduce time against message size** (float32 buffers of 4 KiB to 64 MiB,
   powers of 4), osu_allreduce's loop: warm-up calls, then each call timed alone with
   a barrier after it; the mean per call averaged over the ranks (osu's "Avg
   Latency") and the median of the slower rank's call. Both MPI's own
   ``Allreduce(IN_PLACE, buf)`` and gpubackprop's ``comm.transport.sum_now(buf)``.
   A least-squares fit of the ring model t = 2(n−1)·α + 2(n−1)/n · bytes / B to
   MPI's medians (relative errors) gives the latency α and the bandwidth B.
3. **The overlap gain**: per network, the all-reduce of its whole gradient alone
   (``comm.allreduce_gradients``, bucketed as in a step, and one message), what the
   fitted model predicts for it, and the step with overlap against after backward.

``--async-progress`` adds a 2-rank run with ``MPICH_ASYNC_PROGRESS=1`` (MPICH moves
non-blocking collectives on a thread of its own; needs MPI_THREAD_MULTIPLE, which
mpi4py asks for). GPUs are not measured here: the NCCL path needs GPUs, one per rank
(docs/scaling.md has the model for 8 GPUs).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Import the checkout's gpubackprop (and bench.*) even when run as a script.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import gpubackprop as gb  # noqa: E402
from bench.common import (  # noqa: E402
    LR,
    bench_parser,
    core_versions,
    format_table,
    host_environment,
    resolve_quick,
    summarize,
    write_json,
)
from bench.networks import NETWORKS, Network, build_model, get_networks, make_batch  # noqa: E402
from gpubackprop.distributed import DEFAULT_BUCKET_BYTES  # noqa: E402
from gpubackprop.distributed.transport import find_mpiexec  # noqa: E402

PROG = "python bench/distributed.py"
RESULTS = _ROOT / "bench" / "results" / "distributed-cpu.json"
KIB, MIB = 1 << 10, 1 << 20
#: the message sizes of the all-reduce sweep: 4 KiB, 16 KiB, ..., 64 MiB
SIZES = [4 * KIB * 4**k for k in range(8)]
#: the 2-rank sub-run: the first processes' rank count
RANKS = 2
#: the smallest message of the second fit: 2 ranks' buffers beyond this machine's L2
#: (2 MiB per core), where the bandwidth drops
LARGE = 4 * MIB


@dataclasses.dataclass(frozen=True)
class Link:
    """An interconnect of the paper model (assumed figures, not measured here).

    Attributes:
        name: what it is.
        ranks: GPUs in the ring.
        alpha: latency of one of the ring's 2(n−1) steps (s).
        bandwidth: the bus bandwidth B of the ring model (bytes/s).
        source: where the figures come from.
    """

    name: str
    ranks: int
    alpha: float
    bandwidth: float
    source: str


#: docs/scaling.md's interconnects: 8 H100/H200 over NVLink 4 (NCCL ring bus bandwidth
#: ~370 GB/s of the 450 GB/s line rate per direction, NVIDIA/nccl-tests#212; a tiny
#: all-reduce on 8 NVLink GPUs takes 12-17 us, deepseek-ai/DeepEP#303), and 8 GPUs one
#: per host over 100 Gb/s Ethernet (12.5 GB/s line rate at an assumed 80 %, RoCE, an
#: assumed 10 us per step)
LINKS = (
    Link("NVLink 4, 8 GPUs", 8, 1e-6, 370e9, "nccl-tests ring busbw; DeepEP#303 latency"),
    Link("100 Gb/s Ethernet, 8 hosts", 8, 10e-6, 0.8 * 12.5e9, "assumed 80% of line rate"),
)
#: measured GPU step times (ms) on an H100 (shared/GPU-NOTES.md: PyTorch CUDA-graph
#: replay of the same networks and batches; gpubackprop's own GPU step is not yet
#: measured): the compute that the all-reduce is set against
GPU_STEP_MS = {"mnist-mlp": 0.142, "wide-b512": 1.001}
#: the share of a step's compute that backward is (2 of the 3 GEMMs per layer): the
#: most of the all-reduce that overlap can hide
BACKWARD_SHARE = 2 / 3
FULL = {"window_seconds": 0.5, "rounds": 3, "warmup": 2, "launches": 3, "max_bytes": 64 * MIB,
        "iterations": 1000, "buckets": "256K,4M,1G"}
QUICK = {"window_seconds": 0.1, "rounds": 3, "warmup": 1, "launches": 1, "max_bytes": 4 * MIB,
         "iterations": 50, "buckets": "1G"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every sub-run is told (passed to it as JSON).

    Attributes:
        networks: comma-separated names from :data:`bench.networks.NETWORKS`.
        seed: seeds the batch and the weights.
        window_seconds: the length of one timed window of steps.
        rounds: timed windows per variant in each sub-run.
        warmup: untimed steps per variant first.
        launches: how many times each configuration's sub-run is started, the
            configurations in turn, so that load from elsewhere on the machine falls on
            all of them alike; the windows of all launches are pooled.
        collectives: whether the 2-rank sub-run times the all-reduces (the first
            launch does; the others time steps only).
        max_bytes: the largest message of the all-reduce sweep (0: no sweep).
        iterations: osu's iteration count for the small messages (fewer for large
            ones: :func:`iterations_for`).
        buckets: ``bucket_bytes`` values tried with overlap besides the default.
    """

    networks: str
    seed: int
    window_seconds: float
    rounds: int
    warmup: int
    launches: int
    collectives: bool
    max_bytes: int
    iterations: int
    buckets: tuple[int, ...]


# --- the ring model ------------------------------------------------------------------------
def ring_allreduce_seconds(nbytes: float, ranks: int, alpha: float, bandwidth: float) -> float:
    """The ring all-reduce's time t = 2(n−1)·α + 2(n−1)/n · bytes / B (n ranks, α the
    latency of one of the 2(n−1) steps in seconds, B the bandwidth in bytes/s)."""
    if ranks < 2:
        return 0.0
    return 2 * (ranks - 1) * alpha + 2 * (ranks - 1) / ranks * nbytes / bandwidth


def fit_ring_model(
    nbytes: Sequence[float], seconds: Sequence[float], ranks: int, alpha: float | None = None
) -> tuple[float, float]:
    """(α, B) of :func:`ring_allreduce_seconds` fitted to measured points by least
    squares on the relative error Σ ((2(n−1)α + x/B − t) / t)², x = 2(n−1)/n · bytes,
    so that the small messages count as much as the large ones. With ``alpha`` given,
    only B is fitted."""
    t = np.asarray(seconds, dtype=np.float64)
    x = 2 * (ranks - 1) / ranks * np.asarray(nbytes, dtype=np.float64)
    if alpha is not None:
        residual = 1 - 2 * (ranks - 1) * alpha / t
        return alpha, float(np.sum((x / t) ** 2) / np.sum(x / t * residual))
    design = np.stack([np.full_like(x, 2 * (ranks - 1)), x], axis=1) / t[:, None]
    (fitted, inverse_bandwidth), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    return float(fitted), float(1 / inverse_bandwidth)


def parse_bytes(text: str) -> int:
    """``"256K"`` -> 262144, ``"4M"``, ``"1G"``, or a plain byte count."""
    text = text.strip().upper()
    scale = {"K": KIB, "M": MIB, "G": 1 << 30}.get(text[-1:], 1)
    return int(text[:-1] if scale > 1 else text) * scale


def format_bytes(nbytes: float) -> str:
    """262144 -> ``256 KiB``; 2678824 -> ``2.55 MiB``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", KIB)):
        if nbytes >= size:
            value = nbytes / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.3g} {unit}"
    return f"{nbytes:.0f} B"


def iterations_for(nbytes: int, small: int) -> int:
    """osu's rule of fewer iterations for large messages: ``small`` up to 64 KiB, then
    in proportion to 1/bytes (at least 10)."""
    return max(10, min(small, small * 64 * KIB // nbytes))


def paper_rows(networks: Sequence[Network]) -> list[list[str]]:
    """The paper model per network and link: gradient bytes (float32), the all-reduce
    time t_ar of :func:`ring_allreduce_seconds`, the GPU step t_c (:data:`GPU_STEP_MS`),
    and the parallel efficiency t_c / (t_c + t_ar) without overlap and
    t_c / (t_c + max(0, t_ar − f·t_c)) with ideal overlap (f = :data:`BACKWARD_SHARE`);
    each GPU runs the network's batch (8× the global batch)."""
    rows = []
    for net in networks:
        if net.name not in GPU_STEP_MS:
            continue
        nbytes, compute = 4 * net.num_parameters, GPU_STEP_MS[net.name] / 1e3
        for link in LINKS:
            t = ring_allreduce_seconds(nbytes, link.ranks, link.alpha, link.bandwidth)
            hidden = compute + max(0.0, t - BACKWARD_SHARE * compute)
            rows.append([
                net.name, format_bytes(nbytes), link.name, f"{1e6 * link.alpha:.0f}",
                f"{link.bandwidth / 1e9:.0f}", f"{1e6 * t:.0f}", f"{1e6 * compute:.0f}",
                f"{compute / (compute + t):.0%}", f"{compute / hidden:.0%}",
            ])
    return rows


EXPOSED_HEAD = ["network", "variant", "buckets", "exposed ms", "p10 ms", "all-reduce ms",
                "hidden"]


def exposed_rows(ranks: dict[str, Any], label: str = "") -> list[list[str]]:
    """Per network and variant: the all-reduce time not hidden by backward (median, p10),
    the gradient's all-reduce alone, and hidden = 1 − exposed / exposed after backward."""
    rows = []
    for name, run in ranks["networks"].items():
        exposed = run.get("exposed")
        if not exposed:
            continue
        after = exposed["after"]["median_ms"]
        for variant, timing in exposed.items():
            rows.append([
                name + label, variant, str(run["buckets"][variant]),
                f"{timing['median_ms']:.2f}", f"{timing['p10_ms']:.2f}",
                f"{run['allreduce_bucketed']['median_us'] / 1e3:.2f}",
                f"{1 - timing['median_ms'] / after:.0%}",
            ])
    return rows


PAPER_HEAD = ["network", "gradient", "link", "alpha us", "B GB/s", "all-reduce us",
              "GPU step us", "efficiency", "with overlap"]


# --- timing (inside a sub-run) ----------------------------------------------------------
def time_variants(
    steps: dict[str, Callable[[], object]], settings: Settings, comm: Any = None
) -> dict[str, dict[str, Any]]:
    """Each step's time: warm-up, then ``settings.rounds`` windows per variant (the order
    rotated each round; with ``comm``, a barrier before each window and the slower
    rank's time). The window holds as many steps as fit ``window_seconds`` for the
    slowest variant's warm-up step."""
    slowest = 0.0
    for step in steps.values():
        for _ in range(settings.warmup):
            step()
        started = time.perf_counter()
        step()
        slowest = max(slowest, time.perf_counter() - started)
    count = max(1, round(settings.window_seconds / slowest))
    if comm is not None:
        count = comm.broadcast_object(count)
    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(settings.rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            if comm is not None:
                comm.barrier()
            started = time.perf_counter()
            for _ in range(count):
                steps[name]()
            elapsed = time.perf_counter() - started
            if comm is not None:
                elapsed = comm.max(elapsed)
            samples[name].append(1e3 * elapsed / count)
    return {name: {"steps_per_window": count, **summarize(samples[name])} for name in names}


def osu_loop(call: Callable[[], object], comm: Any, iterations: int) -> dict[str, float]:
    """osu_allreduce's loop: ``iterations // 10`` (at least 2) untimed calls, then
    ``iterations`` calls, each timed alone with a barrier after it. Returns the mean
    per call averaged over the ranks (osu's "Avg Latency"), its minimum and maximum
    over the ranks, and the median over calls of the slower rank's time (µs)."""
    times = np.empty(iterations)
    for index in range(-max(2, iterations // 10), iterations):
        started = time.perf_counter()
        call()
        elapsed = time.perf_counter() - started
        if index >= 0:
            times[index] = elapsed
        comm.barrier()
    means = comm.mpi_comm.allgather(float(times.mean()))
    slower = times.copy()
    comm.mpi_comm.Allreduce(comm.mpi.IN_PLACE, slower, comm.mpi.MAX)
    return {
        "mean_us": 1e6 * float(np.mean(means)),
        "min_us": 1e6 * min(means),
        "max_us": 1e6 * max(means),
        "median_us": 1e6 * float(np.median(slower)),
        "iterations": iterations,
    }


def single_run(settings: Settings) -> dict[str, Any]:
    """One process: ``model.step`` on the whole batch, per network."""
    results = {}
    for net in get_networks(settings.networks, NETWORKS):
        model = build_model(net, seed=settings.seed)
        x, y = make_batch(net, settings.seed)
        batch = model.prepare_batch(x, y, net.loss)
        optimizer = gb.optim.SGD(LR)
        timings = time_variants({"step": functools.partial(model.step, batch, optimizer)}, settings)
        results[net.name] = {"parameters": model.num_parameters, **timings["step"]}
    return results


def parameters_digest(model: gb.Sequential) -> str:
    """A hash of the model's parameters' bytes (bit-identical ranks give the same)."""
    return hashlib.sha256(np.ascontiguousarray(model.flat_params).tobytes()).hexdigest()


@dataclasses.dataclass
class RankVariant:
    """One 2-rank variant of the step: its own model (so its own bucket plan), this
    rank's shard of the batch, its optimizer, its weight B_r / B and whether the
    all-reduce overlaps backward."""

    comm: Any
    model: gb.Sequential
    batch: Any
    optimizer: Any
    weight: float
    overlap: bool
    row_offset: int

    def step(self) -> object:
        """``comm.train_step`` with ``comm.overlap`` set for this variant first."""
        self.comm.overlap = self.overlap
        return self.comm.train_step(
            self.model, self.batch, self.optimizer, self.weight, self.row_offset
        )

    def exposed_seconds(self) -> float:
        """One step as ``comm.train_step`` takes it, made of the same public pieces, that
        returns the time spent in communication calls that backward's arithmetic did not
        hide: inside ``layer_done`` during backward (scaling a bucket, starting its sum,
        letting MPI progress) plus from the end of backward until every bucket's sum is
        done (all of the all-reduce, after backward)."""
        buckets = self.comm.gradient_buckets(self.model)
        buckets.begin(self.weight)
        inside = [0.0]

        def layer_done(index: int) -> None:
            started = time.perf_counter()
            buckets.layer_done(index)
            inside[0] += time.perf_counter() - started

        self.model.loss_and_grad_batch(self.batch, layer_done if self.overlap else None)
        started = time.perf_counter()
        if not self.overlap:
            buckets.start_all()
        buckets.finish()
        exposed = inside[0] + time.perf_counter() - started
        self.optimizer.step(self.model.flat_params, self.model.flat_grads)
        return exposed


def rank_variants(
    net: Network, comm: Any, settings: Settings
) -> tuple[dict[str, RankVariant], Callable[[], object]]:
    """The 2-rank variants of a step on ``net`` (overlap and after with the default
    buckets, overlap with each of ``settings.buckets``) and the compute-only step (its
    own model, no all-reduce)."""
    x, y = make_batch(net, settings.seed)
    start, stop = comm.shard(net.batch)
    plans = {"overlap": (True, DEFAULT_BUCKET_BYTES), "after": (False, DEFAULT_BUCKET_BYTES)}
    for size in settings.buckets:
        plans[f"overlap, buckets {format_bytes(size)}"] = (True, size)
    variants = {}
    for name, (overlap, bucket_bytes) in plans.items():
        model = build_model(net, seed=settings.seed)
        batch = model.prepare_batch(x[start:stop], y[start:stop], net.loss)
        comm.bucket_bytes = bucket_bytes  # read when the model's buckets are planned
        comm.gradient_buckets(model)
        variants[name] = RankVariant(comm, model, batch, gb.optim.SGD(LR),
                                     (stop - start) / net.batch, overlap, start)
    alone = build_model(net, seed=settings.seed)
    alone_batch = alone.prepare_batch(x[start:stop], y[start:stop], net.loss)
    return variants, functools.partial(alone.step, alone_batch, gb.optim.SGD(LR))


def exposed_allreduce(
    comm: Any, variants: dict[str, RankVariant], settings: Settings
) -> dict[str, dict[str, float]]:
    """Per variant, the all-reduce time not hidden by backward (:meth:`RankVariant.
    exposed_seconds`) over ``settings.rounds`` × 3 steps, the variants in turn, a
    barrier before each step. Per step the smaller rank's time counts (the other rank
    also waits for the slower rank's backward); reported: its median and p10 (ms)."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(3 * settings.rounds):
        for name, variant in variants.items():
            comm.barrier()
            samples[name].append(1e3 * -comm.max(-variant.exposed_seconds()))
    return {name: summarize(values, keep_samples=False) for name, values in samples.items()}


def gradient_allreduce(comm: Any, model: gb.Sequential, settings: Settings) -> dict[str, Any]:
    """The all-reduce of ``model``'s whole gradient alone: bucketed as in a step
    (``comm.allreduce_gradients``) and as one message (``comm.transport.sum_now``)."""
    model.flat_grads.fill(0)  # summing zeros over and over: the values stay finite
    iterations = iterations_for(model.flat_grads.nbytes, settings.iterations)
    return {
        "allreduce_bucketed": osu_loop(lambda: comm.allreduce_gradients(model), comm, iterations),
        "allreduce_one_message": osu_loop(
            lambda: comm.transport.sum_now(model.flat_grads), comm, iterations
        ),
    }


def allreduce_point(comm: Any, nbytes: int, settings: Settings) -> dict[str, Any]:
    """One size of the sweep: MPI's ``Allreduce(IN_PLACE)`` and gpubackprop's
    ``comm.transport.sum_now`` on a float32 buffer of ``nbytes`` (zeros)."""
    buffer = np.zeros(nbytes // 4, dtype=np.float32)
    iterations = iterations_for(nbytes, settings.iterations)
    mpi = comm.mpi
    return {
        "bytes": nbytes,
        "mpi": osu_loop(lambda: comm.mpi_comm.Allreduce(mpi.IN_PLACE, buffer, mpi.SUM),
                        comm, iterations),
        "gpubackprop": osu_loop(lambda: comm.transport.sum_now(buffer), comm, iterations),
    }


def ranks_run(settings: Settings) -> dict[str, Any] | None:
    """The 2-rank sub-run: the step variants and the gradient all-reduce per network,
    then the all-reduce sweep. Returns the results on rank 0 (None elsewhere)."""
    comm = gb.distributed.init("mpi")
    networks: dict[str, Any] = {}
    for net in get_networks(settings.networks, NETWORKS):
        variants, compute_only = rank_variants(net, comm, settings)
        steps = {name: variant.step for name, variant in variants.items()}
        timings = time_variants({**steps, "compute only": compute_only}, settings, comm)
        exposed = exposed_allreduce(comm, variants, settings) if settings.collectives else None
        digests = {
            name: comm.mpi_comm.allgather(parameters_digest(v.model))
            for name, v in variants.items()
        }
        unequal = [name for name, seen in digests.items() if len(set(seen)) != 1]
        if unequal:
            raise RuntimeError(f"{net.name}: the ranks' parameters differ after {unequal}")
        model = variants["overlap"].model
        networks[net.name] = {
            "parameters": model.num_parameters,
            "gradient_bytes": model.flat_grads.nbytes,
            "buckets": {
                name: len(comm.gradient_buckets(v.model).buckets) for name, v in variants.items()
            },
            "steps": timings,
            "ranks_identical": True,
        }
        if settings.collectives:
            networks[net.name]["exposed"] = exposed
            networks[net.name].update(gradient_allreduce(comm, model, settings))
    sweep = [] if not settings.collectives else [
        allreduce_point(comm, nbytes, settings) for nbytes in SIZES if nbytes <= settings.max_bytes
    ]
    if comm.rank != 0:
        return None
    return {"ranks": comm.size, "networks": networks, "sweep": sweep}


# --- the launcher ---------------------------------------------------------------------------
def launch(
    kind: str, ranks: int, threads: int, settings: Settings, env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> dict[str, Any]:
    """``mpiexec -n ranks python bench/distributed.py --worker kind`` with ``threads``
    BLAS/OpenMP threads per process; returns what its rank 0 wrote."""
    runner = find_mpiexec()
    if runner is None:
        raise RuntimeError("no mpiexec: pip install 'gpubackprop[mpi]' (mpi4py and mpich)")
    threads_env = {name: str(threads) for name in
                   ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    path = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [runner, "-n", str(ranks), sys.executable, str(Path(__file__).resolve()),
                   "--worker", kind, "--out", str(out),
                   "--settings", json.dumps(dataclasses.asdict(settings))]
        done = subprocess.run(
            command, env={**os.environ, **threads_env, **(env or {}), "PYTHONPATH": path},
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command[:6])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}"
            )
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return result


def worker(kind: str, out: Path, settings: Settings) -> None:
    """What a sub-run does: ``single`` (one process) or ``ranks``; rank 0 writes ``out``."""
    result = single_run(settings) if kind == "single" else ranks_run(settings)
    if result is not None:
        out.write_text(json.dumps(result), encoding="utf-8")


# --- tables -------------------------------------------------------------------------------
def step_rows(
    single: dict[str, dict[str, Any]], ranks: dict[str, Any], extra: dict[str, dict[str, Any]]
) -> list[list[str]]:
    """The steps-per-second table: per network, 1×1, 1×2, then each 2-rank variant;
    ``extra`` holds more 2-rank runs by label (``async progress``)."""
    rows = []
    for name, one in single["1x1"].items():
        base = one["median_ms"]
        configs = [("1 process x 1 thread", one), ("1 process x 2 threads", single["1x2"][name])]
        configs += [(f"2 ranks x 1 thread, {v}", t)
                    for v, t in ranks["networks"][name]["steps"].items()]
        for label, run in extra.items():
            configs += [(f"2 ranks x 1 thread, {v} ({label})", t)
                        for v, t in run["networks"][name]["steps"].items()]
        for label, timing in configs:
            speedup = base / timing["median_ms"]
            rows.append([
                name, label, f"{timing['median_ms']:.2f}",
                f"{timing['p10_ms']:.2f}-{timing['p90_ms']:.2f}",
                f"{1e3 / timing['median_ms']:.1f}", f"{speedup:.2f}", f"{speedup / 2:.0%}",
                f"{one['p10_ms'] / timing['p10_ms']:.2f}",
            ])
    return rows


def modelled(nbytes: float, ranks: int, fit: dict[str, float] | None, unit: str) -> str:
    """The fitted ring model's time for ``nbytes`` in ``unit`` (``"us"`` or ``"ms"``),
    or ``-`` without a fit."""
    if fit is None:
        return "-"
    seconds = ring_allreduce_seconds(nbytes, ranks, fit["alpha_s"], fit["bandwidth_Bps"])
    return f"{1e6 * seconds:.1f}" if unit == "us" else f"{1e3 * seconds:.2f}"


def sweep_rows(
    sweep: list[dict[str, Any]], ranks: int, fits: dict[str, dict[str, float]]
) -> list[list[str]]:
    """The all-reduce table: per size, MPI's and gpubackprop's mean and median, the bus
    bandwidth 2(n−1)/n · bytes / t of MPI's median, and the two fits' times."""
    rows = []
    for point in sweep:
        nbytes, mpi, ours = point["bytes"], point["mpi"], point["gpubackprop"]
        bus = 2 * (ranks - 1) / ranks * nbytes / (mpi["median_us"] * 1e-6) / 1e9
        rows.append([
            format_bytes(nbytes), str(mpi["iterations"]), f"{mpi['mean_us']:.1f}",
            f"{mpi['median_us']:.1f}", f"{bus:.2f}", f"{ours['mean_us']:.1f}",
            f"{ours['median_us']:.1f}", f"{ours['median_us'] / mpi['median_us']:.2f}",
            modelled(nbytes, ranks, fits.get("all"), "us"),
            modelled(nbytes, ranks, fits.get("large"), "us"),
        ])
    return rows


def overlap_rows(
    ranks: dict[str, Any], fits: dict[str, dict[str, float]], label: str = ""
) -> list[list[str]]:
    """The overlap table: per network, the gradient, its all-reduce alone (bucketed,
    one message, the model's prediction), the step after backward and with overlap,
    the gain and the share of the all-reduce it hides, and the compute-only step."""
    rows = []
    for name, run in ranks["networks"].items():
        steps = run["steps"]
        after, overlap = steps["after"]["median_ms"], steps["overlap"]["median_ms"]
        alone = run["allreduce_bucketed"]["median_us"] / 1e3
        nbytes, n = run["gradient_bytes"], ranks["ranks"]
        rows.append([
            name + label, format_bytes(run["gradient_bytes"]), str(run["buckets"]["overlap"]),
            f"{alone:.2f}", f"{run['allreduce_one_message']['median_us'] / 1e3:.2f}",
            modelled(nbytes, n, fits.get("all"), "ms"),
            modelled(nbytes, n, fits.get("large"), "ms"),
            f"{steps['compute only']['median_ms']:.2f}", f"{after:.2f}", f"{overlap:.2f}",
            f"{after - overlap:.2f}", f"{(after - overlap) / alone:.0%}",
        ])
    return rows


STEP_HEAD = ["network", "configuration", "ms/step", "p10-p90", "steps/s", "speedup", "efficiency",
             "speedup p10"]
SWEEP_HEAD = ["size", "iters", "MPI mean us", "MPI median us", "bus GB/s", "gb mean us",
              "gb median us", "gb/MPI median", "fit all us", f"fit >={format_bytes(LARGE)} us"]
OVERLAP_HEAD = ["network", "gradient", "buckets", "all-reduce ms", "one message ms", "fit all ms",
                f"fit >={format_bytes(LARGE)} ms", "compute only ms", "after ms", "overlap ms",
                "gain ms", "hidden"]


def report(results: dict[str, Any]) -> str:
    """The printed tables of a whole run's ``results``."""
    single, ranks = results["single"], results["ranks"]
    extra = {label: results[key] for key, label in (("async", "async progress"),) if key in results}
    parts = ["Training steps, the same global batch in every configuration "
             "(speedup over 1 process x 1 thread of the medians; efficiency = speedup / 2; "
             "speedup p10: of the 10th percentiles, the quieter windows):",
             format_table(STEP_HEAD, step_rows(single, ranks, extra))]
    for name, run in ranks["networks"].items():
        two = single["1x2"][name]["median_ms"] / run["steps"]["overlap"]["median_ms"]
        parts.append(f"{name}: 2 ranks x 1 thread (overlap) vs 1 process x 2 threads: {two:.2f}x")
    fits = results["fits"]
    if ranks["sweep"]:
        parts += [
            f"\nAll-reduce of a float32 buffer, {ranks['ranks']} ranks, osu_allreduce's loop "
            "(MPI: Allreduce(IN_PLACE); gb: comm.transport.sum_now):",
            format_table(SWEEP_HEAD, sweep_rows(ranks["sweep"], ranks["ranks"], fits)),
        ]
        parts += [
            f"ring model fitted to MPI's medians from {format_bytes(fit['least_bytes'])} up "
            f"({'alpha and B' if key == 'all' else 'B, with that alpha'}): "
            f"alpha = {1e6 * fit['alpha_s']:.2f} us per step, "
            f"B = {fit['bandwidth_Bps'] / 1e9:.2f} GB/s"
            for key, fit in fits.items()
        ]
    load = ", ".join(f"{key} {' '.join(f'{v:.1f}' for v in values)}"
                     for key, values in results["loadavg_1min_before_launches"].items())
    parts.append(f"1-minute load average before each launch: {load}")
    rows = overlap_rows(ranks, fits)
    for label, run in extra.items():
        rows += overlap_rows(run, fits, f" ({label})")
    parts += ["\nOverlap: the gradient's all-reduce alone against the step with the all-reduce "
              "after backward and overlapped with it (hidden = gain / all-reduce):",
              format_table(OVERLAP_HEAD, rows)]
    exposed = exposed_rows(ranks)
    for label, run in extra.items():
        exposed += exposed_rows(run, f" ({label})")
    if exposed:
        parts += ["\nThe all-reduce not hidden by backward: time in the bucket calls during "
                  "backward plus from its end until every bucket is summed (the smaller "
                  "rank's time per step):",
                  format_table(EXPOSED_HEAD, exposed)]
    paper = paper_rows(get_networks(",".join(ranks["networks"]), NETWORKS))
    if paper:
        parts += ["\nOn paper (not measured here): the ring model on 8 GPUs, assumed links "
                  "(bench/distributed.py LINKS), H100 step times (GPU_STEP_MS), each GPU on "
                  "the network's batch:", format_table(PAPER_HEAD, paper)]
    return "\n".join(parts)


# --- main ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line: the shared options plus the sizes of the windows and the sweep."""
    parser = bench_parser(
        PROG, "Data-parallel training on the CPU: 1 and 2 ranks, all-reduce sweep, overlap.",
        NETWORKS, f"where to write the results (default {RESULTS.relative_to(_ROOT)})",
        "short windows, a sweep up to 4 MiB, fewer iterations (a minute or so)",
    )
    parser.set_defaults(networks="mnist-mlp,wide-b512")
    parser.add_argument("--window-seconds", type=float, default=None,
                        help="length of one timed window of steps (0.5; --quick 0.1)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="windows per variant and sub-run (3; 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (2; 1)")
    parser.add_argument("--launches", type=int, default=None,
                        help="sub-runs per configuration, the configurations in turn (3; 1)")
    parser.add_argument("--max-bytes", type=parse_bytes, default=None,
                        help="largest all-reduce message, e.g. 64M (64M; 4M); 0: no sweep")
    parser.add_argument("--iterations", type=int, default=None,
                        help="osu iterations for messages up to 64 KiB (1000; 50)")
    parser.add_argument("--buckets", default=None,
                        help="bucket_bytes tried besides the default "
                        f"{format_bytes(DEFAULT_BUCKET_BYTES)} (256K,4M,1G; 1G); '' for none")
    parser.add_argument("--async-progress", action="store_true",
                        help="also run the ranks with MPICH_ASYNC_PROGRESS=1")
    parser.add_argument("--worker", choices=("single", "ranks"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """The sub-runs' :class:`Settings` from the parsed options (--quick resolved)."""
    resolve_quick(args, FULL, QUICK)
    get_networks(args.networks)  # unknown names fail here, before any sub-run
    buckets = tuple(parse_bytes(b) for b in args.buckets.split(",") if b.strip())
    return Settings(args.networks, args.seed, args.window_seconds, args.rounds, args.warmup,
                    args.launches, True, args.max_bytes, args.iterations, buckets)


def merge_steps(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One network's timings from several launches: the windows pooled (the first
    launch's other entries kept)."""
    samples = [v for run in runs for v in run["samples_ms"]]
    counts = sorted({run["steps_per_window"] for run in runs})
    return {**runs[0], **summarize(samples), "steps_per_window": counts}


def merge_ranks(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """2-rank sub-runs of several launches as one: the step windows pooled, the
    all-reduces from the first launch (the only one that timed them)."""
    merged = json.loads(json.dumps(runs[0]))
    for name, network in merged["networks"].items():
        for variant in network["steps"]:
            network["steps"][variant] = merge_steps(
                [run["networks"][name]["steps"][variant] for run in runs]
            )
    return merged


def run_all(settings: Settings, async_progress: bool = False) -> dict[str, Any]:
    """Every sub-run, ``settings.launches`` times in turn, then the ring model's fit:
    the results as written to JSON (with the 1-minute load average before each launch)."""
    configs: list[tuple[str, str, int, int, dict[str, str]]] = [
        ("1x1", "single", 1, 1, {}), ("1x2", "single", 1, 2, {}), ("ranks", "ranks", RANKS, 1, {}),
    ]
    if async_progress:
        configs.append(("async", "ranks", RANKS, 1, {"MPICH_ASYNC_PROGRESS": "1"}))
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in configs}
    load: dict[str, list[float]] = {key: [] for key, *_ in configs}
    for index in range(settings.launches):
        for key, kind, ranks, threads, env in configs:
            told = dataclasses.replace(settings, collectives=index == 0 and kind == "ranks")
            if key == "async":  # the steps and the gradient's all-reduce, no sweep
                told = dataclasses.replace(told, buckets=(), max_bytes=0)
            load[key].append(os.getloadavg()[0])
            runs[key].append(launch(kind, ranks, threads, told, env))
    results: dict[str, Any] = {
        "single": {key: {name: merge_steps([run[name] for run in runs[key]])
                         for name in runs[key][0]} for key in ("1x1", "1x2")},
        "ranks": merge_ranks(runs["ranks"]),
        "loadavg_1min_before_launches": load,
    }
    if async_progress:
        results["async"] = merge_ranks(runs["async"])
    results["fits"] = fit_sweep(results["ranks"]["sweep"])
    return results


def fit_sweep(sweep: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The ring model fitted to MPI's medians: α and B over all sizes (``all``), then
    B alone over the sizes of at least :data:`LARGE` with that α (``large``: the
    bandwidth once messages leave the caches), each where there are points enough."""
    fits: dict[str, dict[str, float]] = {}
    alpha = None
    for key, least in (("all", 0), ("large", LARGE)):
        points = [p for p in sweep if p["bytes"] >= least]
        if len(points) >= (2 if alpha is None else 1):
            alpha, bandwidth = fit_ring_model(
                [p["bytes"] for p in points], [p["mpi"]["median_us"] * 1e-6 for p in points],
                RANKS, alpha,
            )
            fits[key] = {"alpha_s": alpha, "bandwidth_Bps": bandwidth,
                         "least_bytes": points[0]["bytes"]}
    return fits


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        told: dict[str, Any] = json.loads(args.settings)
        worker(args.worker, args.out, Settings(**{**told, "buckets": tuple(told["buckets"])}))
        return 0
    settings = settings_from(args)
    results = run_all(settings, args.async_progress)
    print(report(results))
    payload = {**host_environment(), "versions": core_versions(),
               "command": " ".join([PROG, *(sys.argv[1:] if argv is None else argv)]),
               "settings": dataclasses.asdict(settings), "results": results}
    path = args.json or RESULTS
    write_json(path, payload)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
