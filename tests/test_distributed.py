"""Data-parallel training (gpubackprop.distributed): 2 ranks under ``mpiexec`` against
one process, the bucket plan and shards, disagreements, faults, checkpoints.

The 2-rank runs are ``mpiexec -n 2 python tests/mpi_worker.py SCENARIO OUTDIR``
(the [mpi] extra, in [test], brings mpi4py and MPICH's mpiexec); without mpiexec
they skip, saying so."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.distributed.agreement import describe_data, disagreements
from gpubackprop.distributed.buckets import layer_ranges, plan_buckets
from gpubackprop.distributed.transport import find_mpiexec
from gpubackprop.errors import ConfigError, DistributedError

from . import mpi_worker  # the scenarios the ranks run

HERE = Path(__file__).resolve().parent

MPIEXEC = find_mpiexec()
needs_mpiexec = pytest.mark.skipif(
    MPIEXEC is None, reason="no mpiexec: pip install 'gpubackprop[mpi]' (mpi4py and mpich)"
)
pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install 'gpubackprop[mpi]'")


def run_ranks(
    scenario: str, out: Path, ranks: int | None = 2, timeout: float = 120, *extra: str
) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n ranks python tests/mpi_worker.py scenario out *extra`` (one BLAS
    thread per rank); ``ranks=None``: plain ``python`` (a run of one rank)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    launcher = [] if ranks is None else [str(MPIEXEC), "-n", str(ranks)]
    return subprocess.run(
        [*launcher, sys.executable, str(HERE / "mpi_worker.py"), scenario, str(out), *extra],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )


def load(out: Path, name: str, rank: int) -> dict[str, np.ndarray]:
    with np.load(out / f"{name}-{rank}.npz") as f:
        return dict(f)


def ran(tmp_path_factory: pytest.TempPathFactory, scenario: str) -> Path:
    """The folder of a successful 2-rank run of ``scenario``."""
    out = tmp_path_factory.mktemp(scenario)
    result = run_ranks(scenario, out)
    assert result.returncode == 0, result.stderr
    return out


def assert_ranks_equal_one_process(out: Path, name: str, net: gb.Sequential,
                                   history: gb.History) -> None:
    """Both ranks' parameters of run ``name`` equal ``net``'s to 1e-10 (float64), and
    their history ``history``'s."""
    for rank in (0, 1):
        got = load(out, name, rank)
        np.testing.assert_allclose(got["params"], net.flat_params, rtol=0, atol=1e-10)
        seen = json.loads(str(got["history"]))
        for key, values in history.history.items():
            if key != "seconds":
                np.testing.assert_allclose(seen[key], values, rtol=1e-10, atol=1e-12, err_msg=key)


# --- the 2-rank runs ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ran(tmp_path_factory, "train")


@needs_mpiexec
@pytest.mark.parametrize("overlap", ["overlap", "after"])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_two_ranks_equal_one_process(trained: Path, kind: str, overlap: str) -> None:
    """97 rows in batches of 16 (the last batch 1 row: rank 1 has none), 3 epochs, a
    different seed per rank: the parameters equal one process's to 1e-10 (float64),
    the history too, on both ranks."""
    net, history = mpi_worker.train(None, kind, "cpu")
    assert_ranks_equal_one_process(trained, f"{kind}-{overlap}", net, history)
    # the parameters are not trivially equal: training moved them
    assert np.abs(net.flat_params - mpi_worker.model(0).flat_params).max() > 1e-2


@pytest.fixture(scope="module")
def dropout_trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ran(tmp_path_factory, "dropout")


@needs_mpiexec
@pytest.mark.parametrize("overlap", ["overlap", "after"])
def test_two_ranks_with_dropout_equal_one_process(dropout_trained: Path, overlap: str) -> None:
    """Dropout(0.3) between the Dense layers, as the "train" run with SGD: each rank's
    shard draws the masks its rows get in one process (Sequential.row_offset), and rank 1,
    with no row in the last batch of an epoch, advances its generator all the same
    (Sequential.advance_generators); a different seed per rank (other Dropout keys) is
    overruled by rank 0's. The parameters equal one process's to 1e-10, the history too."""
    net, history = mpi_worker.train(None, "sgd", "cpu", build=mpi_worker.dropout_model)
    assert_ranks_equal_one_process(dropout_trained, f"dropout-{overlap}", net, history)
    assert np.abs(net.flat_params - mpi_worker.dropout_model(0).flat_params).max() > 1e-2


