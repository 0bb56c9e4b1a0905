"""PyTorch state dicts <-> Flax NNX params.

Our modules use the PyTorch attribute names, so one short table maps every architecture:

    <path>.kernel     <-> <path>.weight   transposed: torch Linear stores [out, in], Flax [in, out]
    <path>.embedding  <-> <path>.weight   Embed tables are [vocab, dim] in both
    <path>.scale      <-> <path>.weight   LayerNorm gain
    <path>.bias       <-> <path>.bias
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx

RULES = (  # (flax suffix, torch suffix, transpose)
    ("kernel", "weight", True),
    ("embedding", "weight", False),
    ("scale", "weight", False),
    ("bias", "bias", False),
)


def torch_key(path: tuple) -> tuple[str, bool]:
    """The PyTorch state-dict key for a Flax param path, and whether the tensor is transposed."""
    *head, leaf = (str(p) for p in path)
    for flax_name, torch_name, transpose in RULES:
        if leaf == flax_name:
            return ".".join([*head, torch_name]), transpose
    raise ValueError(f"no weight-mapping rule for param {'.'.join(map(str, path))}")


def read_state_dict(folder: str | Path, stem: str = "model") -> dict[str, np.ndarray]:
    """Read ``model.safetensors`` (single or sharded) from a folder; ``pytorch_model.bin`` only with torch.

    A ``.bin`` file is a pickle: it is read with ``torch.load(weights_only=True)`` and only when torch
    is importable; jaxst never unpickles anything itself.
    """
    folder = Path(folder)
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return _read_safetensors(single)
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            out.update(_read_safetensors(folder / shard))
        return out
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


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise OSError(f"corrupt or truncated weights file {path}: {e}") from e
    except Exception as e:  # the Rust reader can raise other error types on garbage headers
        raise OSError(f"corrupt or truncated weights file {path}: {e}") from e


def _find(state_dict: dict, key: str, prefixes: tuple[str, ...]):
    for prefix in ("", *prefixes):
        if prefix + key in state_dict:
            return state_dict[prefix + key]
    return None


def params_from_state_dict(module: nnx.Module, state_dict: dict, prefixes: tuple[str, ...] = ()) -> dict:
    """Fill the params of an (abstract) module from a PyTorch state dict; returns a pure nested dict.

    ``prefixes`` are tried before each key (``"bert."`` for checkpoints saved from a task model).
    Tensors the module does not use (pooler, position_ids, LM heads) are ignored; a missing or
    mis-shaped tensor is an error that names it.
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
        array = np.asarray(array, dtype=np.float32)
        if transpose:
            array = array.T
        if array.shape != shape:
            bad_shape.append(f"{key}: checkpoint {array.shape[::-1] if transpose else array.shape}, model {shape}")
            continue
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.ascontiguousarray(array)
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
