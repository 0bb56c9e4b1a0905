"""MultiVectorMask: which tokens a multi-vector embedding keeps (skiplist words, kept ids) (MultiVectorEncoder).

Config: ``skiplist_words`` (punctuation by default in PyLate folders), ``skiplist_tasks`` (a task or a list;
"document" by default), ``keep_only_token_ids``. No tensors; the facade computes the scoring mask on the host
with the tokens (it depends on token ids only).
"""

from __future__ import annotations

import dataclasses

from jaxst.modules._kind import ModuleKind

_PATH = "sentence_transformers.multi_vector_encoder.modules.multi_vector_mask.MultiVectorMask"

KIND = ModuleKind(
    kind="multi_vector_mask",
    class_names=("MultiVectorMask",),
    type_path=_PATH,
    v6_type_path=_PATH,
    folder_name="MultiVectorMask",
    family="MultiVectorEncoder",
    forward="jaxst.modules.multi_vector_mask:MaskSettings",
)


@dataclasses.dataclass
class MaskSettings:
    """A MultiVectorMask's settings; no mask module (``MaskSettings()``) keeps every token."""

    skiplist_words: list[str] = dataclasses.field(default_factory=list)
    skiplist_tasks: list[str] = dataclasses.field(default_factory=lambda: ["document"])
    keep_only_token_ids: list[int] | None = None

    @classmethod
    def from_config(cls, config: dict) -> MaskSettings:
        tasks = config.get("skiplist_tasks")
        keep = config.get("keep_only_token_ids")
        return cls(list(config.get("skiplist_words") or []),
                   [tasks] if isinstance(tasks, str) else list(tasks or ["document"]),
                   None if keep is None else [int(i) for i in keep])

    def get_config_dict(self) -> dict:
        return {"skiplist_words": list(self.skiplist_words), "skiplist_tasks": list(self.skiplist_tasks),
                "keep_only_token_ids": self.keep_only_token_ids}
