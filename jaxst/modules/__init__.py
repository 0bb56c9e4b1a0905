"""The module registry: one file per sentence-transformers module kind, each holding one ``ModuleKind`` named
``KIND`` (its modules.json class names, the config file it reads, the type and folder it is saved under, the
family it marks, whether it is a head, what runs it) and, beside it, what the kind is made of: its NNX module or
host object, the builder from its saved config, its params' loading where it has tensors (``dense.py``:
``Dense``, ``head``, the activation names both ways; ``sparse_autoencoder.py``: ``SparseAutoEncoder``,
``CSREncoder``, ``build``, ``load_params``; ...) and what it writes when saved (``ModuleKind.files``: its
``save`` function, or its config and head params). The folder reader (``jaxst.io.folder``) and writer
(``jaxst.io.export``, which only lays the folder out) and the facades ask this registry; a new module kind is
one new file here, and the facade of its family composes it.

    modules.json "type" ──kind_of_type──▶ ModuleKind ──▶ config file to read / type and folder to write
    specs in modules.json order ──head_indices──▶ index into module.heads / params["heads"], assigned once

The files are found by scanning the package (those whose names start with ``_`` are not kinds), on first use
of ``KINDS`` or a function here, not at import: the kind files hold NNX modules, and importing this package (as
``jaxst --help`` does through ``jaxst.io.family``) must not import JAX. It sits
between the functional core and io: it builds on the core (``jaxst.pipeline``, ``jaxst.sparse``,
``jaxst.pooling``) and imports neither io nor anything above it.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Iterable

from jaxst.modules._kind import FAMILIES, ModuleFiles, ModuleKind, SaveContext


@functools.cache
def _registry() -> tuple[dict[str, ModuleKind], dict[str, str]]:
    """``(KINDS, CLASS_KINDS)``: the package scanned once."""
    kinds: dict[str, ModuleKind] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        found = getattr(importlib.import_module(f"{__name__}.{info.name}"), "KIND", None)
        if not isinstance(found, ModuleKind):
            raise TypeError(f"{__name__}.{info.name} defines no KIND = ModuleKind(...)")
        if found.kind in kinds:
            raise ValueError(f"module kind {found.kind!r} is defined twice ({__name__}.{info.name})")
        kinds[found.kind] = found
    class_kinds: dict[str, str] = {}
    for k in kinds.values():
        for name in k.class_names:
            if class_kinds.setdefault(name, k.kind) != k.kind:
                raise ValueError(f"class name {name!r} is claimed by {class_kinds[name]!r} and {k.kind!r}")
    return kinds, class_kinds


def __getattr__(name: str):
    """``KINDS`` (kind id -> its description) and ``CLASS_KINDS`` (modules.json class name, the type's last
    component -> kind id), scanned on first access."""
    if name == "KINDS":
        return _registry()[0]
    if name == "CLASS_KINDS":
        return _registry()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def by_kind(kind: str) -> ModuleKind:
    """The description of a kind id (``ModuleSpec.kind``); a KeyError naming the known ones for anything else."""
    try:
        return _registry()[0][kind]
    except KeyError:
        raise KeyError(f"unknown module kind {kind!r}; jaxst knows {sorted(_registry()[0])}") from None


def kind_of_type(type_name: str) -> ModuleKind | None:
    """The kind a modules.json class path (or bare class name) means, by its last component; None if no kind
    claims it. (Whether the path is sentence-transformers' own is the folder reader's check.)"""
    kinds, class_kinds = _registry()
    kind = class_kinds.get(type_name.rsplit(".", 1)[-1])
    return None if kind is None else kinds[kind]


def family_kinds(family: str) -> tuple[str, ...]:
    """The kind ids whose presence marks ``family`` ("SparseEncoder", "MultiVectorEncoder", "CrossEncoder")."""
    if family not in FAMILIES:
        raise ValueError(f"no module kind marks {family!r}; families: {FAMILIES}")
    return tuple(k.kind for k in _registry()[0].values() if k.family == family)


def _kind_name(spec) -> str:
    return spec if isinstance(spec, str) else spec.kind


def head_indices(specs: Iterable) -> list[int | None]:
    """For each spec (anything with ``.kind``, or a kind id), in order: its index into the facade's heads
    (``module.heads`` and ``params["heads"]``), None for a module that is not a head. The heads (Dense,
    Normalize, a Stanford projection) are numbered 0, 1, ... in pipeline order; this is the one place that
    index is assigned, for loading and saving alike."""
    indices, n = [], 0
    for spec in specs:
        if by_kind(_kind_name(spec)).head:
            indices.append(n)
            n += 1
        else:
            indices.append(None)
    return indices


def param_heads(specs: Iterable) -> list[tuple[int, object]]:
    """``(index into params["heads"], spec)`` for the heads among ``specs`` that carry params (Dense, a
    Stanford projection), in order."""
    specs = list(specs)
    return [(i, spec) for spec, i in zip(specs, head_indices(specs)) if i is not None
            and by_kind(_kind_name(spec)).head_params]


__all__ = ["CLASS_KINDS", "FAMILIES", "KINDS", "ModuleFiles", "ModuleKind", "SaveContext", "by_kind",
           "family_kinds", "head_indices", "kind_of_type", "param_heads"]
