"""Data-parallel training of a digits classifier on 2 ranks (docs/distributed.md).

Run:  mpiexec -n 2 python examples/distributed_mnist.py     (pip install 'gpubackprop[mpi]')
      python examples/distributed_mnist.py                   (one rank: the same numbers)

Every rank loads the whole dataset; each batch of 64 rows is split into two shards of
32, one per rank, and the gradients are summed with weights 32/64, so the run equals a
one-process run with batch_size=64: same parameters, same History. Only rank 0 prints
and writes the checkpoint. On GPUs (`device="auto"`) each rank takes cuda:local_rank.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from sklearn.datasets import load_digits

import gpubackprop as gb


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)

    comm = gb.distributed.init()  # rank, size, local_rank; "auto": NCCL on GPUs, else MPI
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    model = gb.Sequential(
        [gb.Dense(64, 128, "relu"), gb.Dense(128, 10)], device=args.device, seed=0
    )
    optimizer = gb.optim.Adam(lr=1e-2)
    loss = gb.losses.SoftmaxCrossEntropy()
    history = model.fit(
        x[:1500], y[:1500], loss=loss, optimizer=optimizer, epochs=args.epochs,
        batch_size=64, validation_data=(x[1500:], y[1500:]), distributed=comm,
    )
    metrics = model.evaluate(x[1500:], y[1500:], loss, distributed=comm)  # sharded, reduced
    predictions = model.predict(x[1500:], distributed=comm)  # every rank gets every row
    path = os.path.join(tempfile.gettempdir(), "gpubackprop-distributed-digits.safetensors")
    model.save(path, optimizer)  # rank 0 writes; the other ranks return at once
    comm.barrier()  # now every rank may read it
    restored = gb.load(path, device=args.device)
    same = bool(np.array_equal(restored.predict(x[1500:]), predictions))
    if comm.rank == 0:
        print(f"{comm.size} rank(s), backend {comm.backend}: held-out {metrics}")
        print(f"History the same on every rank; last loss {history['loss'][-1]:.4f}")
        print(f"checkpoint written by rank 0 and read back: predictions equal: {same}")
    return {**metrics, "ranks": comm.size, "restored_same": float(same)}


if __name__ == "__main__":
    main()