@needs_mpiexec
def test_dropout_generators_after_fit_equal_one_process(dropout_trained: Path) -> None:
    """Both ranks end with the one-process generator state (key, step): rank 0's key,
    and one step per batch, 7 batches x 3 epochs, also on rank 1, which has no row in
    each epoch's last batch."""
    net, _ = mpi_worker.train(None, "sgd", "cpu", build=mpi_worker.dropout_model)
    expected = net.generator_states()[1]
    assert expected[1] == 3 * math.ceil(mpi_worker.ROWS / mpi_worker.BATCH)
    for overlap in ("overlap", "after"):
        for rank in (0, 1):
            got = load(dropout_trained, f"dropout-{overlap}", rank)["generator"]
            assert tuple(int(v) for v in got) == expected, (overlap, rank)


@needs_mpiexec
def test_sequence_model_on_two_ranks_equals_one_process(tmp_path: Path) -> None:
    """Token ids into Embedding, LSTM, LayerNorm, Dropout(0.2), Dense; (B, T) labels; a
    validation set of one row (rank 1 evaluates nothing) and predict of one row."""
    result = run_ranks("sequence", tmp_path)
    assert result.returncode == 0, result.stderr
    net, history = mpi_worker.train_sequence(None, "cpu")
    ids, _ = mpi_worker.sequence_data()
    for rank in (0, 1):
        got = load(tmp_path, "sequence", rank)
        np.testing.assert_allclose(got["params"], net.flat_params, rtol=0, atol=1e-10)
        seen = json.loads(str(got["history"]))
        np.testing.assert_allclose(seen["val_loss"], history["val_loss"], rtol=1e-10)
        assert got["predict"].shape == (1, 6, 11)
        np.testing.assert_allclose(got["predict"], net.predict(ids[:1]), rtol=0, atol=1e-10)


@needs_mpiexec
def test_three_ranks_equal_one_process(tmp_path: Path) -> None:
    """An odd rank count (shards of 6, 5, 5 rows; the last batch of 1 row on rank 0
    only), more ranks than this CI machine's 2 cores."""
    result = run_ranks("train", tmp_path, 3)
    assert result.returncode == 0, result.stderr
    for kind in ("sgd", "adam"):
        expected = mpi_worker.train(None, kind, "cpu")[0].flat_params
        for rank in range(3):
            got = load(tmp_path, f"{kind}-overlap", rank)["params"]
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


@needs_mpiexec
def test_ranks_have_identical_parameters_and_history(trained: Path) -> None:
    for name in ("sgd-overlap", "adam-overlap", "custom"):
        a, b = load(trained, name, 0), load(trained, name, 1)
        np.testing.assert_array_equal(a["params"], b["params"])
        if "history" in a:
            assert str(a["history"]) == str(b["history"])


@needs_mpiexec
def test_evaluate_and_predict_shard_and_return_everything(trained: Path) -> None:
    net, _ = mpi_worker.train(None, "sgd", "cpu")
    x, y = mpi_worker.dataset()
    expected = net.evaluate(x, y, "cross_entropy")
    for rank in (0, 1):
        got = load(trained, "sgd-overlap", rank)
        seen = json.loads(str(got["evaluate"]))
        assert seen.keys() == expected.keys()
        for key in expected:
            assert math.isclose(seen[key], expected[key], rel_tol=1e-10), key
        assert got["predict"].shape == (mpi_worker.ROWS, 3)
        np.testing.assert_allclose(got["predict"], net.predict(x), rtol=0, atol=1e-10)


@needs_mpiexec
def test_custom_loop_with_broadcast_and_allreduce(trained: Path) -> None:
    """comm.broadcast_parameters + comm.allreduce_gradients(weight=B_r/B) by hand equal
    one process's loop over the same batches."""
    expected = mpi_worker.custom_loop(None, "cpu")
    for rank in (0, 1):
        np.testing.assert_allclose(load(trained, "custom", rank)["params"], expected,
                                   rtol=0, atol=1e-10)


@needs_mpiexec
def test_resume_from_checkpoint_equals_uninterrupted(tmp_path: Path) -> None:
    result = run_ranks("resume", tmp_path)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        got = load(tmp_path, "resume", rank)
        np.testing.assert_array_equal(got["resumed"], got["whole"])
    # rank 0 wrote the one file; no temporary or per-rank copies were left
    assert sorted(p.name for p in tmp_path.glob("*.safetensors*")) == ["resume.safetensors"]


