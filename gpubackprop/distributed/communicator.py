"""The communicator of a data-parallel run: one process per rank, started by
``mpiexec -n N python train.py``; :func:`init` joins them.

Every rank holds the whole model and the whole dataset. Each global batch of B rows
is cut into contiguous shards, B_r rows for rank r (:meth:`Communicator.shard`);
each rank computes its mean gradient g_r over its shard, and the ranks sum the
weighted gradients in place, g = Σ_r (B_r / B) g_r, which is the mean gradient over
the whole batch: every rank then applies the same update to the same parameters.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arrays import Array, cupy_module
from ..backend import is_cupy_array, set_default_gpu
from ..checks import check_bool, check_int
from ..errors import ConfigError, DistributedError
from .agreement import raise_if_disagree
from .buckets import GradientBuckets
from .transport import Transport, import_mpi, nccl_problem

if TYPE_CHECKING:
    from ..model import Batch, Sequential
    from ..optim import Optimizer

#: the gradient bucket size of :func:`init` (bytes per all-reduce, at least)
DEFAULT_BUCKET_BYTES = 1 << 20
BACKENDS = ("auto", "mpi", "nccl")


def local_placement(mpi: Any, mpi_comm: Any) -> tuple[int, int]:
    """(local rank, local size): this process's rank among the ranks of ``mpi_comm`` on
    the same machine (shared memory), and how many there are."""
    local = mpi_comm.Split_type(mpi.COMM_TYPE_SHARED, key=mpi_comm.Get_rank())
    try:
        return local.Get_rank(), local.Get_size()
    finally:
        local.Free()


def shard_bounds(rows: int, size: int) -> list[int]:
    """Where each rank's contiguous shard of ``rows`` rows starts: ``size + 1`` offsets,
    the first ``rows % size`` shards one row longer (rank r has rows
    ``bounds[r]:bounds[r + 1]``; a shard is empty when rows < size)."""
    base, extra = divmod(rows, size)
    bounds = [0]
    for rank in range(size):
        bounds.append(bounds[-1] + base + (1 if rank < extra else 0))
    return bounds


class Communicator:
    """This process's place in a data-parallel run (made by :func:`init`).

    Attributes:
        rank: this process's rank, 0 .. size − 1 (rank 0 prints and writes files).
        size: the number of ranks.
        local_rank: the rank among the processes on this machine (its GPU index).
        local_size: the number of ranks on this machine.
        backend: ``"mpi"`` (gradients over MPI; GPU gradients through host memory) or
            ``"nccl"`` (GPU gradients over NCCL, on a side stream joined to the
            training stream by events).
        overlap: whether ``fit`` starts each bucket's all-reduce during backward
            (True) or sums the whole gradient after backward.
        bucket_bytes: the least size of a gradient bucket.
        mpi_comm: the ``mpi4py`` communicator (``MPI.COMM_WORLD``).
    """

    def __init__(
        self, mpi: Any, mpi_comm: Any, backend: str, overlap: bool, bucket_bytes: int
    ) -> None:
        self.mpi = mpi
        self.mpi_comm = mpi_comm
        self.rank: int = mpi_comm.Get_rank()
        self.size: int = mpi_comm.Get_size()
        self.local_rank, self.local_size = local_placement(mpi, mpi_comm)
        self.backend = backend
        self.overlap = overlap
        self.bucket_bytes = bucket_bytes
        nccl_comm = self._nccl_communicator() if backend == "nccl" else None
        self.transport = Transport(mpi, mpi_comm, nccl_comm)
        self._buckets: dict[int, GradientBuckets] = {}

    def __repr__(self) -> str:
        return (
            f"Communicator(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, "
            f"backend={self.backend!r})"
        )

    def _nccl_communicator(self) -> Any:
        from cupy.cuda import nccl

        cp = cupy_module()
        assert cp is not None  # nccl_problem() found CuPy
        cp.cuda.Device(self.local_rank).use()
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        unique_id = self.mpi_comm.bcast(unique_id, root=0)
        return nccl.NcclCommunicator(self.size, unique_id, self.rank)

    # --- collectives -------------------------------------------------------------------
    def barrier(self) -> None:
        """Wait until every rank has called barrier."""
        self.mpi_comm.Barrier()

    def broadcast(self, array: Array, root: int = 0) -> None:
        """Overwrite ``array`` (NumPy or CuPy, contiguous) with rank ``root``'s, in place."""
        if is_cupy_array(array):
            host = array.get()
            self.mpi_comm.Bcast(host, root=root)
            array.set(host)
        else:
            self.mpi_comm.Bcast(array, root=root)

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``value`` (any picklable object) on every rank."""
        return self.mpi_comm.bcast(value, root=root)

    def broadcast_parameters(self, model: Sequential, optimizer: Optimizer | None = None) -> None:
        """Give every rank rank 0's parameters, its shuffling generator's state (so all
        ranks draw the same order in ``fit``), its layers' generator states (Dropout's
        key and step: the same masks) and, with ``optimizer``, its state arrays and step
        count; different seeds per rank cannot make the ranks differ."""
        self.broadcast(model.flat_params)
        model.rng.bit_generator.state = self.broadcast_object(model.rng.bit_generator.state)
        model.set_generator_states(self.broadcast_object(model.generator_states()))
        if optimizer is not None:
            state = optimizer.state_dict()
            arrays = state["state"]
            assert isinstance(arrays, dict)
            for value in arrays.values():
                if value is not None:
                    self.broadcast(value)
            state["step_count"] = self.broadcast_object(state["step_count"])
            optimizer.load_state_dict(state)

    def gradient_buckets(self, model: Sequential) -> GradientBuckets:
        """The buckets of ``model``'s flat gradient buffer (planned once per model)."""
        buckets = self._buckets.get(id(model))
        if buckets is None or buckets.model is not model:
            buckets = GradientBuckets(model, self.transport, self.bucket_bytes)
            self._buckets[id(model)] = buckets
        return buckets

    def allreduce_gradients(self, model: Sequential, weight: float = 1.0) -> None:
        """g ← Σ_r w_r g_r over the ranks, in place in ``model``'s flat gradient buffer
        (one collective per bucket), where w_r is each rank's ``weight``: for mean
        gradients over shards of B_r rows of a global batch of B, pass B_r / B."""
        buckets = self.gradient_buckets(model)
        buckets.begin(weight)
        buckets.start_all()
        buckets.finish()

    def sum(self, values: Sequence[float]) -> np.ndarray:
        """Σ over the ranks of each of ``values`` (float64, every rank gets the sums)."""
        local = np.asarray(values, dtype=np.float64)
        self.mpi_comm.Allreduce(self.mpi.IN_PLACE, local, self.mpi.SUM)
        return local

    def max(self, value: float) -> float:
        """The largest ``value`` over the ranks."""
        return float(self.mpi_comm.allreduce(float(value), op=self.mpi.MAX))

    def gather_rows(self, part: np.ndarray) -> np.ndarray:
        """The ranks' parts (NumPy, the same shape but for the rows) stacked in rank
        order, on every rank."""
        part = np.ascontiguousarray(part)
        counts = self.mpi_comm.allgather(part.size)
        whole = np.empty((sum(counts),), dtype=part.dtype)
        self.mpi_comm.Allgatherv(part.reshape(-1), (whole, counts))
        return whole.reshape((-1, *part.shape[1:]))

    def agree(self, who: str, description: dict[str, Any], advice: str) -> None:
        """DistributedError on every rank unless every rank passed the same
        ``description`` (plain picklable values), naming what differs where."""
        raise_if_disagree(who, self.mpi_comm.allgather(description), advice)

    # --- data parallel training --------------------------------------------------------------
    def shard(self, rows: int) -> tuple[int, int]:
        """This rank's rows ``start, stop`` of a global batch of ``rows`` rows
        (:func:`shard_bounds`)."""
        bounds = shard_bounds(rows, self.size)
        return bounds[self.rank], bounds[self.rank + 1]

    def can_capture(self, model: Sequential) -> bool:
        """Whether ``model``'s step with the gradient all-reduce can be one CUDA graph:
        a GPU model with NCCL (host-staged MPI cannot be recorded)."""
        return model.backend.is_gpu and self.transport.nccl_comm is not None

    def train_step(
        self, model: Sequential, batch: Batch | None, optimizer: Optimizer, weight: float,
        row_offset: int,
    ) -> Array | None:
        """One data-parallel step: forward, loss and backward on this rank's shard
        ``batch`` (None: no rows here, zero gradients, and the model's random generators
        advanced as by a forward), g ← Σ_r w_r g_r (bucket by bucket during backward when
        :attr:`overlap`), then the optimizer's update. ``row_offset`` is the shard's first
        row in the global batch (the forward runs with ``model.row_offset`` set to it, so
        Dropout draws the one-process masks of these rows). Returns the shard's loss (a
        0-d device array) or None."""
        buckets = self.gradient_buckets(model)
        buckets.begin(weight)
        value = None
        model.row_offset = row_offset
        try:
            if batch is None:
                model.advance_generators()
                model.flat_grads.fill(0)
                buckets.start_all()
            elif self.overlap:
                value = model.loss_and_grad_batch(batch, on_gradients=buckets.layer_done)
            else:
                value = model.loss_and_grad_batch(batch)
                buckets.start_all()
        finally:
            model.row_offset = 0
        buckets.finish()
        optimizer.step(model.flat_params, model.flat_grads)
        return value

    @contextlib.contextmanager
    def abort_on_error(self, what: str) -> Iterator[None]:
        """Run a block in which any rank may fail alone: an exception (other than a
        :class:`~gpubackprop.errors.DistributedError`, which every rank raises
        together) is printed with this rank's number and the whole job ends with
        ``MPI.Abort`` (exit status 1), so no other rank waits forever in a
        collective. With one rank the exception is raised as usual."""
        try:
            yield
        except DistributedError:
            raise
        except BaseException as exc:
            if self.size == 1:
                raise
            header = f"gpubackprop: rank {self.rank} of {self.size} failed in {what}"
            lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
            print(
                f"{header}:\n{''.join(lines)}{header}: {type(exc).__name__}: {exc}\n"
                f"gpubackprop: rank {self.rank} aborts the job (MPI.Abort) so that no "
                "rank waits forever",
                file=sys.stderr,
                flush=True,
            )
            self.mpi_comm.Abort(1)
            raise  # not reached: Abort ends the process


