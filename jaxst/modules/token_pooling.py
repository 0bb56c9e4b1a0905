"""Token pooling: merges a document's similar token embeddings (MultiVectorEncoder).

HierarchicalTokenPooling's config: ``pool_factor``, ``num_protected_tokens``, ``normalize_embeddings``, ``tasks``.
No tensors; it runs on the host after encode (Ward linkage, scipy). LambdaTokenPooling holds code, which jaxst
reads but refuses to run (``from_spec`` says so).
"""

from __future__ import annotations

import numpy as np

from jaxst.modules._kind import ModuleKind
from jaxst.pooling import l2_normalize

_PATH = "sentence_transformers.multi_vector_encoder.modules.token_pooling.HierarchicalTokenPooling"

KIND = ModuleKind(
    kind="token_pooling",
    class_names=("HierarchicalTokenPooling", "LambdaTokenPooling"),
    type_path=_PATH,
    v6_type_path=_PATH,
    folder_name="HierarchicalTokenPooling",
    family="MultiVectorEncoder",
    forward="jaxst.modules.token_pooling:HierarchicalTokenPooling",
)


class HierarchicalTokenPooling:
    """sentence-transformers' HierarchicalTokenPooling: fewer vectors per document for a smaller index. The
    first ``num_protected_tokens`` tokens stay; the others are clustered by Ward linkage on their cosine
    distances (scipy, on the host) into ``tokens // pool_factor`` clusters, each replaced by its mean; all
    output tokens are L2-normalized with ``normalize_embeddings``. ``tasks``: the tasks it applies to
    ("document" by default; no task counts as "document"). Pass it as ``encode(..., token_pooling=...)``,
    or call ``pool`` on embeddings already encoded."""

    def __init__(self, pool_factor: float = 1.0, *, num_protected_tokens: int = 1, normalize_embeddings: bool = True,
                 tasks: str | list[str] | None = None):
        if not pool_factor >= 1:
            raise ValueError(f"pool_factor must be >= 1, got {pool_factor}.")
        if not isinstance(num_protected_tokens, int) or num_protected_tokens < 0:
            raise ValueError(f"num_protected_tokens must be >= 0, got {num_protected_tokens}.")
        self.pool_factor = pool_factor
        self.num_protected_tokens = num_protected_tokens
        self.normalize_embeddings = bool(normalize_embeddings)
        self.tasks = [tasks] if isinstance(tasks, str) else list(tasks if tasks is not None else ["document"])

    def applies_to(self, task: str | None) -> bool:
        return (task or "document") in self.tasks

    def get_config_dict(self) -> dict:
        return {"pool_factor": self.pool_factor, "num_protected_tokens": self.num_protected_tokens,
                "normalize_embeddings": self.normalize_embeddings, "tasks": list(self.tasks)}

    def pool(self, embeddings: list, *, task: str | None = None) -> list[np.ndarray]:
        """One (tokens_i, dim) array per text -> its pooled (clusters_i, dim) float32 array (unchanged, as
        arrays, when the pooling does not apply to ``task``)."""
        embeddings = [np.asarray(e, np.float32) for e in embeddings]
        if not self.applies_to(task):
            return embeddings
        if self.pool_factor <= 1:
            return [l2_normalize(e) for e in embeddings] if self.normalize_embeddings else embeddings
        return [self._pool_one(e) for e in embeddings]

    def _pool_one(self, embedding: np.ndarray) -> np.ndarray:
        from scipy.cluster import hierarchy
        from scipy.spatial.distance import squareform

        protected, to_pool = embedding[: self.num_protected_tokens], embedding[self.num_protected_tokens:]
        clusters = max(int(len(to_pool) // self.pool_factor), 1)
        if clusters < len(to_pool):
            distance = np.clip(1.0 - to_pool @ to_pool.T, 0.0, 2.0)
            linkage = hierarchy.linkage(squareform(distance, checks=False), method="ward")
            labels = hierarchy.fcluster(linkage, t=clusters, criterion="maxclust")
            _, inverse = np.unique(labels, return_inverse=True)  # dense cluster ids, in label order
            sums = np.zeros((int(inverse.max()) + 1, to_pool.shape[1]), np.float32)
            np.add.at(sums, inverse, to_pool)
            counts = np.bincount(inverse).astype(np.float32)
            embedding = np.concatenate([protected, sums / counts[:, None]])
        return l2_normalize(embedding) if self.normalize_embeddings else embedding

    def __repr__(self) -> str:
        return f"HierarchicalTokenPooling({self.get_config_dict()})"


def from_spec(spec, last: bool) -> HierarchicalTokenPooling:
    """The pooling a folder's module (``spec``: ``.path``, ``.config``) describes; ``last``: whether it ends the
    pipeline, the one place jaxst runs it. A LambdaTokenPooling (code, no ``pool_factor``) is refused."""
    config = spec.config
    if not last or not (spec.path / "config.json").is_file() or "pool_factor" not in config:
        raise ValueError(f"{spec.path}: jaxst runs a HierarchicalTokenPooling as the last module "
                         "(LambdaTokenPooling holds code, which jaxst does not run)")
    return HierarchicalTokenPooling(config["pool_factor"], num_protected_tokens=config.get("num_protected_tokens", 1),
                                    normalize_embeddings=config.get("normalize_embeddings", False),
                                    tasks=config.get("tasks"))
