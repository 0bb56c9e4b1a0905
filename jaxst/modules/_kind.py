"""What one sentence-transformers module kind is, as data: ``ModuleKind``. Each file of ``jaxst.modules`` holds one."""

from __future__ import annotations

import dataclasses
import importlib

FAMILIES = ("SparseEncoder", "MultiVectorEncoder", "CrossEncoder")  # the families a module kind can mark


@dataclasses.dataclass(frozen=True)
class ModuleKind:
    """One module kind of the sentence-transformers folder format, and everything jaxst knows of it.

    ``kind``: jaxst's id (``ModuleSpec.kind``). ``class_names``: the last components of the modules.json /
    router_config.json class paths that mean it (none: jaxst makes it itself, never reads it by name).
    ``type_path``: the modules.json type jaxst writes for it (the long-standing ``sentence_transformers.models``
    name where one exists: every sentence-transformers since 2.x resolves it). ``v6_type_path``:
    sentence-transformers 6's own class path (what a SparseEncoder folder names). ``folder_name``: the module
    folder on export is ``{idx}_{folder_name}``; None where it sits at the root or keeps the name it was loaded
    under. ``config_files``: where its settings are, tried in order (an empty or missing file moves on to the
    next); ``config_required``: the last one must exist. ``family``: the model family its presence marks, or
    None for the shared kinds. ``head``: it takes a slot in a facade's ``module.heads`` / ``params["heads"]``
    (numbered by ``jaxst.modules.head_indices``); ``head_params``: and carries params there. ``forward``:
    ``"module:attribute"`` of what runs it, mostly in its own file (None: the Transformer, built by
    ``jaxst.models``; the Router and the LLM reranker's logit score, composed by their facades). ``save``:
    ``"module:function"`` that says what the module writes (``(spec, SaveContext) -> ModuleFiles``); None:
    its config as loaded, updated by the family's current settings, and its ``params["heads"]`` slot when it
    has ``head_params`` (``files``).
    """

    kind: str
    class_names: tuple[str, ...] = ()
    type_path: str | None = None
    v6_type_path: str | None = None
    folder_name: str | None = None
    config_files: tuple[str, ...] = ("config.json",)
    config_required: bool = False
    family: str | None = None
    head: bool = False
    head_params: bool = False
    forward: str | None = None
    save: str | None = None

    def __post_init__(self):
        if self.family is not None and self.family not in FAMILIES:
            raise ValueError(f"module kind {self.kind!r}: family {self.family!r} is not one of {FAMILIES}")
        if self.head_params and not self.head:
            raise ValueError(f"module kind {self.kind!r}: head_params without head")
        if not self.config_files:
            raise ValueError(f"module kind {self.kind!r} names no config file")

    def resolve_forward(self):
        """The object ``forward`` names (imported on first use: the registry itself imports no model code)."""
        return None if self.forward is None else _resolve(self.forward)

    def files(self, spec, context: SaveContext) -> ModuleFiles:
        """What a module of this kind (its ``ModuleSpec`` as loaded) writes into its folder, now: the one
        place the folder writer (``jaxst.io.export``) asks, for every family."""
        if self.save is not None:
            return _resolve(self.save)(spec, context)
        weights = ((("heads", context.head), ""),) if self.head_params else ()
        return ModuleFiles({"config.json": {**spec.config, **context.settings}}, weights)


@dataclasses.dataclass(frozen=True)
class SaveContext:
    """What saving one module needs from the model it is part of, as the model is now (not as loaded).

    ``settings``: the family's current settings for this module kind (e.g. a MultiVectorEncoder's skiplist),
    which replace the loaded config's keys. ``head``: its index into ``params["heads"]``
    (``jaxst.modules.head_indices``) and ``head_params`` that subtree, for kinds whose config follows their
    weights. ``weights``: where the family keeps the module's params, as ``(params path, tensor-name prefix)``
    pairs, for kinds whose params sit outside ``params["heads"]`` (the Transformer). ``buffers``: tensors it
    saves but does not train (a SparseAutoEncoder's statistics), in PyTorch names."""

    hf_config: dict | None = None
    max_seq_length: int | None = None
    settings: dict = dataclasses.field(default_factory=dict)
    head: int | None = None
    head_params: object = None
    weights: tuple = ()
    buffers: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ModuleFiles:
    """What one module writes, names relative to its folder: JSON files; ``(params path, prefix)`` subtrees
    into its ``model.safetensors``; whether the tokenizer files of the folder it was loaded from come along;
    ``unmapped`` tensors for that safetensors file (kept, not modelled); and ``kind``, the module kind it is
    written as where that is not its own (a Stanford projection is written as a Dense)."""

    json_files: dict
    weights: tuple = ()
    tokenizer: bool = False
    unmapped: dict = dataclasses.field(default_factory=dict)
    kind: str | None = None


def _resolve(target: str):
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