@needs_mpiexec
@pytest.mark.parametrize(
    ("scenario", "words"),
    [
        ("mismatch-width", ["model / layers: rank 0: ['Dense 5->7, tanh', 'Dense 7->3']; "
                            "rank 1: ['Dense 5->8, tanh', 'Dense 8->3']",
                            "model / parameters: rank 0: 66; rank 1: 75"]),
        ("mismatch-rows", ["data / rows: rank 0: 97; rank 1: 96", "whole dataset"]),
        ("mismatch-optimizer", ["optimizer / hyperparameters / lr: rank 0: 0.1; rank 1: 0.2"]),
        ("mismatch-dtype", ["model / dtype: rank 0: 'float64'; rank 1: 'float32'"]),
    ],
)
def test_disagreeing_ranks_raise_on_every_rank(
    tmp_path: Path, scenario: str, words: list[str]
) -> None:
    result = run_ranks(scenario, tmp_path)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        message = (tmp_path / f"{scenario}-{rank}.txt").read_text()
        assert "the 2 ranks disagree before training" in message
        for word in words:
            assert word in message, (word, message)


@needs_mpiexec
def test_error_on_one_rank_aborts_the_job(tmp_path: Path) -> None:
    """NaN data on rank 1 only: rank 1 prints the error with its rank and aborts; rank 0,
    waiting in a collective, does not hang; the exit status is non-zero."""
    result = run_ranks("fault", tmp_path, timeout=60)
    assert result.returncode != 0
    assert "rank 1 of 2 failed in fit" in result.stderr
    assert "NumericalError" in result.stderr
    assert "MPI.Abort" in result.stderr
    assert not list(tmp_path.glob("fault-finished-*"))


# --- one process (MPI singleton) -----------------------------------------------------------
def test_shard_bounds_cover_every_row_once() -> None:
    from gpubackprop.distributed import shard_bounds

    assert shard_bounds(16, 2) == [0, 8, 16]
    assert shard_bounds(7, 2) == [0, 4, 7]
    assert shard_bounds(1, 2) == [0, 1, 1]
    assert shard_bounds(10, 4) == [0, 3, 6, 8, 10]
    for rows in range(0, 30):
        for size in range(1, 6):
            bounds = shard_bounds(rows, size)
            sizes = np.diff(bounds)
            assert bounds[0] == 0 and bounds[-1] == rows and sizes.min() >= 0
            assert sizes.max() - sizes.min() <= 1


def test_buckets_cover_the_flat_buffer_in_whole_layers() -> None:
    net = gb.Sequential([gb.Dense(30, 40, "relu"), gb.Activation("tanh"), gb.Dense(40, 50),
                         gb.Dense(50, 3)], device="cpu", seed=0)
    ranges = layer_ranges(net)
    assert ranges[1][0] == ranges[1][1]  # the Activation has no parameters
    assert ranges[-1][1] == net.num_parameters
    for bucket_bytes in (1, 100, 4 * 2000, 1 << 30):
        buckets = plan_buckets(ranges, 4, bucket_bytes)
        covered = np.zeros(net.num_parameters, dtype=int)
        for bucket in buckets:
            covered[bucket.start : bucket.end] += 1
            assert bucket.start == ranges[bucket.ready_after][0]  # starts at a layer
            assert any(bucket.end == stop for _, stop in ranges)
        assert (covered == 1).all()
        # the last layers' bucket comes first: it is ready first in backward
        assert [b.start for b in buckets] == sorted((b.start for b in buckets), reverse=True)
    assert len(plan_buckets(ranges, 4, 1)) == 3  # one per layer with parameters
    assert len(plan_buckets(ranges, 4, 1 << 30)) == 1


def test_disagreements_name_keys_ranks_and_values() -> None:
    x = np.zeros((5, 2))
    same = {"model": [1, 2], "data": describe_data(x, np.zeros(5))}
    assert disagreements([same, same, same]) == []
    other = {"model": [1, 3], "data": describe_data(x[:4], np.zeros(4))}
    lines = disagreements([same, other, same])
    assert len(lines) == 3
    assert lines[2].startswith("data / sampled rows: ranks 0, 2: '")
    assert lines[0] == "model: ranks 0, 2: [1, 2]; rank 1: [1, 3]"
    assert lines[1] == "data / rows: ranks 0, 2: 5; rank 1: 4"


def test_data_fingerprint_sees_changed_rows() -> None:
    x = np.arange(200.0).reshape(100, 2)
    changed = x.copy()
    changed[-1, 0] = -1.0
    assert describe_data(x, x[:, 0]) != describe_data(changed, x[:, 0])