#: the communicator :func:`init` made in this process (None before)
_CURRENT: list[Communicator] = []


def current() -> Communicator | None:
    """The communicator :func:`init` made in this process, or None (no data parallelism:
    e.g. ``model.save`` then writes on every process)."""
    return _CURRENT[0] if _CURRENT else None


def init(
    backend: str = "auto", *, overlap: bool = True, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Communicator:
    """Join the data-parallel run this process was started in (``mpiexec -n N``).

    Args:
        backend: ``"auto"`` (NCCL for GPU gradients when CuPy's NCCL is there and each
            rank on a machine has its own GPU, else MPI), ``"mpi"`` or ``"nccl"``
            (ConfigError saying why when NCCL cannot be used).
        overlap: ``fit`` starts each bucket's all-reduce as soon as backward has written
            it (True) or sums the whole gradient after backward (False).
        bucket_bytes: the least size of a gradient bucket (whole layers, from the last).

    On a machine with GPUs, ``device="cuda"`` and ``"auto"`` then mean
    ``cuda:local_rank`` (modulo the GPU count) in this process. Calling init again
    returns the same communicator. Run with plain ``python``, it is a run of one rank.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"distributed.init: backend must be one of {BACKENDS}, got {backend!r}")
    overlap = check_bool("overlap", overlap)
    bucket_bytes = check_int("bucket_bytes", bucket_bytes, minimum=1)
    if _CURRENT:
        comm = _CURRENT[0]
        if backend not in ("auto", comm.backend):
            raise ConfigError(
                f"distributed.init: already initialised with backend {comm.backend!r}, "
                f"asked for {backend!r}"
            )
        comm.overlap, comm.bucket_bytes = overlap, bucket_bytes
        return comm
    mpi = import_mpi()
    world = mpi.COMM_WORLD
    local_rank, local_size = local_placement(mpi, world)
    problem = nccl_problem(local_size)
    # every rank must pick the same backend: NCCL only if it works on every machine
    nccl_everywhere = world.allreduce(problem is None, op=mpi.LAND)
    if backend == "nccl" and not nccl_everywhere:
        raise ConfigError(
            f"distributed.init: backend 'nccl' was asked for but on rank {world.Get_rank()} "
            f"{problem or 'another rank cannot use NCCL'}"
        )
    chosen = "nccl" if backend != "mpi" and nccl_everywhere else "mpi"
    cp = cupy_module()
    gpus = 0
    if cp is not None:
        with contextlib.suppress(Exception):
            gpus = int(cp.cuda.runtime.getDeviceCount())
    if gpus:
        set_default_gpu(
            local_rank % gpus,
            f"rank {world.Get_rank()}: local rank {local_rank} of {local_size} on this machine",
        )
    comm = Communicator(mpi, world, chosen, overlap, bucket_bytes)
    _CURRENT.append(comm)
    return comm


__all__ = [
    "BACKENDS",
    "DEFAULT_BUCKET_BYTES",
    "Communicator",
    "current",
    "init",
    "local_placement",
    "shard_bounds",
]
