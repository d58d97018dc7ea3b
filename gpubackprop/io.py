"""Pickle-free checkpoints: the whole training state in one safetensors file.

::

    model.save("run.safetensors", optimizer=opt)         # atomic: all or nothing
    model = gb.load("run.safetensors", device="auto")    # the model, ready to predict
    model, opt = gb.load("run.safetensors", with_optimizer=True)  # to train on
    model.load_state("run.safetensors", optimizer=opt)   # into existing objects

A checkpoint is a `safetensors <https://github.com/huggingface/safetensors>`_ file
(an 8-byte little-endian header length, a JSON header, the raw little-endian tensor
bytes): ``safetensors.safe_open(path, "np")`` or ``"pt"`` reads it. Nothing is ever
unpickled: the loader checks the header, then the safetensors library the layout.

Tensors (all of the model's dtype, ``F32`` or ``F64``):

- ``model.<i>.weight``, ``model.<i>.bias``: layer i's parameters, as
  :meth:`Sequential.parameters` names them (W has shape (out, in)).
- ``optimizer.<name>``: the optimizer's state arrays (``momentum_buffer``;
  ``exp_avg``, ``exp_avg_sq``), flat, one entry per model parameter, in the order
  of the model's flat parameter buffer. Only the arrays that exist are stored.

``__metadata__`` (strings only; the structured ones are JSON):

- ``format``: ``"gpubackprop"``; ``format_version``: ``"1"``.
- ``gpubackprop_version``: the version that wrote the file.
- ``dtype``: ``"float32"`` or ``"float64"``.
- ``architecture``: JSON ``{"class": "Sequential", "seed": int | null (null when the
  seed was not an int), "precision": "fp32" | "tf32" (the model's matmul precision;
  files without it are "fp32"), "layers":
  [{"type": "Dense", "in_features", "out_features", "activation", "bias"} |
  {"type": "Activation", "activation"} | {"type": "LayerNorm", "normalized_shape", "eps"} |
  {"type": "Dropout", "p"} | {"type": "LSTM" | "GRU", "input_size", "hidden_size"} |
  {"type": "RNN", "input_size", "hidden_size", "nonlinearity"} |
  {"type": "Embedding", "num_embeddings", "embedding_dim"}, ...]}``.
- ``rng``: JSON of ``model.rng.bit_generator.state`` (the generator that shuffles in
  :meth:`Sequential.fit`), so resumed training draws the same batches.
- ``generators`` (only when a layer has a random generator: Dropout): JSON
  ``{"<i>": [seed, step], ...}``, layer i's Philox key and step counter, so a resumed
  run draws the same dropout masks.
- ``optimizer`` (only when one was saved): JSON ``{"type", "hyperparameters",
  "step_count", "num_params", "state": [names of the stored arrays]}``.
- ``sha256``: hex SHA-256 over a canonical JSON of the other metadata and of every
  tensor's name, dtype and shape, followed by the tensors' bytes in name order.

Loading validates everything before it allocates or changes anything (see
:func:`load`); every problem with the file raises :class:`CheckpointError`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal, NamedTuple, cast, overload

import numpy as np
import safetensors.numpy

from . import optim
from .backend import PRECISIONS, Backend, get_backend
from .distributed import current as current_communicator
from .errors import CheckpointError, ConfigError, GpuBackpropError
from .layers import Activation, Dense, Layer
from .layers_embedding import Embedding
from .layers_norm import Dropout, LayerNorm
from .layers_recurrent import GRU, LSTM
from .model import Sequential, check_optimizer
from .optim import Optimizer
from .params import resolve_dtype
from .rnn import RNN
from .version import __version__

__all__ = ["FORMAT_VERSION", "MAX_HEADER_BYTES", "Checkpoint", "load", "load_state", "save"]

PathLike = str | os.PathLike[str]

#: the layout version this module writes and reads
FORMAT_VERSION = 1
#: largest JSON header the loader reads (a longer one is rejected unread)
MAX_HEADER_BYTES = 100 * 2**20
#: most dimensions a stored tensor may have
_MAX_NDIM = 8

_FORMAT = "gpubackprop"
_ITEMSIZE = {"F32": 4, "F64": 8}
_CODE_OF = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}
_REQUIRED_METADATA = frozenset(
    {"format", "format_version", "gpubackprop_version", "dtype", "architecture", "rng", "sha256"}
)
_OPTIONAL_METADATA = frozenset({"optimizer", "generators"})
_ARCH_KEYS = frozenset({"class", "seed", "precision", "layers"})
_TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_LAYER_KEYS = {
    "Dense": frozenset({"type", "in_features", "out_features", "activation", "bias"}),
    "Activation": frozenset({"type", "activation"}),
    "LayerNorm": frozenset({"type", "normalized_shape", "eps"}),
    "Dropout": frozenset({"type", "p"}),
    "LSTM": frozenset({"type", "input_size", "hidden_size"}),
    "GRU": frozenset({"type", "input_size", "hidden_size"}),
    "RNN": frozenset({"type", "input_size", "hidden_size", "nonlinearity"}),
    "Embedding": frozenset({"type", "num_embeddings", "embedding_dim"}),
}
#: the gated recurrent layers, rebuilt from (input_size, hidden_size)
_GATED: dict[str, type[LSTM | GRU]] = {"LSTM": LSTM, "GRU": GRU}
#: "Dense, Activation, ... and RNN": the layer types a checkpoint holds, for messages
_LAYER_NAMES = ", ".join(list(_LAYER_KEYS)[:-1]) + f" and {list(_LAYER_KEYS)[-1]}"
_OPTIMIZER_KEYS = frozenset({"type", "hyperparameters", "step_count", "num_params", "state"})
_OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.__name__: cls for cls in (optim.SGD, optim.Adam, optim.AdamW)
}
_BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {
    name: getattr(np.random, name) for name in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
}


class Checkpoint(NamedTuple):
    """What ``gb.load(path, with_optimizer=True)`` returns: ``model, optimizer = ...``.

    ``optimizer`` is None when the checkpoint was saved without one.
    """

    model: Sequential
    optimizer: Optimizer | None


# --- saving ----------------------------------------------------------------------------
def save(model: Sequential, path: PathLike, optimizer: Optimizer | None = None) -> None:
    """Write ``model`` (and ``optimizer``'s state) to ``path`` as a checkpoint, atomically.

    Through a fsynced temporary file in the same folder renamed over ``path``: a save
    that fails part way leaves the previous file as it was and no temporary file.
    Raises CheckpointError for a layer type or optimizer checkpoints cannot hold, or
    an optimizer whose state belongs to a model of another size or dtype; an OSError
    naming ``path`` (FileNotFoundError: its folder does not exist; IsADirectoryError:
    it is a folder; PermissionError: the folder is not writable) when it cannot be written.

    In a data-parallel run (:func:`gpubackprop.distributed.init`) only rank 0 writes;
    on the other ranks this returns at once (every rank holds the same state). Call
    ``comm.barrier()`` before other ranks read the file.
    """
    comm = current_communicator()
    if comm is not None and comm.rank != 0:
        return
    host: dict[str, np.ndarray] = {
        f"model.{name}": _to_host(model.backend, view)
        for name, view in model.parameters().items()
    }
    metadata = {
        "format": _FORMAT,
        "format_version": str(FORMAT_VERSION),
        "gpubackprop_version": __version__,
        "dtype": model.dtype.name,
        "architecture": _dumps(
            {
                "class": "Sequential",
                "seed": _int_or_none(model.seed),
                "precision": model.precision,
                "layers": [_layer_spec(layer) for layer in model.layers],
            }
        ),
        "rng": _dumps(model.rng.bit_generator.state),
    }
    generators = model.generator_states()
    if generators:
        metadata["generators"] = _dumps({str(i): list(state) for i, state in generators.items()})
    if optimizer is not None:
        record, arrays = _optimizer_record(model, optimizer)
        metadata["optimizer"] = _dumps(record)
        host.update(arrays)
    metadata["sha256"] = _digest(metadata, host)
    _write_atomic(os.fspath(path), safetensors.numpy.save(host, metadata=metadata))


def _to_host(backend: Backend, array: Any) -> np.ndarray:
    """A C-contiguous little-endian NumPy copy (or view) of a device array."""
    host = backend.to_numpy(array)
    return np.ascontiguousarray(host, dtype=host.dtype.newbyteorder("<"))


def _int_or_none(seed: object) -> int | None:
    """The model's seed when it is an int (the generator state is stored apart), else None."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return int(seed)
    return None


def _dumps(value: object) -> str:
    """Compact JSON; NumPy arrays (in some bit generators' states) become lists."""

    def default(obj: object) -> object:
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")

    return json.dumps(value, separators=(",", ":"), allow_nan=False, default=default)


def _layer_spec(layer: Layer) -> dict[str, object]:
    """The JSON description of a layer of :data:`_LAYER_KEYS`; CheckpointError otherwise."""
    if type(layer) is Dense:
        return {
            "type": "Dense",
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "activation": layer.activation.name,
            "bias": layer.use_bias,
        }
    if type(layer) is Activation:
        return {"type": "Activation", "activation": layer.activation.name}
    if type(layer) is LayerNorm:
        return {"type": "LayerNorm", "normalized_shape": layer.features, "eps": layer.eps}
    if type(layer) is Dropout:
        return {"type": "Dropout", "p": layer.p}
    if type(layer) in (LSTM, GRU, RNN):
        assert isinstance(layer, (LSTM, GRU, RNN))
        spec: dict[str, object] = {
            "type": type(layer).__name__,
            "input_size": layer.input_size,
            "hidden_size": layer.hidden_size,
        }
        if isinstance(layer, RNN):
            spec["nonlinearity"] = layer.activation.name
        return spec
    if type(layer) is Embedding:
        return {
            "type": "Embedding",
            "num_embeddings": layer.num_embeddings,
            "embedding_dim": layer.embedding_dim,
        }
    raise CheckpointError(f"checkpoints hold {_LAYER_NAMES} layers only, got {layer.label}")


def _optimizer_record(
    model: Sequential, optimizer: Optimizer
) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """The optimizer's JSON record and its state arrays (host copies), checked against
    ``model``."""
    check_optimizer(optimizer)
    name = type(optimizer).__name__
    if _OPTIMIZERS.get(name) is not type(optimizer):
        raise CheckpointError(
            f"checkpoints hold {', '.join(_OPTIMIZERS)} optimizers only, got {name}"
        )
    state = optimizer.state_dict()
    size = state["num_params"]
    if size is not None and size != model.num_parameters:
        raise CheckpointError(
            f"the {name} optimizer holds state for {size} parameters but the model has "
            f"{model.num_parameters}; pass the optimizer that trains this model"
        )
    stored = cast(dict[str, Any], state["state"])  # state_dict() documents its value types
    arrays = {k: v for k, v in stored.items() if v is not None}
    for key, value in arrays.items():
        if value.dtype != model.dtype:
            raise CheckpointError(
                f"the {name} optimizer's state {key!r} is {value.dtype} but the model is "
                f"{model.dtype}"
            )
    record = {
        "type": name,
        "hyperparameters": optimizer.hyperparameters(),
        "step_count": state["step_count"],
        "num_params": size,
        "state": sorted(arrays),
    }
    host = {f"optimizer.{k}": _to_host(model.backend, v) for k, v in arrays.items()}
    return record, host


def _write_payload(file: IO[bytes], payload: bytes) -> None:
    """Write the checkpoint bytes (a seam: tests make it fail part way)."""
    file.write(payload)


def _write_atomic(path: str, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a fsynced temporary file and os.replace; the
    file gets the permissions of an ordinary new file (0o666 less the umask)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = _temporary_file(path, folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only
        with os.fdopen(fd, "wb") as file:
            _write_payload(file, payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if os.name == "posix":  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _temporary_file(path: str, folder: str) -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``folder`` for ``path``; an OSError names ``path`` (the
    user's), not the temporary file, and says what is wrong with the folder."""
    if os.path.isdir(path):
        example = os.path.join(path, "model.safetensors")
        raise IsADirectoryError(
            errno.EISDIR,
            f"cannot save the checkpoint: that is a folder; give a file path such as {example!r}",
            path,
        )
    try:
        return tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as exc:
        why = {
            FileNotFoundError: f"the folder {folder!r} does not exist (create it first: "
            "os.makedirs)",
            NotADirectoryError: f"{folder!r} is not a folder (a part of it is a file)",
            PermissionError: f"no permission to create files in the folder {folder!r}",
        }.get(type(exc), f"{exc.strerror} (in the folder {folder!r})")
        raise type(exc)(exc.errno, f"cannot save the checkpoint: {why}", path) from None


def _digest(metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over the metadata (less ``sha256``), each tensor's name, dtype code and
    shape, and then the tensors' bytes in name order (C-contiguous arrays)."""
    names = sorted(tensors)
    described = {
        "metadata": {k: v for k, v in metadata.items() if k != "sha256"},
        "tensors": [[n, _CODE_OF[tensors[n].dtype], list(tensors[n].shape)] for n in names],
    }
    h = hashlib.sha256(json.dumps(described, sort_keys=True, separators=(",", ":")).encode())
    for name in names:
        h.update(tensors[name].data)
    return h.hexdigest()


# --- reading and validating the file -------------------------------------------------------
class _File(NamedTuple):
    """A checkpoint whose header, layout and checksum were found valid."""

    metadata: dict[str, str]
    #: the tensors as the safetensors library read them
    tensors: dict[str, np.ndarray]


def _read(path: str) -> _File:
    """Read and validate ``path`` as :func:`load` lists: our cheap checks of the header
    first, then the ``safetensors`` library's of the layout as it reads, then the SHA-256."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        head = file.read(9)  # the header length, then the header's opening "{"
        _check_magic(head, size)
        header_len = int.from_bytes(head[:8], "little")
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"header length field says {header_len} bytes, more than the "
                f"{MAX_HEADER_BYTES}-byte limit: not a checkpoint, or corrupted"
            )
        if header_len > size - 8:
            raise CheckpointError(
                f"truncated or corrupted: the header length field says {header_len} bytes "
                f"but only {size - 8} follow it"
            )
        file.seek(8)
        header = _loads(file.read(header_len), "the header")
        if not isinstance(header, dict):
            raise CheckpointError("the header must be a JSON object")
        data_len = size - 8 - header_len
        for name, info in header.items():
            if name != "__metadata__":
                _check_tensor(name, info, data_len)
        metadata = _metadata(header)
    try:
        with safetensors.safe_open(path, framework="numpy") as reader:
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}
    except safetensors.SafetensorError as exc:
        raise CheckpointError(
            f"the safetensors library refused the layout ({exc}): a tensor overlaps "
            f"another or leaves a gap, or the {data_len} bytes after the header are "
            "truncated or corrupted, or have extra bytes"
        ) from None
    if _digest(metadata, tensors) != metadata["sha256"]:
        raise CheckpointError(
            "checksum mismatch: the file is corrupted (sha256 of its metadata and tensors "
            "differs from the one stored in it)"
        )
    return _File(metadata, tensors)


def _check_magic(head: bytes, size: int) -> None:
    """Name files that are plainly something else (never loading them)."""
    if size == 0:
        raise CheckpointError("empty file (0 bytes)")
    if head.startswith(b"\x93NUMPY"):
        raise CheckpointError(
            "this is a NumPy .npy file, not a gpubackprop checkpoint (it is not loaded: "
            ".npy files may hold pickled objects)"
        )
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise CheckpointError(
            "this is a zip archive (a NumPy .npz or PyTorch .pt file?), not a gpubackprop "
            "checkpoint"
        )
    # A safetensors header length can start with these two bytes too (640, 896, 1152,
    # 1408 bytes, ... + k·65536): only a file without the header's "{" at byte 8 is a pickle.
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[8:9] != b"{":
        raise CheckpointError(
            f"this is a Python pickle (protocol {head[1]}), not a gpubackprop checkpoint; "
            "gpubackprop never unpickles"
        )
    if size < 8:
        raise CheckpointError(
            f"truncated: {size} bytes, but a checkpoint starts with an 8-byte header length"
        )


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _loads(text: str | bytes, what: str) -> Any:
    """Strict JSON (UTF-8, no NaN/Infinity, no duplicate keys); CheckpointError otherwise."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{what} is not valid JSON: {exc}") from None


def _short(value: object) -> str:
    """``repr(value)`` cut to 200 characters, for messages about untrusted values."""
    try:
        text = repr(value)
    except RecursionError:
        return "<deeply nested value>"
    return text if len(text) <= 200 else text[:197] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tensor(name: str, info: object, data_len: int) -> None:
    """One tensor record of the header: an F32/F64 dtype, a shape and a byte range
    bounded by the ``data_len`` bytes of data, the range sized shape × itemsize. (How
    the ranges fit together is the safetensors library's check.)"""
    what = f"tensor {name!r}"
    if not isinstance(info, dict) or set(info) != _TENSOR_KEYS:
        raise CheckpointError(
            f"{what}: expected an object with keys {sorted(_TENSOR_KEYS)}, got {_short(info)}"
        )
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in _ITEMSIZE:
        raise CheckpointError(
            f"{what}: unsupported dtype {_short(code)}; checkpoints hold "
            f"{' and '.join(_ITEMSIZE)} tensors only"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_NDIM
        or not all(_is_int(d) and 0 <= d <= data_len for d in shape)
    ):
        raise CheckpointError(
            f"{what}: shape must be a list of at most {_MAX_NDIM} sizes between 0 and "
            f"the {data_len}-byte data size, got {_short(shape)}"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(
            f"{what}: data_offsets must be [begin, end] with 0 <= begin <= end, "
            f"got {_short(offsets)}"
        )
    if offsets[1] > data_len:
        raise CheckpointError(
            f"{what}: data_offsets {offsets} end past the {data_len} bytes of data in "
            "the file (truncated or corrupted)"
        )
    nbytes = math.prod(shape) * _ITEMSIZE[code]
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(
            f"{what}: shape {tuple(shape)} of {code} needs {nbytes} bytes but "
            f"data_offsets {offsets} span {offsets[1] - offsets[0]}"
        )


def _metadata(header: dict[str, Any]) -> dict[str, str]:
    """``__metadata__``: strings only, a gpubackprop checkpoint of a known version."""
    metadata = header.get("__metadata__")
    if metadata is None:
        raise CheckpointError(
            "not a gpubackprop checkpoint: a safetensors file without __metadata__"
        )
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("__metadata__ must be an object of strings")
    if metadata.get("format") != _FORMAT:
        raise CheckpointError(
            f"not a gpubackprop checkpoint: __metadata__ format is "
            f"{_short(metadata.get('format'))}, expected {_FORMAT!r}"
        )
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"unsupported format version {_short(version)}; this gpubackprop "
            f"({__version__}) reads version {FORMAT_VERSION}"
        )
    missing = sorted(_REQUIRED_METADATA - set(metadata))
    unknown = sorted(set(metadata) - _REQUIRED_METADATA - _OPTIONAL_METADATA)
    if missing or unknown:
        raise CheckpointError(
            f"__metadata__ is missing {missing} and has unknown keys {unknown}"
        )
    return metadata


# --- interpreting the metadata ---------------------------------------------------------------
def _dtype(file: _File) -> np.dtype:
    name = file.metadata["dtype"]
    if name not in ("float32", "float64"):
        raise CheckpointError(f"dtype must be 'float32' or 'float64', got {_short(name)}")
    return resolve_dtype(name)


def _architecture(file: _File) -> dict[str, Any]:
    arch = _loads(file.metadata["architecture"], "architecture")
    if (
        not isinstance(arch, dict)
        or not {"class", "seed", "layers"} <= set(arch) <= _ARCH_KEYS
        or arch["class"] != "Sequential"
        or not isinstance(arch["layers"], list)
    ):
        raise CheckpointError(
            'architecture must be {"class": "Sequential", "seed": ..., "layers": [...]} '
            '(and maybe "precision"), '
            f"got {_short(file.metadata['architecture'])}"
        )
    seed = arch["seed"]
    if seed is not None and not (_is_int(seed) and seed >= 0):
        raise CheckpointError(f"architecture seed must be null or an int >= 0, got {_short(seed)}")
    arch.setdefault("precision", "fp32")  # written since the "tf32" precision came
    if arch["precision"] not in PRECISIONS:
        raise CheckpointError(
            f"architecture precision must be one of {list(PRECISIONS)}, "
            f"got {_short(arch['precision'])}"
        )
    return arch


def _layer_from_spec(index: int, spec: object) -> Layer:
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str) or (
        spec["type"] not in _LAYER_KEYS
    ):
        raise CheckpointError(
            f"architecture layer {index}: expected one of the {_LAYER_NAMES} layers, "
            f"got {_short(spec)}"
        )
    keys = _LAYER_KEYS[spec["type"]]
    if set(spec) != keys:
        raise CheckpointError(
            f"architecture layer {index} ({spec['type']}) must have keys {sorted(keys)}, "
            f"got {sorted(spec)}"
        )
    try:
        if spec["type"] == "Activation":
            return Activation(spec["activation"])
        if spec["type"] == "LayerNorm":
            return LayerNorm(spec["normalized_shape"], spec["eps"])
        if spec["type"] == "Dropout":
            return Dropout(spec["p"])
        if spec["type"] in _GATED:
            return _GATED[spec["type"]](spec["input_size"], spec["hidden_size"])
        if spec["type"] == "RNN":  # its own buffers are a placeholder: the model's replace them
            return RNN(spec["input_size"], spec["hidden_size"], spec["nonlinearity"],
                       device="cpu")
        if spec["type"] == "Embedding":
            return Embedding(spec["num_embeddings"], spec["embedding_dim"])
        if not isinstance(spec["bias"], bool):
            raise ConfigError(f"bias must be true or false, got {_short(spec['bias'])}")
        return Dense(
            spec["in_features"], spec["out_features"], spec["activation"], bias=spec["bias"]
        )
    except ConfigError as exc:
        raise CheckpointError(f"architecture layer {index}: {exc}") from exc


@dataclass(frozen=True)
class _OptimizerSpec:
    """The optimizer record of a checkpoint, checked for shape (not yet for values)."""

    cls: type[Optimizer]
    hyperparameters: dict[str, Any]
    step_count: int
    num_params: int | None
    state: tuple[str, ...]

    def state_dict(self, file: _File, backend: Backend) -> dict[str, object]:
        """The :meth:`Optimizer.load_state_dict` snapshot, arrays on ``backend``."""
        stored = {name: backend.asarray(file.tensors[f"optimizer.{name}"]) for name in self.state}
        return {
            "type": self.cls.__name__,
            **self.hyperparameters,
            "step_count": self.step_count,
            "num_params": self.num_params,
            "state": {name: stored.get(name) for name in self.cls.state_names},
        }


def _optimizer_spec(file: _File) -> _OptimizerSpec | None:
    raw = file.metadata.get("optimizer")
    if raw is None:
        return None
    record = _loads(raw, "optimizer")
    if not isinstance(record, dict) or set(record) != _OPTIMIZER_KEYS:
        raise CheckpointError(
            f"optimizer must be an object with keys {sorted(_OPTIMIZER_KEYS)}, got {_short(raw)}"
        )
    cls = _OPTIMIZERS.get(record["type"]) if isinstance(record["type"], str) else None
    if cls is None:
        raise CheckpointError(
            f"unknown optimizer type {_short(record['type'])}; expected one of {list(_OPTIMIZERS)}"
        )
    hyper, steps, size, state = (
        record["hyperparameters"], record["step_count"], record["num_params"], record["state"]
    )
    if not isinstance(hyper, dict):
        raise CheckpointError(f"optimizer hyperparameters must be an object, got {_short(hyper)}")
    if not (_is_int(steps) and steps >= 0):
        raise CheckpointError(f"optimizer step_count must be an int >= 0, got {_short(steps)}")
    if size is not None and not (_is_int(size) and size >= 0):
        raise CheckpointError(
            f"optimizer num_params must be null or an int >= 0, got {_short(size)}"
        )
    names = cls.state_names
    if (
        not isinstance(state, list)
        or not all(isinstance(n, str) and n in names for n in state)
        or len(set(state)) != len(state)
        or (size is None and state)
    ):
        raise CheckpointError(
            f"optimizer state must list distinct names among {list(names)} (none before "
            f"the first step), got {_short(state)}"
        )
    return _OptimizerSpec(cls, hyper, steps, size, tuple(state))


def _check_hyperparameter_names(spec: _OptimizerSpec, optimizer: Optimizer) -> None:
    expected = set(optimizer.hyperparameters())
    if set(spec.hyperparameters) != expected:
        raise CheckpointError(
            f"optimizer {spec.cls.__name__} hyperparameters must be {sorted(expected)}, "
            f"got {sorted(spec.hyperparameters)}"
        )


def _rng(file: _File) -> np.random.Generator:
    """A new Generator in the stored bit-generator state (CheckpointError if invalid)."""
    state = _loads(file.metadata["rng"], "rng")
    name = state.get("bit_generator") if isinstance(state, dict) else None
    cls = _BIT_GENERATORS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise CheckpointError(
            f"rng must be a NumPy bit generator state ({', '.join(_BIT_GENERATORS)}), "
            f"got {_short(file.metadata['rng'])}"
        )
    bit_generator = cls()
    try:
        bit_generator.state = state
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
        raise CheckpointError(f"rng: invalid {name} state: {exc}") from exc
    return np.random.Generator(bit_generator)


def _generators(file: _File, layers: list[Layer]) -> dict[int, tuple[int, ...]]:
    """The stored generator states, layer index -> (seed, step), checked against ``layers``
    (only Dropout layers have one); {} when the file stores none."""
    raw = file.metadata.get("generators")
    if raw is None:
        return {}
    record = _loads(raw, "generators")
    wanted = {str(i) for i, layer in enumerate(layers) if type(layer) is Dropout}
    if not isinstance(record, dict) or set(record) != wanted or not all(
        isinstance(v, list) and len(v) == 2 and all(_is_int(w) and 0 <= w < 2**64 for w in v)
        for v in record.values()
    ):
        raise CheckpointError(
            f"generators must map the index of each Dropout layer {sorted(wanted)} to "
            f"[seed, step] (ints in [0, 2**64)), got {_short(raw)}"
        )
    return {int(i): tuple(v) for i, v in record.items()}


def _compare(
    file: _File,
    dtype: np.dtype,
    expected: dict[str, tuple[int, ...]],
    spec: _OptimizerSpec | None,
    extra: list[str],
) -> None:
    """CheckpointError listing missing, unexpected and mismatched-shape tensors, tensors
    of another dtype, and the ``extra`` problems, if there are any. ``expected``: the
    model's tensors; the optimizer's (``spec``) hold one entry per model parameter."""
    num_params = sum(math.prod(shape) for shape in expected.values())
    if spec is not None:
        expected = {**expected, **{f"optimizer.{name}": (num_params,) for name in spec.state}}
        if spec.num_params not in (None, num_params):
            extra = [
                *extra, f"optimizer num_params (checkpoint {spec.num_params}, model {num_params})"
            ]
    code, tensors = _CODE_OF[dtype], file.tensors
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    mismatched = [
        f"{name} (checkpoint {tensors[name].shape}, expected {shape})"
        for name, shape in expected.items()
        if name in tensors and tensors[name].shape != shape
    ]
    wrong_dtype = [
        f"{name} ({_CODE_OF[a.dtype]})" for name, a in tensors.items() if a.dtype != dtype
    ]
    problems = [
        f"{label}: {', '.join(items)}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mismatched shapes", mismatched),
            (f"not {code} like the {dtype.name} model", wrong_dtype),
            ("mismatched", extra),
        )
        if items
    ]
    if problems:
        raise CheckpointError(
            "the checkpoint does not fit the architecture; " + "; ".join(problems)
        )


def _commit(
    model: Sequential,
    file: _File,
    rng: np.random.Generator,
    optimizer: Optimizer | None,
    spec: _OptimizerSpec | None,
    generators: dict[int, tuple[int, ...]],
) -> None:
    """Copy the validated state in: the optimizer first (its own load_state_dict
    validates fully before it assigns), so a refusal leaves the model unchanged."""
    if optimizer is not None:
        assert spec is not None
        try:
            optimizer.load_state_dict(spec.state_dict(file, model.backend))
        except GpuBackpropError as exc:
            raise CheckpointError(f"optimizer state: {exc}") from exc
    with model.backend.activate():
        for name, view in model.parameters().items():
            view[...] = model.backend.asarray(file.tensors[f"model.{name}"])
    model.rng = rng
    model.set_generator_states(generators)


@contextlib.contextmanager
def _reading(path: PathLike) -> Iterator[tuple[_File, np.dtype, dict[str, Any]]]:
    """The validated file, its dtype and architecture; every CheckpointError raised
    here or inside the block is prefixed with the file's path."""
    name = os.fspath(path)
    try:
        file = _read(name)
        yield file, _dtype(file), _architecture(file)
    except CheckpointError as exc:
        exc.args = (f"{name}: {exc}",)
        raise


# --- loading ---------------------------------------------------------------------------------
@overload
def load(
    path: PathLike, device: str | Backend = ..., *, with_optimizer: Literal[False] = ...
) -> Sequential: ...
@overload
def load(
    path: PathLike, device: str | Backend = ..., *, with_optimizer: Literal[True]
) -> Checkpoint: ...
@overload
def load(
    path: PathLike, device: str | Backend = ..., *, with_optimizer: bool
) -> Sequential | Checkpoint: ...
def load(
    path: PathLike, device: str | Backend = "auto", *, with_optimizer: bool = False
) -> Sequential | Checkpoint:
    """Rebuild the model (and, on request, the optimizer) from a checkpoint.

    Returns a new :class:`Sequential` on ``device`` (any device, whatever the saving
    one) with the saved architecture, precision, dtype, seed, parameters and generator
    state: ``gb.load(path).predict(x)``. With ``with_optimizer=True``, a
    :class:`Checkpoint` ``(model, optimizer)`` instead, the optimizer new, of the saved
    type, hyper-parameters, step count and state, or None when the file was saved
    without one (``model.save(path)``); one read of the file either way.

    Everything is validated before anything is allocated: magic bytes (pickles, .npy
    and zip files are named and refused), the header length (100 MiB limit, file
    size), the JSON header, each tensor's dtype (F32/F64), shape and byte range, the
    format version, the layout (by the safetensors library), the SHA-256, the
    architecture, optimizer and generator records, and that the tensors are exactly
    those the architecture needs (a saved optimizer is validated too when it is not
    asked for). Raises CheckpointError naming the problem, DeviceError for an
    unavailable device, OSError when the file cannot be read.
    """
    if not isinstance(with_optimizer, bool):
        raise ConfigError(f"load: with_optimizer must be True or False, got {with_optimizer!r}")
    backend = get_backend(device)
    with _reading(path) as (file, dtype, arch):
        layers = [_layer_from_spec(i, spec) for i, spec in enumerate(arch["layers"])]
        if not layers:
            raise CheckpointError("architecture has no layers")
        expected = {
            f"model.{i}.{param}": shape
            for i, layer in enumerate(layers)
            for param, shape in layer.param_shapes()
        }
        spec = _optimizer_spec(file)
        optimizer = None
        if spec is not None:
            try:
                optimizer = spec.cls(**spec.hyperparameters)
            except (ConfigError, TypeError) as exc:
                raise CheckpointError(f"optimizer {spec.cls.__name__}: {exc}") from exc
            _check_hyperparameter_names(spec, optimizer)
        _compare(file, dtype, expected, spec, [])
        rng = _rng(file)
        generators = _generators(file, layers)
        try:
            model = Sequential(
                layers, device=backend, dtype=dtype, seed=arch["seed"], precision=arch["precision"]
            )
        except GpuBackpropError as exc:  # ShapeError: widths that do not chain
            raise CheckpointError(f"architecture: {exc}") from exc
        _commit(model, file, rng, optimizer, spec, generators)
    return Checkpoint(model, optimizer) if with_optimizer else model


def load_state(model: Sequential, path: PathLike, optimizer: Optimizer | None = None) -> None:
    """Load a checkpoint into an existing ``model`` (and ``optimizer``), in place.

    The model must have the saved architecture and dtype; its parameters (on its own
    device) and random generator take the saved values; it keeps its precision. With
    ``optimizer``, the checkpoint must hold state of that optimizer type, which replaces
    its hyper-parameters, step count and state; without, saved state is validated and
    ignored. The file is validated as in :func:`load` and against the model (missing,
    unexpected and mismatched tensors and layers are listed) before anything is
    copied: after a CheckpointError neither the model nor the optimizer has changed.
    """
    if optimizer is not None:
        check_optimizer(optimizer)
    with _reading(path) as (file, dtype, arch):
        ours = [_layer_spec(layer) for layer in model.layers]
        theirs = arch["layers"]
        layer_problems = [
            f"layer {i} (checkpoint {_short(a)}, model {b!r})"
            for i, (a, b) in enumerate(zip(theirs, ours, strict=False))
            if a != b
        ]
        if len(theirs) != len(ours):
            layer_problems.append(f"layer count (checkpoint {len(theirs)}, model {len(ours)})")
        if dtype != model.dtype:
            layer_problems.append(f"dtype (checkpoint {dtype.name}, model {model.dtype.name})")
        expected = {f"model.{k}": tuple(v.shape) for k, v in model.parameters().items()}
        spec = _optimizer_spec(file)
        _compare(file, model.dtype, expected, spec, layer_problems)
        if optimizer is not None:
            if spec is None:
                raise CheckpointError(
                    "the checkpoint holds no optimizer state (it was saved without one)"
                )
            if type(optimizer) is not spec.cls:
                raise CheckpointError(
                    f"the checkpoint holds {spec.cls.__name__} state, "
                    f"got a {type(optimizer).__name__} optimizer"
                )
            _check_hyperparameter_names(spec, optimizer)
        rng = _rng(file)
        generators = _generators(file, model.layers)
        _commit(model, file, rng, optimizer, spec, generators)