def test_one_rank_fit_equals_plain_fit() -> None:
    """Under plain python, init() is a run of one rank: fit with it equals fit without."""
    comm = gb.distributed.init()
    assert (comm.size, comm.rank, comm.local_rank) == (1, 0, 0)
    assert gb.distributed.init() is comm and gb.distributed.current() is comm
    x, y = mpi_worker.dataset()
    a, b = mpi_worker.model(0), mpi_worker.model(0)
    ha = a.fit(x, y, loss="cross_entropy", optimizer=gb.optim.Adam(0.01), epochs=2,
               batch_size=16, verbose=False)
    hb = b.fit(x, y, loss="cross_entropy", optimizer=gb.optim.Adam(0.01), epochs=2,
               batch_size=16, verbose=False, distributed=comm)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    assert ha.history["loss"] == hb.history["loss"]
    np.testing.assert_array_equal(a.predict(x), b.predict(x, distributed=comm))


def test_bad_arguments() -> None:
    net = mpi_worker.model(0)
    x, y = mpi_worker.dataset()
    with pytest.raises(ConfigError, match="distributed must be the communicator"):
        net.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1), distributed="mpi")
    with pytest.raises(ConfigError, match="backend must be one of"):
        gb.distributed.init("gloo")
    with pytest.raises(ConfigError, match="bucket_bytes"):
        gb.distributed.init(bucket_bytes=0)
    assert issubclass(DistributedError, gb.GpuBackpropError)


def test_nccl_sum_forks_a_side_stream_and_joins_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The order of the NCCL path's calls, against a stand-in for CuPy (no GPU here): an
    event on the training stream after backward, the side stream waiting for it, the
    in-place all-reduce on the side stream, an event there, and finish making the
    training stream wait for it (no host wait)."""
    import types

    from gpubackprop.distributed import transport

    calls: list[tuple[object, ...]] = []

    streams: list[Stream] = []

    class Stream:
        def __init__(self, name: str = "side", non_blocking: bool = False) -> None:
            self.name, self.ptr = name, id(self)
            streams.append(self)

        def wait_event(self, event: object) -> None:
            calls.append(("wait", self.name, event.name))  # type: ignore[attr-defined]

    training = Stream("training")

    class Event:
        count = 0

        def __init__(self, disable_timing: bool = False) -> None:
            Event.count += 1
            self.name = f"event{Event.count}"

        def record(self, stream: Stream) -> None:
            calls.append(("record", stream.name, self.name))

    cuda = types.SimpleNamespace(Stream=Stream, Event=Event,
                                 get_current_stream=lambda: training)
    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.NCCL_FLOAT32, nccl.NCCL_FLOAT64, nccl.NCCL_SUM = 7, 8, 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    monkeypatch.setitem(sys.modules, "cupy.cuda", types.SimpleNamespace(nccl=nccl))
    monkeypatch.setattr(transport, "cupy_module", lambda: types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(transport, "is_cupy_array", lambda array: True)

    class Comm:
        def allReduce(self, send, recv, count, kind, op, stream):  # NCCL's method name
            assert send == recv  # in place
            side = next(s for s in streams if s.ptr == stream)
            calls.append(("allReduce", side.name, count, kind, op))

    buffer = types.SimpleNamespace(data=types.SimpleNamespace(ptr=1234), size=10,
                                   dtype=np.dtype(np.float64))
    transport_obj = transport.Transport(None, None, Comm())
    one_step = [
        ("record", "training", "event1"),
        ("wait", "side", "event1"),
        ("allReduce", "side", 10, 8, 0),
        ("record", "side", "event2"),
        ("wait", "training", "event2"),
    ]
    for _ in range(2):  # the second step reuses the events (none made in a capture)
        transport_obj.finish([transport_obj.start_sum(buffer)])
    assert calls == one_step * 2
    assert len(streams) == 2  # the training stream and one side stream, made once


def test_host_staged_path_copies_out_sums_and_copies_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU buffers without NCCL go through host memory over MPI (one rank here, a
    stand-in for a CuPy array with its ``get``/``set``), with one warning per transport."""
    from mpi4py import MPI

    from gpubackprop.distributed import transport

    class DeviceBuffer:
        def __init__(self, values: np.ndarray) -> None:
            self.values = values
            self.copies: list[str] = []

        def get(self) -> np.ndarray:
            self.copies.append("to host")
            return self.values.copy()

        def set(self, host: np.ndarray) -> None:
            self.copies.append("to device")
            self.values[...] = host

    monkeypatch.setattr(transport, "is_cupy_array", lambda array: isinstance(array, DeviceBuffer))
    carrier = transport.Transport(MPI, MPI.COMM_WORLD)
    buffer = DeviceBuffer(np.arange(5.0))
    with pytest.warns(RuntimeWarning, match="summed through host memory"):
        carrier.sum_now(buffer)
    np.testing.assert_array_equal(buffer.values, np.arange(5.0))  # one rank: the sum is itself
    assert buffer.copies == ["to host", "to device"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second sum does not warn again
        carrier.sum_now(buffer)
