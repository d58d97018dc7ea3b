"""How a buffer is summed over the ranks, in place: MPI for host arrays, NCCL for GPU
arrays when each rank has its own GPU, else MPI through a host copy (with one warning).

Nothing here is our own transport: MPI is ``mpi4py`` (the ``mpich`` wheel gives a
working MPI and ``mpiexec`` from the package index), NCCL is CuPy's
``cupy.cuda.nccl``. A sum is started by :meth:`Transport.start_sum` and finished by
:meth:`Transport.finish`: MPI's ``Iallreduce`` runs while backward goes on (the
request is tested after layers that start no bucket so that MPI makes progress).
NCCL's all-reduce runs on a side stream that forks from the training stream at an
event recorded after backward wrote the bucket, so it overlaps the backward kernels of
earlier layers; :meth:`Transport.finish` makes the training stream wait for the side
stream's events (no host wait). Fork and join are events, so the whole pattern can be
recorded inside the step's CUDA graph.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import Array, cupy_module
from ..backend import is_cupy_array
from ..errors import ConfigError

#: the error pip users see when mpi4py is missing
MPI_MISSING = (
    "gpubackprop.distributed needs mpi4py and an MPI library: "
    "pip install 'gpubackprop[mpi]' (mpi4py and the mpich wheel, which brings mpiexec)"
)


def find_mpiexec() -> str | None:
    """The ``mpiexec`` that starts ranks of this Python: the one beside the interpreter
    (the mpich wheel's, matching the venv's mpi4py) if there, else the first on PATH
    (None: neither)."""
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def import_mpi() -> Any:
    """``mpi4py.MPI`` (initialising MPI), or ConfigError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ConfigError(f"{MPI_MISSING} ({exc})") from exc
    return MPI


def nccl_problem(local_size: int) -> str | None:
    """Why NCCL cannot carry this machine's ``local_size`` ranks (None: it can).

    NCCL needs CuPy with its NCCL binding and one GPU per rank (it refuses two ranks
    on one GPU).
    """
    cp = cupy_module()
    if cp is None:
        return "CuPy is not installed"
    try:
        count = int(cp.cuda.runtime.getDeviceCount())
    except Exception as exc:  # no driver, no device
        return f"no GPU answers ({type(exc).__name__}: {exc})"
    try:
        from cupy.cuda import nccl

        nccl.get_version()
    except Exception as exc:
        return (
            f"CuPy's NCCL binding is not available ({type(exc).__name__}: {exc}); "
            "pip install 'gpubackprop[nccl]'"
        )
    if count < local_size:
        return (
            f"{local_size} ranks on this machine share {count} GPU(s) and NCCL needs one GPU "
            "per rank"
        )
    return None


@dataclass
class PendingSum:
    """A started in-place sum: the MPI request (None for NCCL, queued on the stream),
    and for a host-staged GPU buffer the host copy to write back."""

    request: Any
    device_buffer: Array | None = None
    host_copy: np.ndarray | None = None
    #: NCCL: the side stream's event recorded after the all-reduce
    done: Any = None


class Transport:
    """In-place sums over the ranks of ``mpi_comm`` (an ``mpi4py`` communicator), with
    ``nccl_comm`` (a ``cupy.cuda.nccl.NcclCommunicator``) for GPU buffers when given."""

    def __init__(self, mpi: Any, mpi_comm: Any, nccl_comm: Any = None) -> None:
        self.mpi = mpi
        self.mpi_comm = mpi_comm
        self.nccl_comm = nccl_comm
        self._warned = False
        self._side_stream: Any = None
        #: NCCL: (written, done) event pairs, the k-th for the k-th sum of a step, made
        #: once (the warm-up before a CUDA-graph capture makes them, none in the capture)
        self._events: list[tuple[Any, Any]] = []
        self._started = 0

    def start_sum(self, buffer: Array) -> PendingSum:
        """Start Σ_ranks ``buffer`` into ``buffer`` (a contiguous NumPy or CuPy array)."""
        if not is_cupy_array(buffer):
            return PendingSum(self.mpi_comm.Iallreduce(self.mpi.IN_PLACE, buffer, self.mpi.SUM))
        if self.nccl_comm is not None:
            return PendingSum(None, done=self._nccl_sum(buffer))
        if not self._warned:
            self._warned = True
            warnings.warn(
                "gpubackprop.distributed: GPU gradients are summed through host memory "
                "over MPI (no NCCL for these ranks: install gpubackprop[nccl] and give each "
                "rank its own GPU for the fast path); each step waits for the copies",
                RuntimeWarning,
                stacklevel=3,
            )
        host = buffer.get()  # device -> host, waits for backward to have written it
        return PendingSum(
            self.mpi_comm.Iallreduce(self.mpi.IN_PLACE, host, self.mpi.SUM), buffer, host
        )

    def _nccl_sum(self, buffer: Array) -> Any:
        """Fork a side stream from the current (training) stream at this point, queue
        NCCL's in-place all-reduce of ``buffer`` on it; returns the event recorded on
        the side stream after it."""
        from cupy.cuda import nccl

        kinds = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        cp = cupy_module()
        assert cp is not None  # a CuPy buffer came in
        if self._side_stream is None:
            self._side_stream = cp.cuda.Stream(non_blocking=True)
        if self._started == len(self._events):
            self._events.append(
                (cp.cuda.Event(disable_timing=True), cp.cuda.Event(disable_timing=True))
            )
        written, done = self._events[self._started]
        self._started += 1
        training, side = cp.cuda.get_current_stream(), self._side_stream
        written.record(training)  # after the backward kernels that wrote the bucket
        side.wait_event(written)
        self.nccl_comm.allReduce(
            buffer.data.ptr, buffer.data.ptr, buffer.size, kinds[np.dtype(buffer.dtype)],
            nccl.NCCL_SUM, side.ptr,
        )
        done.record(side)
        return done

    def progress(self, pending: list[PendingSum]) -> None:
        """Let MPI move the started sums along (MPICH progresses non-blocking
        collectives inside MPI calls; this is one)."""
        requests = [p.request for p in pending if p.request is not None]
        if requests:
            self.mpi.Request.Testall(requests)

    def finish(self, pending: list[PendingSum]) -> None:
        """Wait for every started sum: MPI requests on the host (host-staged GPU buffers
        are then copied back); NCCL sums by making the training stream wait for the side
        stream's events (the host does not wait)."""
        requests = [p.request for p in pending if p.request is not None]
        if requests:
            self.mpi.Request.Waitall(requests)
        self._started = 0
        for p in pending:
            if p.device_buffer is not None:
                p.device_buffer.set(p.host_copy)
            if p.done is not None:
                cp = cupy_module()
                assert cp is not None
                cp.cuda.get_current_stream().wait_event(p.done)

    def sum_now(self, buffer: Array) -> None:
        """Σ_ranks ``buffer`` into ``buffer``, finished on return."""
        self.finish([self.start_sum(buffer)])


__all__ = [
    "MPI_MISSING", "PendingSum", "Transport", "find_mpiexec", "import_mpi", "nccl_problem",
]
