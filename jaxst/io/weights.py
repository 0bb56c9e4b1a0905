"""PyTorch state dicts <-> Flax NNX params.

Our modules use the PyTorch attribute names, so one short table maps every architecture:

    <path>.kernel     <-> <path>.weight   transposed: torch Linear stores [out, in], Flax [in, out]
    <path>.embedding  <-> <path>.weight   Embed tables are [vocab, dim] in both
    <path>.scale      <-> <path>.weight   LayerNorm gain
    <path>.bias       <-> <path>.bias
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np
from flax import nnx

RULES = (  # (flax suffix, torch suffix, transpose)
    ("kernel", "weight", True),
    ("embedding", "weight", False),
    ("scale", "weight", False),
    ("bias", "bias", False),
    ("pre_bias", "pre_bias", False),  # SparseAutoEncoder's own parameters, named as PyTorch names them
    ("latent_bias", "latent_bias", False),
    ("layer_weights", "layer_weights", False),  # WeightedLayerPooling's
)


def torch_key(path: tuple) -> tuple[str, bool]:
    """The PyTorch state-dict key for a Flax param path, and whether the tensor is transposed."""
    *head, leaf = (str(p) for p in path)
    for flax_name, torch_name, transpose in RULES:
        if leaf == flax_name:
            return ".".join([*head, torch_name]), transpose
    raise ValueError(f"no weight-mapping rule for param {'.'.join(map(str, path))}")


# safetensors dtype names -> numpy dtypes (bfloat16 and float8 from ml_dtypes, which numpy lacks).
SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class SafetensorsFile:
    """The tensors of one ``.safetensors`` file, read one at a time: ``file[name]`` reads just that tensor
    (into memory of its own, so a loaded model does not keep the file's pages resident beside its params).
    Reads every dtype of the format, bfloat16 included (safetensors' own numpy reader refuses it); a
    truncated or damaged file is an OSError naming it.

    The header is checked as the safetensors library checks it (which PyTorch users load these files with),
    so jaxst accepts no file that library refuses: a JSON object of at most 100 MB, each tensor a known dtype,
    a shape of non-negative integers and ``data_offsets`` [start, end) holding exactly its bytes, and the
    tensors, in offset order, tiling the data: the first starts at 0, each starts where the one before ends
    (no overlap, no gap) and the last ends at the end of the file."""

    MAX_HEADER = 100_000_000  # safetensors' own limit (HeaderTooLarge)

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                n = int.from_bytes(f.read(8), "little") if size >= 8 else -1
                if not 0 < n <= size - 8:
                    raise ValueError(f"header length {n} does not fit a file of {size} bytes")
                if n > self.MAX_HEADER:
                    raise ValueError(f"header of {n} bytes exceeds the format's {self.MAX_HEADER}")
                header = json.loads(f.read(n))
            if not isinstance(header, dict):
                raise ValueError(f"header is {type(header).__name__}, not a JSON object")
            self._start = 8 + n
            self._entries = {k: v for k, v in header.items() if k != "__metadata__"}
            spans = []
            for name, entry in self._entries.items():
                start, end = entry["data_offsets"]
                shape = entry["shape"]
                if not all(type(v) is int and v >= 0 for v in (start, end, *shape)) or not isinstance(shape, list):
                    raise ValueError(f"tensor {name!r} has a bad shape {shape!r} or data_offsets {[start, end]!r}")
                nbytes = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]]).itemsize * math.prod(shape)
                if end - start != nbytes:
                    raise ValueError(f"tensor {name!r} spans {end - start} bytes; its dtype and shape need {nbytes}")
                spans.append((start, end, name))
            covered = 0
            for start, end, name in sorted(spans):
                if start != covered:
                    raise ValueError(f"tensor {name!r} starts at byte {start} of the data, where "
                                     + ("it overlaps the tensor before" if start < covered else
                                        f"a gap follows byte {covered}")
                                     + ": tensors must tile the data")
                covered = end
            if covered != size - self._start:
                raise ValueError(f"the tensors cover {covered} bytes of the {size - self._start} of data after the "
                                 "header (truncated, or trailing bytes)")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, RecursionError) as e:
            raise OSError(f"corrupt or truncated weights file {self.path}: {e}") from e

    def keys(self):
        return self._entries.keys()

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]])
        count = math.prod(entry["shape"])
        offset = self._start + entry["data_offsets"][0]
        return np.fromfile(self.path, dtype=dtype, count=count, offset=offset).reshape(entry["shape"])


class LazyStateDict(Mapping):
    """A checkpoint's tensors by name, each read from its file only when asked for; a
    sharded checkpoint's ``*.safetensors.index.json`` says which file holds which tensor. A model then
    loads tensor by tensor, never holding the whole checkpoint in memory beside its params."""

    def __init__(self, files: list[Path]):
        self._where: dict[str, SafetensorsFile] = {}
        for path in files:
            opened = SafetensorsFile(path)
            self._where.update(dict.fromkeys(opened.keys(), opened))

    def __getitem__(self, name: str) -> np.ndarray:
        return self._where[name][name]

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def files(self) -> list[Path]:
        return list(dict.fromkeys(f.path for f in self._where.values()))


def open_state_dict(folder: str | Path, stem: str = "model") -> Mapping[str, np.ndarray]:
    """The weights of a folder as a mapping: ``model.safetensors`` or its shards (lazily, see
    ``LazyStateDict``); ``pytorch_model.bin`` only when torch is installed (read whole).

    A ``.bin`` file is a pickle: it is read with ``torch.load(weights_only=True)`` and only when torch
    is importable; jaxst never unpickles anything itself.
    """
    folder = Path(folder)
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return LazyStateDict([single])
    if index.is_file():
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise OSError(f"corrupt checkpoint index {index}: {e}") from e
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise OSError(f"checkpoint shards listed in {index} are missing: {missing}")
        return LazyStateDict([folder / s for s in shards])
    legacy = folder / ("pytorch_model.bin" if stem == "model" else f"{stem}.bin")
    if legacy.is_file():
        try:
            import torch
        except ImportError:
            raise OSError(
                f"{legacy} is a pickled PyTorch checkpoint; jaxst reads it only when torch is installed "
                "(convert it to model.safetensors to load without torch)"
            ) from None
        try:
            sd = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as e:
            raise OSError(f"could not read weights file {legacy}: {e}") from e
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
    raise OSError(f"no weights in {folder}: expected {single.name} (or {legacy.name})")


def checkpoint_header(folder: str | Path, stem: str = "model") -> LazyStateDict | None:
    """The safetensors checkpoint of a folder with its headers read and checked, no tensor data (names and
    shapes, to check a config against before building anything); None where the weights are a pickled
    ``.bin`` or missing (``open_state_dict`` then says what it finds)."""
    folder = Path(folder)
    if (folder / f"{stem}.safetensors").is_file() or (folder / f"{stem}.safetensors.index.json").is_file():
        return open_state_dict(folder, stem)
    return None


def read_state_dict(folder: str | Path, stem: str = "model") -> dict[str, np.ndarray]:
    """Every tensor of ``open_state_dict(folder, stem)``, read now, in a plain dict."""
    return dict(open_state_dict(folder, stem))


def _find(state_dict: Mapping, key: str, prefixes: tuple[str, ...]):
    for prefix in ("", *prefixes):
        if prefix + key in state_dict:
            return state_dict[prefix + key]
    return None


def params_from_state_dict(module: nnx.Module, state_dict: Mapping, prefixes: tuple[str, ...] = (),
                           place: Callable | None = None) -> dict:
    """Fill the params of an (abstract) module from a PyTorch state dict; returns a pure nested dict.

    ``prefixes`` are tried before each key (``"bert."`` for checkpoints saved from a task model).
    Tensors the module does not use (pooler, position_ids, LM heads) are ignored; a missing or
    mis-shaped tensor is an error that names it. ``place(path, array)`` turns each float32 numpy
    array into what the params hold (a cast, a device array with its sharding) as soon as it is read,
    so a lazily read checkpoint is never in memory whole beside the params; by default they stay numpy.
    """
    _, abstract = nnx.split(module, nnx.Param)
    params: dict = {}
    missing, bad_shape = [], []
    for path, var in nnx.to_flat_state(abstract):
        key, transpose = torch_key(path)
        array = _find(state_dict, key, prefixes)
        shape = tuple(var.get_value().shape)
        if array is None:
            missing.append(key)
            continue
        if tuple(array.shape[::-1] if transpose else array.shape) != shape:
            bad_shape.append(f"{key}: checkpoint {tuple(array.shape)}, model {shape[::-1] if transpose else shape}")
            continue
        if missing or bad_shape:
            continue  # the load fails below: read no more tensors
        array = np.asarray(array, dtype=np.float32)
        array = np.ascontiguousarray(array.T if transpose else array)
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = array if place is None else place(path, array)
    if missing or bad_shape:
        raise ValueError(
            "checkpoint does not fit the model: "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and bad_shape else "")
            + (f"wrong shape {bad_shape}" if bad_shape else "")
        )
    return params


def state_dict_from_params(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """The inverse mapping: a pure params dict -> PyTorch-named, PyTorch-laid-out float32 numpy arrays.

    ``prefix`` is prepended to every name (``"bert."`` for the encoder inside a task checkpoint). Keys
    may be ints (``nnx.List`` indices) or strings (params restored from orbax without a target); both map
    to the same name. Leaves of any float dtype (bfloat16 after a cast) are written as float32, the
    layout sentence-transformers and transformers load by default.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a nested dict of arrays, got {type(params).__name__}")
    out: dict[str, np.ndarray] = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
            return
        if not hasattr(node, "shape") or not hasattr(node, "dtype"):
            raise TypeError(f"param {'.'.join(map(str, path))} is {type(node).__name__}, not an array")
        key, transpose = torch_key(path)
        array = np.asarray(node).astype(np.float32, copy=False)
        out[prefix + key] = np.ascontiguousarray(array.T if transpose else array)

    walk(params, ())
    return out
