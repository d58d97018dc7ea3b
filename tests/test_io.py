"""Checkpoints (gpubackprop.io): round trips, bitwise resumption, atomic saves, and a
loader that refuses every malformed file with CheckpointError and changes nothing."""

from __future__ import annotations

import hashlib
import importlib.util
import io as stdio
import itertools
import json
import os
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy

import gpubackprop as gb
from gpubackprop import io as ckio

from .helpers import to_numpy

PACKAGE = Path(gb.__file__).resolve().parent
EXAMPLES = PACKAGE.parent / "examples"
LOSS = gb.losses.SoftmaxCrossEntropy()


# --- helpers -----------------------------------------------------------------------------
def _data(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((n, 4)) + np.eye(3, 4)[y] * 2.0
    return x, y


def _model(
    device: str = "cpu", dtype: str = "float32", seed: int = 0, precision: str = "fp32"
) -> gb.Sequential:
    return gb.Sequential(
        [gb.Dense(4, 8, "relu"), gb.Activation("tanh"), gb.Dense(8, 3, bias=False)],
        device=device, dtype=dtype, seed=seed, precision=precision,
    )


def _params(model: gb.Sequential) -> dict[str, np.ndarray]:
    return {k: to_numpy(v).copy() for k, v in model.parameters().items()}


def _opt_state(optimizer: gb.optim.Optimizer) -> dict[str, object]:
    state = optimizer.state_dict()
    state["state"] = {k: None if v is None else to_numpy(v) for k, v in state["state"].items()}
    return state


def _assert_same_arrays(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key] is None or b[key] is None:
            assert a[key] is None and b[key] is None, key
        else:
            assert a[key].dtype == b[key].dtype, key
            assert np.array_equal(a[key], b[key]), key


def _assert_same_optimizer(a: gb.optim.Optimizer, b: gb.optim.Optimizer) -> None:
    sa, sb = _opt_state(a), _opt_state(b)
    _assert_same_arrays(sa.pop("state"), sb.pop("state"))
    assert sa == sb


def _trained(tmp_path: Path, optimizer: gb.optim.Optimizer | None = None) -> tuple[
    Path, gb.Sequential, gb.optim.Optimizer
]:
    """A model trained 3 steps with Adam (or ``optimizer``), saved with it."""
    model = _model()
    optimizer = optimizer or gb.optim.Adam(1e-2)
    x, y = _data()
    for _ in range(3):
        model.train_step(x, y, LOSS, optimizer)
    path = tmp_path / "run.safetensors"
    model.save(path, optimizer=optimizer)
    return path, model, optimizer


def _split(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def _sign(header: dict, data: bytes) -> None:
    """Recompute ``sha256`` as the module docstring defines it (independently of io.py)."""
    meta = {k: v for k, v in header["__metadata__"].items() if k != "sha256"}
    tensors = sorted((k, v) for k, v in header.items() if k != "__metadata__")
    described = {"metadata": meta, "tensors": [[k, v["dtype"], v["shape"]] for k, v in tensors]}
    h = hashlib.sha256(json.dumps(described, sort_keys=True, separators=(",", ":")).encode())
    for _, v in tensors:
        h.update(data[v["data_offsets"][0] : v["data_offsets"][1]])
    header["__metadata__"]["sha256"] = h.hexdigest()


def _edit(path: Path, change: Callable[[dict, bytes], bytes | None], sign: bool) -> None:
    """Rewrite ``path``'s header with ``change(header, data)`` (which may return new
    data), re-signing it when ``sign``."""
    header, data = _split(path.read_bytes())
    data = change(header, data) or data
    if sign:
        _sign(header, data)
    path.write_bytes(_join(header, data))


def _set_meta(key: str, value: object) -> Callable[[dict, bytes], None]:
    def change(header: dict, data: bytes) -> None:
        header["__metadata__"][key] = value if isinstance(value, str) else json.dumps(value)

    return change


def _edit_meta_json(key: str, edit: Callable[[dict], None]) -> Callable[[dict, bytes], None]:
    def change(header: dict, data: bytes) -> None:
        value = json.loads(header["__metadata__"][key])
        edit(value)
        header["__metadata__"][key] = json.dumps(value)

    return change


# --- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_load_rebuilds_model_and_optimizer_bitwise(tmp_path: Path, dtype: str) -> None:
    model = _model(dtype=dtype)
    optimizer = gb.optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    x, y = _data()
    for _ in range(2):
        model.train_step(x, y, LOSS, optimizer)
    path = tmp_path / "m.safetensors"
    model.save(path, optimizer=optimizer)

    loaded = gb.load(path, device="cpu", with_optimizer=True)
    assert isinstance(loaded, ckio.Checkpoint)
    restored, opt = loaded
    assert repr(restored) == repr(model) and restored.dtype == model.dtype
    assert restored.seed == 0
    _assert_same_arrays(_params(restored), _params(model))
    assert isinstance(opt, gb.optim.SGD)
    _assert_same_optimizer(opt, optimizer)
    assert restored.rng.bit_generator.state == model.rng.bit_generator.state


def test_load_returns_the_model_ready_to_predict(tmp_path: Path) -> None:
    """``gb.load(path).predict(x)``, as Keras' load_model: the model, not a pair, even
    from a file that holds an optimizer."""
    path, model, _ = _trained(tmp_path)
    x, _ = _data()
    loaded = gb.load(path, device="cpu")
    assert isinstance(loaded, gb.Sequential)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    with pytest.raises(gb.ConfigError, match="with_optimizer must be True or False, got 'yes'"):
        gb.load(path, device="cpu", with_optimizer="yes")  # type: ignore[call-overload]


def test_without_optimizer_load_gives_none(tmp_path: Path) -> None:
    model = _model()
    model.save(tmp_path / "m.safetensors")
    restored, opt = gb.load(str(tmp_path / "m.safetensors"), device="cpu", with_optimizer=True)
    assert opt is None
    _assert_same_arrays(_params(restored), _params(model))


def test_optimizer_before_its_first_step_round_trips(tmp_path: Path) -> None:
    model = _model()
    model.save(tmp_path / "m.safetensors", optimizer=gb.optim.Adam(3e-3, betas=(0.8, 0.9)))
    _, opt = gb.load(tmp_path / "m.safetensors", device="cpu", with_optimizer=True)
    assert isinstance(opt, gb.optim.Adam)
    assert opt.step_count == 0 and opt.betas == (0.8, 0.9) and opt.lr == 3e-3
    assert all(v is None for v in opt.state_dict()["state"].values())


def test_file_is_plain_safetensors_with_documented_header(tmp_path: Path) -> None:
    path, model, optimizer = _trained(tmp_path)
    with safetensors.safe_open(str(path), "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert set(tensors) == {
        "model.0.weight", "model.0.bias", "model.2.weight",
        "optimizer.exp_avg", "optimizer.exp_avg_sq",
    }
    for name, value in model.parameters().items():
        assert np.array_equal(tensors[f"model.{name}"], value)
    assert np.array_equal(tensors["optimizer.exp_avg"], optimizer.state_dict()["state"]["exp_avg"])
    assert set(meta) == {
        "format", "format_version", "gpubackprop_version", "dtype", "architecture",
        "rng", "optimizer", "sha256",
    }
    assert meta["format"] == "gpubackprop" and meta["format_version"] == "1"
    assert meta["gpubackprop_version"] == gb.__version__ and meta["dtype"] == "float32"
    assert json.loads(meta["architecture"]) == {
        "class": "Sequential",
        "seed": 0,
        "precision": "fp32",
        "layers": [
            {"type": "Dense", "in_features": 4, "out_features": 8, "activation": "relu",
             "bias": True},
            {"type": "Activation", "activation": "tanh"},
            {"type": "Dense", "in_features": 8, "out_features": 3, "activation": "identity",
             "bias": False},
        ],
    }
    assert json.loads(meta["rng"]) == model.rng.bit_generator.state
    record = json.loads(meta["optimizer"])
    assert record["type"] == "Adam" and record["step_count"] == 3 and record["num_params"] == 64
    assert record["state"] == ["exp_avg", "exp_avg_sq"]
    # the documented checksum: _sign reproduces the stored one
    header, data = _split(path.read_bytes())
    stored = header["__metadata__"]["sha256"]
    _sign(header, data)
    assert header["__metadata__"]["sha256"] == stored


def test_other_bit_generators_round_trip(tmp_path: Path) -> None:
    model = _model()
    model.rng = np.random.Generator(np.random.MT19937(7))
    model.save(tmp_path / "m.safetensors")
    restored = gb.load(tmp_path / "m.safetensors", device="cpu")
    assert np.array_equal(restored.rng.random(5), model.rng.random(5))


def test_checkpoints_without_precision_load_as_fp32(tmp_path: Path) -> None:
    """Files written before the precision key load as they did (as "fp32")."""
    path, model, _ = _trained(tmp_path)
    _edit(path, _edit_meta_json("architecture", lambda a: a.pop("precision")), sign=True)
    restored = gb.load(path, device="cpu")
    assert restored.precision == "fp32"
    _assert_same_arrays(_params(restored), _params(model))


def test_tf32_precision_round_trips(tmp_path: Path) -> None:
    model = _model(precision="tf32")
    path = tmp_path / "tf32.safetensors"
    model.save(path)
    with safetensors.safe_open(str(path), "np") as f:
        assert json.loads(f.metadata()["architecture"])["precision"] == "tf32"
    restored = gb.load(path, device="cpu")
    assert restored.precision == "tf32"
    _assert_same_arrays(_params(restored), _params(model))
    into = _model(seed=4)
    into.load_state(path)  # the model keeps its own precision
    assert into.precision == "fp32"
    _assert_same_arrays(_params(into), _params(model))


# --- resuming ------------------------------------------------------------------------------
def test_resumed_fit_equals_uninterrupted_fit_bitwise(tmp_path: Path) -> None:
    x, y = _data(100)
    kwargs = {"loss": LOSS, "batch_size": 16, "verbose": False}

    straight = _model()
    straight_opt = gb.optim.SGD(0.05, momentum=0.9)
    straight.fit(x, y, optimizer=straight_opt, epochs=4, **kwargs)

    first = _model()
    first_opt = gb.optim.SGD(0.05, momentum=0.9)
    first.fit(x, y, optimizer=first_opt, epochs=2, **kwargs)
    first.save(tmp_path / "half.safetensors", optimizer=first_opt)
    del first, first_opt
    resumed, resumed_opt = gb.load(tmp_path / "half.safetensors", device="cpu", with_optimizer=True)
    resumed.fit(x, y, optimizer=resumed_opt, epochs=2, **kwargs)

    _assert_same_arrays(_params(resumed), _params(straight))
    _assert_same_optimizer(resumed_opt, straight_opt)


@pytest.mark.parametrize(
    "make_opt",
    [lambda: gb.optim.Adam(1e-2, weight_decay=1e-3), lambda: gb.optim.AdamW(1e-2)],
    ids=["Adam", "AdamW"],
)
def test_load_state_resumes_train_step_bitwise(
    tmp_path: Path, make_opt: Callable[[], gb.optim.Optimizer]
) -> None:
    x, y = _data()
    straight, straight_opt = _model(), make_opt()
    for _ in range(6):
        straight.train_step(x, y, LOSS, straight_opt)

    first, first_opt = _model(), make_opt()
    for _ in range(3):
        first.train_step(x, y, LOSS, first_opt)
    first.save(tmp_path / "k.safetensors", optimizer=first_opt)

    fresh, fresh_opt = _model(seed=99), make_opt()  # other weights, no state
    fresh.load_state(tmp_path / "k.safetensors", optimizer=fresh_opt)
    assert fresh_opt.step_count == 3
    for _ in range(3):
        fresh.train_step(x, y, LOSS, fresh_opt)
    _assert_same_arrays(_params(fresh), _params(straight))
    _assert_same_optimizer(fresh_opt, straight_opt)
    assert fresh.rng.bit_generator.state == straight.rng.bit_generator.state


def test_cross_device_round_trips(tmp_path: Path, device: str) -> None:
    x, y = _data()
    model, optimizer = _model(device), gb.optim.SGD(0.1, momentum=0.9)
    model.train_step(x, y, LOSS, optimizer)
    model.save(tmp_path / "dev.safetensors", optimizer=optimizer)
    on_cpu, cpu_opt = gb.load(tmp_path / "dev.safetensors", device="cpu", with_optimizer=True)
    assert on_cpu.device == "cpu"
    _assert_same_arrays(_params(on_cpu), _params(model))
    _assert_same_optimizer(cpu_opt, optimizer)

    on_cpu.save(tmp_path / "cpu.safetensors", optimizer=cpu_opt)
    back, back_opt = gb.load(tmp_path / "cpu.safetensors", device=device, with_optimizer=True)
    assert back.device == model.device
    assert all(back.backend.is_native(v) for v in back.parameters().values())
    _assert_same_arrays(_params(back), _params(model))
    _assert_same_optimizer(back_opt, optimizer)
    back.train_step(x, y, LOSS, back_opt)  # the state lives on the right device
    into = _model(device, seed=5)
    into.load_state(tmp_path / "cpu.safetensors")
    _assert_same_arrays(_params(into), _params(model))


# --- atomic saving -----------------------------------------------------------------------------
def _die_half_way(file: stdio.BufferedWriter, payload: bytes) -> None:
    file.write(payload[: len(payload) // 2])
    raise OSError("disk full (simulated)")


def test_interrupted_save_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, model, optimizer = _trained(tmp_path)
    before = path.read_bytes()
    x, y = _data()
    model.train_step(x, y, LOSS, optimizer)  # the state moves on
    monkeypatch.setattr(ckio, "_write_payload", _die_half_way)
    with pytest.raises(OSError, match="simulated"):
        model.save(path, optimizer=optimizer)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file
    _, opt = gb.load(path, device="cpu", with_optimizer=True)
    assert opt is not None and opt.step_count == 3

    with pytest.raises(OSError, match="simulated"):
        model.save(tmp_path / "new.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_save_replaces_an_existing_checkpoint(tmp_path: Path) -> None:
    path, model, optimizer = _trained(tmp_path)
    x, y = _data()
    model.train_step(x, y, LOSS, optimizer)
    model.save(path, optimizer=optimizer)
    _, opt = gb.load(path, device="cpu", with_optimizer=True)
    assert opt is not None and opt.step_count == 4
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


# --- what save refuses -------------------------------------------------------------------------
def test_save_refuses_unknown_layers_and_foreign_optimizers(tmp_path: Path) -> None:
    class MyDense(gb.Dense):
        pass

    odd = gb.Sequential([MyDense(2, 2)], device="cpu")
    with pytest.raises(gb.CheckpointError, match=r"hold Dense, Activation, .* layers only"):
        odd.save(tmp_path / "odd.safetensors")

    other = gb.Sequential([gb.Dense(2, 2)], device="cpu", seed=0)
    optimizer = gb.optim.SGD(0.1, momentum=0.9)
    other.train_step(np.ones((2, 2)), np.array([0, 1]), LOSS, optimizer)
    with pytest.raises(gb.CheckpointError, match="state for 6 parameters but the model has 64"):
        _model().save(tmp_path / "x.safetensors", optimizer=optimizer)
    assert list(tmp_path.iterdir()) == []


# --- what load refuses ---------------------------------------------------------------------------
def _write(path: Path, raw: bytes) -> Callable[[Path], None]:
    return lambda _: path.write_bytes(raw)


def _npy(obj: np.ndarray) -> bytes:
    buf = stdio.BytesIO()
    np.save(buf, obj)
    return buf.getvalue()


def _npz() -> bytes:
    buf = stdio.BytesIO()
    np.savez(buf, a=np.ones(3))
    return buf.getvalue()


def _flip(offset_from: Callable[[bytes], int]) -> Callable[[Path], None]:
    def corrupt(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        raw[offset_from(bytes(raw))] ^= 0x10
        path.write_bytes(bytes(raw))

    return corrupt


def _truncate(length: Callable[[bytes], int]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(path.read_bytes()[: length(path.read_bytes())])


def _header_end(raw: bytes) -> int:
    return 8 + int.from_bytes(raw[:8], "little")


def _tensor(name: str, **fields: object) -> Callable[[dict, bytes], None]:
    def change(header: dict, data: bytes) -> None:
        header[name].update(fields)

    return change


def _swap_offsets(header: dict, data: bytes) -> None:
    header["model.0.weight"]["data_offsets"], header["model.0.bias"]["data_offsets"] = (
        header["model.0.bias"]["data_offsets"], header["model.0.weight"]["data_offsets"],
    )


def _overlap(header: dict, data: bytes) -> None:
    begin, end = header["optimizer.exp_avg"]["data_offsets"]
    header["optimizer.exp_avg"]["data_offsets"] = [begin - 4, end - 4]


def _drop_last_tensor(header: dict, data: bytes) -> bytes:
    last = max((k for k in header if k != "__metadata__"),
               key=lambda k: header[k]["data_offsets"][1])
    assert last == "optimizer.exp_avg_sq"
    return data[: header.pop(last)["data_offsets"][0]]


def _add_tensor(header: dict, data: bytes) -> bytes:
    header["extra"] = {"dtype": "F32", "shape": [2], "data_offsets": [len(data), len(data) + 8]}
    return data + bytes(8)


def _pickled() -> bytes:
    # protocol-4 pickle of {} (written out: the tests never import pickle either)
    return b"\x80\x04\x95\x04\x00\x00\x00\x00\x00\x00\x00}\x94."


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty": (_truncate(lambda raw: 0), "empty file"),
    "5 bytes": (_truncate(lambda raw: 5), "truncated: 5 bytes"),
    "in header": (_truncate(lambda raw: 40), "header length field says"),
    "in data": (_truncate(lambda raw: len(raw) - 7), "truncated or corrupted"),
    "extra bytes": (lambda p: p.write_bytes(p.read_bytes() + b"\0"), "extra bytes"),
    "flipped data byte": (_flip(lambda raw: len(raw) - 3), "checksum mismatch"),
    "flipped metadata byte": (
        _flip(lambda raw: raw.index(b"relu")), "checksum mismatch"),
    "flipped length byte": (_flip(lambda raw: 6), "more than the"),
    "header length lies": (
        lambda p: p.write_bytes((10**6).to_bytes(8, "little") + p.read_bytes()[8:]),
        "only"),
    "not JSON": (lambda p: p.write_bytes(_join({}, b"")[:8] + b"{'a'"), "not valid JSON"),
    "duplicate keys": (
        lambda p: p.write_bytes(b"\x0e" + bytes(7) + b'{"a":1, "a":2}'), "duplicate key"),
    "pickle": (lambda p: p.write_bytes(_pickled()), "pickle"),
    "npy": (lambda p: p.write_bytes(_npy(np.ones(3))), "NumPy .npy"),
    "npy of objects": (lambda p: p.write_bytes(_npy(np.array([{}, 1], dtype=object))), ".npy"),
    "npz": (lambda p: p.write_bytes(_npz()), "zip archive"),
    "plain safetensors": (
        lambda p: p.write_bytes(safetensors.numpy.save({"a": np.ones(2)})), "without __metadata__"),
    "unknown dtype": (
        lambda p: _edit(p, _tensor("model.0.bias", dtype="BF16"), sign=True), "dtype 'BF16'"),
    "shape lies": (
        lambda p: _edit(p, _tensor("model.0.bias", shape=[9]), sign=True), "needs 36 bytes"),
    "offsets past the end": (
        lambda p: _edit(p, _tensor("model.0.bias", data_offsets=[0, 10**9]), sign=True),
        "end past the"),
    "overlapping offsets": (lambda p: _edit(p, _overlap, sign=True), "overlaps"),
    "swapped offsets": (lambda p: _edit(p, _swap_offsets, sign=True), "needs"),
    "unknown format version": (
        lambda p: _edit(p, _set_meta("format_version", "2"), sign=True),
        "unsupported format version '2'"),
    "other format": (
        lambda p: _edit(p, _set_meta("format", "keras"), sign=True), "not a gpubackprop"),
    "unknown metadata key": (
        lambda p: _edit(p, _set_meta("note", "hi"), sign=True), "unknown keys ['note']"),
    "unsigned metadata edit": (
        lambda p: _edit(p, _set_meta("gpubackprop_version", "9.9"), sign=False),
        "checksum mismatch"),
    "missing tensor": (
        lambda p: _edit(p, _drop_last_tensor, sign=True), "missing: optimizer.exp_avg_sq"),
    "unexpected tensor": (lambda p: _edit(p, _add_tensor, sign=True), "unexpected: extra"),
    "unknown layer": (
        lambda p: _edit(p, _edit_meta_json(
            "architecture", lambda a: a["layers"].append({"type": "Conv2d"})), sign=True),
        "expected one of the Dense, Activation"),
    "embedding spec without its width": (
        lambda p: _edit(p, _edit_meta_json(
            "architecture", lambda a: a["layers"].append(
                {"type": "Embedding", "num_embeddings": 3})), sign=True),
        "(Embedding) must have keys ['embedding_dim', 'num_embeddings', 'type']"),
    "embedding of no rows": (
        lambda p: _edit(p, _edit_meta_json(
            "architecture", lambda a: a["layers"].insert(0, {
                "type": "Embedding", "num_embeddings": 0, "embedding_dim": 2})), sign=True),
        "architecture layer 0: Embedding: num_embeddings"),
    "unknown activation": (
        lambda p: _edit(p, _edit_meta_json(
            "architecture", lambda a: a["layers"][1].update(activation="swish")), sign=True),
        "unknown activation"),
    "bad dtype name": (
        lambda p: _edit(p, _set_meta("dtype", "int8"), sign=True), "dtype must be"),
    "bad precision": (
        lambda p: _edit(p, _edit_meta_json(
            "architecture", lambda a: a.update(precision="fp16")), sign=True),
        "architecture precision must be one of ['fp32', 'tf32'], got 'fp16'"),
    "unknown optimizer": (
        lambda p: _edit(p, _edit_meta_json(
            "optimizer", lambda o: o.update(type="Lion")), sign=True),
        "unknown optimizer type 'Lion'"),
    "bad hyperparameter": (
        lambda p: _edit(p, _edit_meta_json(
            "optimizer", lambda o: o["hyperparameters"].update(lr=-1.0)), sign=True),
        "lr must be >= 0"),
    "extra hyperparameter": (
        lambda p: _edit(p, _edit_meta_json(
            "optimizer", lambda o: o["hyperparameters"].update(foo=1)), sign=True),
        "optimizer Adam"),
    "bad step count": (
        lambda p: _edit(p, _edit_meta_json(
            "optimizer", lambda o: o.update(step_count=True)), sign=True),
        "step_count must be"),
    "bad rng": (
        lambda p: _edit(p, _edit_meta_json(
            "rng", lambda r: r["state"].update(state=-1)), sign=True),
        "rng: invalid PCG64 state"),
    "unknown bit generator": (
        lambda p: _edit(p, _edit_meta_json(
            "rng", lambda r: r.update(bit_generator="Evil")), sign=True),
        "rng must be a NumPy bit generator state"),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_load_rejects_bad_files(tmp_path: Path, corrupt: str) -> None:
    path, _, _ = _trained(tmp_path)
    damage, message = CORRUPTIONS[corrupt]
    damage(path)
    with pytest.raises(gb.CheckpointError, match=re.escape(message)) as info:
        gb.load(path, device="cpu")
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_failed_load_state_changes_nothing(tmp_path: Path, corrupt: str) -> None:
    path, _, _ = _trained(tmp_path)
    CORRUPTIONS[corrupt][0](path)
    model, optimizer = _model(seed=3), gb.optim.Adam(1e-3)
    x, y = _data()
    model.train_step(x, y, LOSS, optimizer)
    params, opt_state, rng = _params(model), _opt_state(optimizer), model.rng.bit_generator.state
    with pytest.raises(gb.CheckpointError):
        model.load_state(path, optimizer=optimizer)
    _assert_same_arrays(_params(model), params)
    after = _opt_state(optimizer)
    _assert_same_arrays(after.pop("state"), opt_state.pop("state"))
    assert after == opt_state
    assert model.rng.bit_generator.state == rng


def test_valid_looking_but_refused_optimizer_state_changes_nothing(tmp_path: Path) -> None:
    """Values only Optimizer.load_state_dict refuses (nesterov without momentum): the
    optimizer is loaded before the model, so the model keeps its parameters."""
    path, _, _ = _trained(tmp_path, gb.optim.SGD(0.1, momentum=0.9))
    _edit(path, _edit_meta_json(
        "optimizer", lambda o: o["hyperparameters"].update(momentum=0.0, nesterov=True)), sign=True)
    model, optimizer = _model(seed=3), gb.optim.SGD(0.5)
    params = _params(model)
    with pytest.raises(gb.CheckpointError, match="nesterov requires momentum"):
        model.load_state(path, optimizer=optimizer)
    _assert_same_arrays(_params(model), params)
    assert optimizer.lr == 0.5 and optimizer.momentum == 0.0
    with pytest.raises(gb.CheckpointError, match="nesterov requires momentum"):
        gb.load(path, device="cpu")


def test_huge_tensor_claim_is_rejected_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    header = {
        "__metadata__": {"format": "gpubackprop", "format_version": "1"},
        "model.0.weight": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4 * 10**12]},
    }
    path.write_bytes(_join(header, bytes(64)))
    tracemalloc.start()
    try:
        with pytest.raises(gb.CheckpointError, match="between 0 and the 64-byte data size"):
            gb.load(path, device="cpu")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_load_state_names_every_mismatch(tmp_path: Path) -> None:
    path, _, _ = _trained(tmp_path)
    other = gb.Sequential([gb.Dense(4, 6, "relu"), gb.Dense(6, 3, bias=False)], device="cpu")
    params = _params(other)
    with pytest.raises(gb.CheckpointError) as info:
        other.load_state(path)
    message = str(info.value)
    assert "missing: model.1.weight;" in message
    assert "unexpected: model.2.weight;" in message
    assert "model.0.weight (checkpoint (8, 4), expected (6, 4))" in message
    assert "model.0.bias (checkpoint (8,), expected (6,))" in message
    assert "optimizer.exp_avg (checkpoint (64,), expected (48,))" in message
    assert "layer 1 (checkpoint {'type': 'Activation'" in message
    assert "layer count (checkpoint 3, model 2)" in message
    assert "optimizer num_params (checkpoint 64, model 48)" in message
    _assert_same_arrays(_params(other), params)


def test_load_state_checks_dtype_activation_and_optimizer(tmp_path: Path) -> None:
    path, _, _ = _trained(tmp_path)
    with pytest.raises(gb.CheckpointError, match="dtype \\(checkpoint float32, model float64\\)"):
        _model(dtype="float64").load_state(path)
    relu_tanh = gb.Sequential(
        [gb.Dense(4, 8, "tanh"), gb.Activation("tanh"), gb.Dense(8, 3, bias=False)],
        device="cpu",
    )
    with pytest.raises(gb.CheckpointError, match="'activation': 'relu'"):
        relu_tanh.load_state(path)
    with pytest.raises(gb.CheckpointError, match="holds Adam state, got a SGD optimizer"):
        _model().load_state(path, optimizer=gb.optim.SGD(0.1))
    bare = tmp_path / "bare.safetensors"
    _model().save(bare)
    with pytest.raises(gb.CheckpointError, match="holds no optimizer state"):
        _model().load_state(bare, optimizer=gb.optim.Adam())
    with pytest.raises(gb.ConfigError):
        _model().load_state(bare, optimizer="adam")
    # without an optimizer, saved optimizer state is validated and ignored
    model = _model(seed=1)
    model.load_state(path)
    _assert_same_arrays(_params(model), _params(gb.load(path, device="cpu")))


def test_save_into_a_missing_folder_names_the_users_path(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "m.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        _model().save(path)
    message = str(info.value)
    assert info.value.filename == str(path) and ".tmp" not in message
    assert f"the folder {str(tmp_path / 'no' / 'such')!r} does not exist" in message
    assert list(tmp_path.iterdir()) == []


def test_save_onto_a_folder_or_under_a_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="that is a folder; give a file path such as"):
        _model().save(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a folder") as info:
        _model().save(tmp_path / "f" / "m.safetensors")
    assert info.value.filename == str(tmp_path / "f" / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_save_into_a_read_only_folder_names_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated (root may write anywhere); the real case where the tests run unprivileged."""
    path = tmp_path / "m.safetensors"

    def refuse(**_: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied", str(tmp_path / ".m.safetensors.x.tmp"))

    with monkeypatch.context() as patched:
        patched.setattr(ckio.tempfile, "mkstemp", refuse)
        with pytest.raises(PermissionError, match="no permission to create files in the folder"):
            _model().save(path)
    if os.geteuid() != 0:
        tmp_path.chmod(0o555)
        try:
            with pytest.raises(PermissionError, match=re.escape(repr(str(tmp_path)))) as info:
                _model().save(path)
            assert info.value.filename == str(path)
        finally:
            tmp_path.chmod(0o755)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        gb.load(tmp_path / "nope.safetensors", device="cpu")


# --- no pickle anywhere ------------------------------------------------------------------------
UNSAFE = re.compile(
    r"^\s*(import|from)\s+(c?pickle|dill|joblib|shelve|marshal)\b"
    r"|\ballow_pickle\s*=\s*True"
    r"|\b(pickle|torch)\.loads?\("
    r"|\bnp\.load\(|\bnumpy\.load\(",
    re.MULTILINE,
)


def test_the_package_never_unpickles() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "io.py" in sources
    offenders = [
        f"{path.relative_to(PACKAGE)}: {match.group(0).strip()}"
        for path in sources
        for match in UNSAFE.finditer(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    assert UNSAFE.search("x = np.load(f, allow_pickle=True)")  # the pattern can fail


def test_errors_are_exported() -> None:
    assert issubclass(gb.CheckpointError, gb.GpuBackpropError)
    assert issubclass(gb.CheckpointError, ValueError)
    assert gb.load is ckio.load


# --- the example ---------------------------------------------------------------------------------
def test_checkpoint_example_resumes_bitwise(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("checkpoint", EXAMPLES / "checkpoint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--device", "cpu", "--dir", str(tmp_path)]) is True
    out = capsys.readouterr().out
    assert "bit for bit" in out and "the loaded model predicts as the trained one" in out
    assert (tmp_path / "checkpoint.safetensors").exists()


def test_optimizer_guards_survive_a_checkpoint(tmp_path) -> None:
    model = gb.Sequential([gb.Dense(3, 2)], device="cpu", seed=0)
    opt = gb.optim.Adam(1e-2, max_grad_norm=0.5, skip_nonfinite=True)
    model.train_step(np.ones((4, 3)), np.zeros((4, 2)), "mse", opt)
    model.save(tmp_path / "c.safetensors", opt)
    _, loaded = gb.load(tmp_path / "c.safetensors", device="cpu", with_optimizer=True)
    assert loaded.max_grad_norm == 0.5
    assert loaded.skip_nonfinite is True
    assert "max_grad_norm=0.5" in repr(loaded)


PICKLE_LIKE_WIDTHS = [(4, 8, 3), (2, 32, 32, 3), (3, 5, 2), (7, 1)]


def _tanh_model(widths: tuple[int, ...]) -> gb.Sequential:
    return gb.Sequential([gb.Dense(a, b, "tanh") for a, b in itertools.pairwise(widths)], seed=0)


@pytest.mark.parametrize("widths", PICKLE_LIKE_WIDTHS)
def test_headers_whose_length_looks_like_a_pickle_opcode_load(tmp_path: Path, widths) -> None:
    """A header of 640, 896, 1152 or 1408 bytes (+ k·65536) starts the file with the
    bytes 0x80 0x02..0x05 of a pickle's PROTO opcode: such checkpoints must load."""
    model = _tanh_model(widths)
    path = tmp_path / "m.safetensors"
    model.save(path, gb.optim.Adam(lr=1e-3))
    loaded = gb.load(path, device="cpu")
    x = np.random.default_rng(0).standard_normal((3, widths[0])).astype(np.float32)
    np.testing.assert_array_equal(to_numpy(loaded.predict(x)), to_numpy(model.predict(x)))


def test_some_saved_header_length_starts_like_a_pickle(tmp_path: Path) -> None:
    """The regression above is real: among these models one header starts with 0x80 0x0N."""
    starts = set()
    for i, widths in enumerate(PICKLE_LIKE_WIDTHS):
        path = tmp_path / f"{i}.safetensors"
        _tanh_model(widths).save(path, gb.optim.Adam(lr=1e-3))
        head = path.read_bytes()[:2]
        starts.add(head[0] == 0x80 and 2 <= head[1] <= 5)
    assert True in starts


# --- LayerNorm and Dropout (the "norm" layers) ---------------------------------------------
def _norm_model(seed: int | None = 3, device: str = "cpu") -> gb.Sequential:
    return gb.Sequential(
        [gb.Dense(4, 8, "relu"), gb.Dropout(0.5), gb.LayerNorm(8, eps=1e-4), gb.Dense(8, 3)],
        device=device, seed=seed,
    )


@pytest.mark.parametrize("seed", [3, None])
def test_norm_layers_round_trip_and_resume_the_same_masks(
    tmp_path: Path, seed: int | None, device: str
) -> None:
    """A resumed run draws the dropout masks the uninterrupted run draws (the generator
    state is in the file), also for an unseeded model (its random key is stored)."""
    x, y = _data()
    model = _norm_model(seed, device)
    opt = gb.optim.Adam(1e-2)
    model.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=32, verbose=False)
    path = tmp_path / "norm.safetensors"
    model.save(path, optimizer=opt)
    arch = json.loads(safetensors.safe_open(str(path), "np").metadata()["architecture"])
    assert arch["layers"][1:3] == [
        {"type": "Dropout", "p": 0.5},
        {"type": "LayerNorm", "normalized_shape": 8, "eps": 1e-4},
    ]
    loaded, opt2 = gb.load(path, device=device, with_optimizer=True)
    assert [layer.describe() for layer in loaded.layers] == [
        layer.describe() for layer in model.layers
    ]
    assert loaded.generator_states() == model.generator_states() == {1: (
        model.layers[1].generator_state()[0], 3,
    )}
    _assert_same_arrays(_params(loaded), _params(model))
    assert opt2 is not None
    for m, o in ((model, opt), (loaded, opt2)):
        m.fit(x, y, loss="cross_entropy", optimizer=o, epochs=1, batch_size=32, verbose=False)
    _assert_same_arrays(_params(loaded), _params(model))
    again = _norm_model(seed, device)
    again.load_state(path)
    assert again.generator_states() == {1: (model.layers[1].generator_state()[0], 3)}


def test_checkpoint_rejects_bad_generator_records(tmp_path: Path) -> None:
    path = tmp_path / "norm.safetensors"
    _norm_model().save(path)
    assert json.loads(
        safetensors.safe_open(str(path), "np").metadata()["generators"]
    )["1"][1] == 0
    for bad in ({"0": [1, 2]}, {"1": [1]}, {"1": [1, -2]}, {"1": [1, 2**64]}, [1, 2]):
        _edit(path, _set_meta("generators", bad), sign=True)
        with pytest.raises(gb.CheckpointError, match="generators must map the index of each"):
            gb.load(path, device="cpu")
    bad_p = tmp_path / "p.safetensors"
    _norm_model().save(bad_p)
    _edit(bad_p, _edit_meta_json(
        "architecture", lambda a: a["layers"][1].update(p=1.5)), sign=True)
    with pytest.raises(gb.CheckpointError, match=r"layer 1: Dropout: p must be"):
        gb.load(bad_p, device="cpu")
