"""Fuzzing the checkpoint loader: random bytes and mutated valid files either load
exactly the saved state or raise CheckpointError, never anything else, in bounded
time and memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpubackprop as gb

from .helpers import to_numpy
from .test_io import _sign

FUZZ = settings(
    max_examples=200,
    deadline=2000,  # ms per example
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
#: bytes the loader may trace per example, beyond the file's own size (a few times over)
MEMORY_SLACK = 2_000_000


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, np.ndarray], Path]:
    """A checkpoint (model + Adam state), its parameters, and a scratch path."""
    folder = tmp_path_factory.mktemp("fuzz")
    model = gb.Sequential(
        [gb.Dense(3, 4, "relu"), gb.Activation("tanh"), gb.Dense(4, 2)], device="cpu", seed=1
    )
    optimizer = gb.optim.Adam(1e-2)
    x = np.random.default_rng(0).standard_normal((8, 3))
    model.train_step(x, np.arange(8) % 2, gb.losses.SoftmaxCrossEntropy(), optimizer)
    model.save(folder / "valid.safetensors", optimizer=optimizer)
    params = {k: to_numpy(v).copy() for k, v in model.parameters().items()}
    params.update({f"optimizer.{k}": v for k, v in optimizer.state_dict()["state"].items()})
    return (folder / "valid.safetensors").read_bytes(), params, folder / "fuzzed.safetensors"


def _load_bounded(path: Path, raw: bytes) -> dict[str, np.ndarray] | None:
    """Load ``raw`` from ``path``: the state on success, None on CheckpointError;
    asserts the traced memory stayed within a few times the file size."""
    path.write_bytes(raw)
    tracemalloc.start()
    try:
        model, optimizer = gb.load(path, device="cpu", with_optimizer=True)
    except gb.CheckpointError:
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY_SLACK + 4 * len(raw)
    state = {k: to_numpy(v) for k, v in model.parameters().items()}
    if optimizer is not None:
        state.update(
            {f"optimizer.{k}": v for k, v in optimizer.state_dict()["state"].items()}
        )
    return state


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a
    )


@FUZZ
@given(raw=st.binary(max_size=2048))
def test_random_bytes_are_refused(valid: tuple, raw: bytes) -> None:
    assert _load_bounded(valid[2], raw) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


@FUZZ
@given(header=st.dictionaries(st.text(max_size=12), json_values, max_size=5),
       data=st.binary(max_size=256))
def test_random_headers_are_refused(valid: tuple, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    assert _load_bounded(valid[2], len(text).to_bytes(8, "little") + text + data) is None


@st.composite
def mutations(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw`` with byte flips, a truncation, an insertion or a deletion."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header length"]))
    if kind == "flip":
        out = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    at = draw(st.integers(0, len(raw)))
    if kind == "insert":
        return raw[:at] + draw(st.binary(min_size=1, max_size=16)) + raw[at:]
    if kind == "delete":
        return raw[:at] + raw[at + draw(st.integers(1, 16)) :]
    length = draw(st.integers(0, 2**64 - 1))
    return length.to_bytes(8, "little") + raw[8:]


@FUZZ
@given(data=st.data())
def test_mutated_files_are_refused_or_unchanged(valid: tuple, data: st.DataObject) -> None:
    raw, params, path = valid
    mutated = data.draw(mutations(raw))
    state = _load_bounded(path, mutated)
    # a harmless mutation (say, header padding turned into a tab) loads the same state
    assert state is None or _same(state, params)


@FUZZ
@given(data=st.data())
def test_edited_header_values_are_refused_or_unchanged(
    valid: tuple, data: st.DataObject
) -> None:
    """Replace one header value (a tensor field, or a metadata string, or a field inside
    a metadata JSON) with random JSON; a metadata edit is maybe re-signed (reaching the
    checks behind the checksum: architecture, optimizer and generator records)."""
    raw, params, path = valid
    n = int.from_bytes(raw[:8], "little")
    header, body = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    key = data.draw(st.sampled_from(sorted(header)))
    fields = header[key]
    field = data.draw(st.sampled_from(sorted(fields)))
    value = data.draw(json_values)
    if key == "__metadata__" and data.draw(st.booleans()):
        inner = json.loads(fields[field]) if fields[field][:1] in "{[" else None
        if isinstance(inner, dict) and inner:
            inner[data.draw(st.sampled_from(sorted(inner)))] = value
            value = json.dumps(inner)
    fields[field] = value
    if key == "__metadata__" and data.draw(st.booleans()):
        _sign(header, body)
    text = json.dumps(header).encode()
    state = _load_bounded(path, len(text).to_bytes(8, "little") + text + body)
    assert state is None or _same(state, params)
