"""Data-parallel encoding over a device mesh, on one host or several.

One host: ``encode`` splits each padded batch along its rows over a 1-D mesh of the local devices
(``jax.sharding.Mesh`` + ``NamedSharding``), with the params replicated on every device; jit runs
one program per device on its share of the rows and the rows come back in order. This is the JAX
answer to sentence-transformers' ``start_multi_process_pool``: the same ``pool=`` code, no worker
processes.

Several hosts: every process runs the same script under ``jax.distributed.initialize()``, encodes
its contiguous share of the texts on its own devices (``process_shard``) and ``gather_rows`` puts
the shares back together, in input order, on every process (``encode_distributed`` does both).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXIS = "batch"  # the one mesh axis: rows of a batch


def resolve_device(device) -> jax.Device | None:
    """``"cpu"``, ``"cuda"``/``"gpu"``, ``"tpu"`` (optionally ``":N"``) or a ``jax.Device``; None stays None."""
    if device is None or isinstance(device, jax.Device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string or a jax.Device, got {type(device).__name__}")
    name, _, index = device.partition(":")
    backend = {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu", "tpu": "tpu"}.get(name.lower())
    if backend is None:
        raise ValueError(f"unknown device {device!r}; expected 'cpu', 'cuda', 'gpu', 'tpu' or a jax.Device")
    try:
        devices = jax.local_devices(backend=backend)  # under jax.distributed, only this process's devices
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not available: {e}") from None
    i = int(index) if index else 0
    if i >= len(devices):
        raise ValueError(f"device {device!r} is not available: {backend} has {len(devices)} device(s)")
    return devices[i]


def resolve_devices(devices) -> list[jax.Device]:
    """Device names or ``jax.Device`` objects -> distinct devices, in order.

    ``None`` means every local device of the default backend. A name with an index (``"cuda:1"``,
    ``"cpu:3"``) is that device; a bare name (``"cpu"``, ``"cuda"``, ``"tpu"``) is the next device of
    that kind not yet taken, so sentence-transformers' ``["cpu"] * 4`` gives four CPU devices where
    there are four (and as many as there are, where fewer)."""
    if devices is None:
        return list(jax.local_devices())
    if isinstance(devices, (str, jax.Device)):
        devices = [devices]
    if not isinstance(devices, (list, tuple)) or not devices:
        raise TypeError(f"target devices must be a non-empty list of device names or jax.Devices, got {devices!r}")
    chosen: list[jax.Device] = []
    for d in devices:
        if isinstance(d, str) and ":" not in d:
            first = resolve_device(d)  # validates the name
            free = [x for x in jax.local_devices(backend=first.platform) if x not in chosen]
            if free:
                chosen.append(free[0])
            continue
        dev = resolve_device(d)
        if dev not in chosen:
            chosen.append(dev)
    return chosen


def data_mesh(devices) -> Mesh:
    """A 1-D mesh whose one axis, ``"batch"``, runs over ``devices``."""
    return Mesh(np.asarray(devices, dtype=object), (BATCH_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def row_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXIS))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Put a tokenized batch on ``mesh``: (B, ...) arrays split by rows, scalars replicated.

    B must be a multiple of the mesh size (``encode`` pads its batches so)."""
    rows, whole = row_sharded(mesh), replicated(mesh)
    return {k: jax.device_put(v, rows if np.ndim(v) else whole) for k, v in batch.items()}


# ------------------------------------------------------------------------------------ several hosts


def process_shard(texts: list, process_index: int | None = None, process_count: int | None = None) -> list:
    """This process's contiguous share of ``texts``: shares differ in size by at most one and, joined in
    process order, give back ``texts``."""
    i = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    start, stop = (len(texts) * i) // n, (len(texts) * (i + 1)) // n
    return texts[start:stop]


def gather_rows(local) -> np.ndarray:
    """Concatenate every process's rows, in process order, on every process.

    Shares may differ in row count: they are padded to the longest, gathered with
    ``multihost_utils.process_allgather`` and trimmed. With one process this returns ``local``."""
    from jax.experimental import multihost_utils

    local = np.asarray(local)
    if jax.process_count() == 1:
        return local
    counts = np.asarray(multihost_utils.process_allgather(np.asarray([local.shape[0]], np.int64))).reshape(-1)
    longest = int(counts.max())
    padded = np.zeros((longest, *local.shape[1:]), local.dtype)
    padded[: local.shape[0]] = local
    everything = np.asarray(multihost_utils.process_allgather(padded))  # (processes, longest, ...)
    return np.concatenate([everything[p, : counts[p]] for p in range(len(counts))])


def encode_distributed(model, texts: list, **encode_kwargs) -> np.ndarray:
    """Every process calls this with the same ``texts``; each encodes its share (``process_shard``) on its
    own devices and every process gets all the embeddings, in input order (numpy)."""
    if encode_kwargs.get("precision", "float32") in ("int8", "uint8"):
        raise ValueError("int8/uint8 ranges would differ between the processes' shares: encode in float32, "
                         "gather, then quantize_embeddings the whole set")
    encode_kwargs["convert_to_numpy"] = True
    encode_kwargs["convert_to_tensor"] = False
    local = model.encode(process_shard(list(texts)), **encode_kwargs)
    return gather_rows(local)


__all__ = [
    "BATCH_AXIS",
    "data_mesh",
    "encode_distributed",
    "gather_rows",
    "process_shard",
    "replicated",
    "resolve_device",
    "resolve_devices",
    "row_sharded",
    "shard_batch",
]
