"""Data-parallel training over MPI (CPU ranks, any number of machines) and NCCL (GPUs).

Start one process per rank with ``mpiexec -n N python train.py``; in the script::

    comm = gb.distributed.init()             # rank, size, local_rank, backend
    model = gb.Sequential([...], device="auto", seed=0)   # "auto": cuda:local_rank
    history = model.fit(x, y, loss=..., optimizer=..., batch_size=256, distributed=comm)

Every rank passes the whole dataset; each global batch of B rows is split into
contiguous shards of B_r rows, and the gradients are summed with weights B_r / B, so
a step equals the single-process step on the same global batch
(:mod:`~gpubackprop.distributed.communicator`). Gradients are summed in buckets of
whole layers while backward runs (:mod:`~gpubackprop.distributed.buckets`), over MPI
(``mpi4py``) or NCCL (CuPy) (:mod:`~gpubackprop.distributed.transport`). Before the
first step the ranks check that they agree on the model, the optimizer and the data
(:mod:`~gpubackprop.distributed.agreement`). See docs/distributed.md.
"""

from .communicator import BACKENDS, DEFAULT_BUCKET_BYTES, Communicator, current, init, shard_bounds

__all__ = ["BACKENDS", "DEFAULT_BUCKET_BYTES", "Communicator", "current", "init", "shard_bounds"]
