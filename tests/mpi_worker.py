"""Scenarios run by tests/test_distributed.py under ``mpiexec -n 2 python
tests/mpi_worker.py SCENARIO OUTDIR [DEVICE]``. Each rank writes what it saw to
``OUTDIR/<scenario>-<rank>.npz`` (arrays) or ``.txt`` (an error message); the test
compares them with a one-process run. Not a test module itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import gpubackprop as gb
from gpubackprop.errors import DistributedError

ROWS = 97  # batches of 16: 6 full ones and a last one of 1 row (rank 1 gets none)
BATCH = 16


def dataset(rows: int = ROWS, classes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The data every rank loads (the same on every rank, as fit expects)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, 5))
    y = rng.integers(0, 3, rows) if classes else rng.normal(size=(rows, 2))
    return x, y


def model(seed: int, device: str = "cpu", width: int = 7) -> gb.Sequential:
    return gb.Sequential(
        [gb.Dense(5, width, "tanh"), gb.Dense(width, 3)], device=device, dtype="float64", seed=seed
    )


def dropout_model(seed: int, device: str = "cpu") -> gb.Sequential:
    """A float64 model with Dropout(0.3) between its Dense layers (its masks depend on
    each row's place in the global batch and on the step)."""
    return gb.Sequential(
        [gb.Dense(5, 16, "tanh"), gb.Dropout(0.3), gb.Dense(16, 3)],
        device=device, dtype="float64", seed=seed,
    )


def optimizers() -> dict[str, gb.optim.Optimizer]:
    return {
        "sgd": gb.optim.SGD(0.1, momentum=0.9),
        "adam": gb.optim.Adam(0.01),
    }


def train(comm: gb.distributed.Communicator | None, kind: str, device: str, epochs: int = 3,
          build=model):
    """The run compared across process counts: a different seed per rank (rank 0's
    parameters must win), validation data, 3 epochs, the model ``build(seed, device)``.
    Returns (model, history)."""
    x, y = dataset()
    rank = 0 if comm is None else comm.rank
    net = build(rank, device)
    history = net.fit(
        x, y, loss="cross_entropy", optimizer=optimizers()[kind], epochs=epochs,
        batch_size=BATCH, validation_data=(x[:41], y[:41]), verbose=rank == 0,
        distributed=comm,
    )
    return net, history


def sequence_data() -> tuple[np.ndarray, np.ndarray]:
    """37 sequences of 6 token ids (vocabulary 11) and their next-token labels."""
    rng = np.random.default_rng(3)
    return rng.integers(0, 11, (37, 6)), rng.integers(0, 11, (37, 6))


def train_sequence(comm: gb.distributed.Communicator | None, device: str):
    """A language-model-like run: Embedding, LSTM, LayerNorm, Dropout, Dense on token ids,
    batches of 8 (the last of 5 rows), validation data of one row (rank 1's shard of it
    is empty). Returns (model, history)."""
    ids, labels = sequence_data()
    net = gb.Sequential(
        [gb.Embedding(11, 8), gb.LSTM(8, 12), gb.LayerNorm(12), gb.Dropout(0.2),
         gb.Dense(12, 11)], device=device, dtype="float64", seed=3,
    )
    history = net.fit(
        ids, labels, loss="cross_entropy", optimizer=gb.optim.Adam(0.01), epochs=2,
        batch_size=8, verbose=False, validation_data=(ids[:1], labels[:1]), distributed=comm,
    )
    return net, history


def custom_loop(comm: gb.distributed.Communicator | None, device: str) -> np.ndarray:
    """A hand-written data-parallel loop: broadcast, shard, weighted all-reduce, step."""
    x, y = dataset()
    net = model(seed=10 if comm is None else 10 + comm.rank, device=device)
    opt = gb.optim.SGD(0.05, momentum=0.5)
    if comm is not None:
        comm.broadcast_parameters(net, opt)
    for start in range(0, ROWS, BATCH):
        stop = min(ROWS, start + BATCH)
        lo, hi = (start, stop)
        if comm is not None:
            first, last = comm.shard(stop - start)
            lo, hi = start + first, start + last
        if hi > lo:
            net.loss_and_grad(x[lo:hi], y[lo:hi], "cross_entropy")
        else:
            net.flat_grads.fill(0)
        if comm is not None:
            comm.allreduce_gradients(net, weight=(hi - lo) / (stop - start))
        opt.step(net.flat_params, net.flat_grads)
    return net.backend.to_numpy(net.flat_params)


def save(out: Path, name: str, rank: int, **arrays: object) -> None:
    np.savez(out / f"{name}-{rank}.npz", **{k: np.asarray(v) for k, v in arrays.items()})


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    comm = gb.distributed.init(sys.argv[4] if len(sys.argv) > 4 else "auto")
    rank = comm.rank
    if scenario == "train":
        for kind in ("sgd", "adam"):
            for overlap in (True, False):
                comm.overlap = overlap
                net, history = train(comm, kind, device)
                x, y = dataset()
                save(
                    out, f"{kind}-{'overlap' if overlap else 'after'}", rank,
                    params=net.backend.to_numpy(net.flat_params),
                    history=json.dumps(history.history),
                    evaluate=json.dumps(net.evaluate(x, y, "cross_entropy", distributed=comm)),
                    predict=net.predict(x, batch_size=10, distributed=comm),
                )
        save(out, "custom", rank, params=custom_loop(comm, device))
    elif scenario == "dropout":
        for overlap in (True, False):
            comm.overlap = overlap
            net, history = train(comm, "sgd", device, build=dropout_model)
            save(
                out, f"dropout-{'overlap' if overlap else 'after'}", rank,
                params=net.backend.to_numpy(net.flat_params),
                history=json.dumps(history.history),
                generator=np.array(net.generator_states()[1], dtype=np.uint64),
            )
    elif scenario == "resume":
        x, y = dataset()
        whole, _ = train(comm, "adam", device, epochs=4)
        first = model(seed=rank, device=device)
        opt = optimizers()["adam"]
        first.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=BATCH,
                  verbose=False, distributed=comm)
        path = out / "resume.safetensors"
        first.save(path, opt)  # rank 0 writes; the others return at once
        comm.barrier()
        resumed, resumed_opt = gb.load(path, with_optimizer=True, device=device)
        resumed.fit(x, y, loss="cross_entropy", optimizer=resumed_opt, epochs=2,
                    batch_size=BATCH, verbose=False, distributed=comm)
        save(out, "resume", rank, whole=whole.backend.to_numpy(whole.flat_params),
             resumed=resumed.backend.to_numpy(resumed.flat_params),
             files=sorted(p.name for p in out.iterdir()))
    elif scenario in ("mismatch-width", "mismatch-rows", "mismatch-optimizer", "mismatch-dtype"):
        x, y = dataset()
        net = model(0, device, width=7 + rank if scenario == "mismatch-width" else 7)
        if scenario == "mismatch-dtype" and rank == 1:
            net = gb.Sequential([gb.Dense(5, 7, "tanh"), gb.Dense(7, 3)], device=device, seed=0)
        if scenario == "mismatch-rows":
            x, y = x[: ROWS - rank], y[: ROWS - rank]
        opt = gb.optim.SGD(0.1 * (1 + rank)) if scenario == "mismatch-optimizer" else (
            gb.optim.SGD(0.1))
        try:
            net.fit(x, y, loss="cross_entropy", optimizer=opt, verbose=False, distributed=comm)
        except DistributedError as exc:
            (out / f"{scenario}-{rank}.txt").write_text(str(exc))
    elif scenario == "fault":
        x, y = dataset()
        if rank == 1:
            x = x.copy()
            x[3, 2] = np.nan  # bad data on one rank only
        model(0, device).fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1),
                             verbose=False, distributed=comm)
        (out / f"fault-finished-{rank}.txt").write_text("the job did not abort")
    elif scenario == "sequence":  # token ids, LSTM, LayerNorm, Dropout; 1-row validation
        net, history = train_sequence(comm, device)
        ids, _ = sequence_data()
        save(out, "sequence", rank, params=net.backend.to_numpy(net.flat_params),
             history=json.dumps(history.history),
             predict=net.predict(ids[:1], distributed=comm))
    elif scenario == "capture":  # one rank over NCCL, on a GPU: the all-reduce in the graph
        x, y = dataset(rows=96)
        eager, graphed = model(0, device), model(0, device)
        opts = gb.optim.SGD(0.1, momentum=0.9), gb.optim.SGD(0.1, momentum=0.9)
        step = graphed.compile_step("cross_entropy", opts[1], distributed=comm, weight=1.0)
        for start in range(0, 96, BATCH):
            rows = slice(start, start + BATCH)
            eager.train_step(x[rows], y[rows], "cross_entropy", opts[0])
            step(graphed.to_device(x[rows]), graphed.to_device(y[rows]))
        fitted = model(0, device)
        fitted.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1, momentum=0.9),
                   batch_size=BATCH, verbose=False, distributed=comm)
        save(out, "capture", rank, eager=eager.backend.to_numpy(eager.flat_params),
             graphed=graphed.backend.to_numpy(graphed.flat_params),
             fitted=fitted.backend.to_numpy(fitted.flat_params),
             captures=step.captures, replays=step.replays, backend=comm.backend)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main()
