"""Data parallel on GPUs: NCCL across GPUs, two ranks sharing one GPU through the
host-staged MPI path, and the NCCL all-reduce recorded inside the whole-step CUDA
graph. Marked ``gpu``: they skip without one (and the 2-rank ones without mpiexec)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpubackprop.arrays import gpu_count

from .test_distributed import load, mpi_worker, needs_mpiexec, run_ranks

pytestmark = pytest.mark.gpu
# the MPI library itself, not only the mpi4py package (a GPU image may lack one)
pytest.importorskip("mpi4py.MPI", reason="no MPI library: pip install 'gpubackprop[mpi]'")


@needs_mpiexec
@pytest.mark.parametrize("backend", ["nccl", "mpi"])
def test_two_ranks_on_gpus_equal_one_process(tmp_path: Path, backend: str) -> None:
    """NCCL needs a GPU per rank; "mpi" with GPU arrays is the host-staged path (two
    ranks may share one GPU)."""
    if backend == "nccl" and gpu_count() < 2:
        pytest.skip("NCCL across ranks needs 2 GPUs")
    result = run_ranks("train", tmp_path, 2, 300, "cuda", backend)
    assert result.returncode == 0, result.stderr
    if backend == "mpi":
        assert "summed through host memory" in result.stderr  # the one warning
    for kind in ("sgd", "adam"):
        expected = mpi_worker.train(None, kind, "cpu")[0].flat_params
        for rank in (0, 1):
            got = load(tmp_path, f"{kind}-overlap", rank)["params"]
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_nccl_all_reduce_inside_the_captured_step(tmp_path: Path) -> None:
    """One rank over NCCL (plain python): compile_step(distributed=comm) records the
    bucketed all-reduce in the graph; replays equal eager steps bit for bit, and fit
    with capture trains to the same parameters."""
    result = run_ranks("capture", tmp_path, None, 300, "cuda", "nccl")
    assert result.returncode == 0, result.stderr
    got = load(tmp_path, "capture", 0)
    assert str(got["backend"]) == "nccl"
    assert int(got["captures"]) == 1 and int(got["replays"]) == 6
    np.testing.assert_array_equal(got["graphed"], got["eager"])
    np.testing.assert_array_equal(got["fitted"], got["eager"])
