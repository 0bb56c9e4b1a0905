"""Token pooling: merges a document's similar token embeddings (MultiVectorEncoder).

HierarchicalTokenPooling's config: ``pool_factor``, ``max_tokens``, ``distance_threshold``, ``num_protected_tokens``,
``normalize_embeddings``, ``tasks`` (sentence-transformers 6.3's keys; a 6.2 save has no ``max_tokens`` /
``distance_threshold``). No tensors; it runs on the host after encode (Ward linkage, scipy). LambdaTokenPooling
holds code, which jaxst reads but refuses to run (``from_spec`` says so).
"""

from __future__ import annotations

from collections.abc import Iterable
from math import ceil, isfinite

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
    distances (scipy, on the host) and each cluster is replaced by its mean; all output tokens are
    L2-normalized with ``normalize_embeddings``. How many clusters (one of the three, as in 6.3):

    - ``pool_factor``: ``tokens // pool_factor`` of them (at least one); 1 (the default) clusters nothing.
    - ``max_tokens``: at most ``max_tokens`` output tokens, protected ones included; shorter documents stay.
    - ``distance_threshold``: the Ward tree cut at that height, so the count follows each document's
      geometry; ``calibrate_distance_threshold`` picks one for an average token budget.

    ``tasks``: the tasks it applies to ("document" by default; no task counts as "document"). Pass it as
    ``MultiVectorEncoder(token_pooling=...)`` or ``encode(..., token_pooling=...)``, or call ``pool`` on
    embeddings already encoded."""

    def __init__(self, pool_factor: float = 1.0, *, max_tokens: int | None = None,
                 distance_threshold: float | None = None, num_protected_tokens: int = 1,
                 normalize_embeddings: bool = True, tasks: str | list[str] | None = None):
        if not (isfinite(pool_factor) and pool_factor >= 1):
            raise ValueError(f"pool_factor must be >= 1 and finite, got {pool_factor}.")
        if not isinstance(num_protected_tokens, int) or num_protected_tokens < 0:
            raise ValueError(f"num_protected_tokens must be >= 0 and an integer, got {num_protected_tokens}.")
        if distance_threshold is not None:
            if not (isfinite(distance_threshold) and distance_threshold >= 0):
                raise ValueError("distance_threshold must be finite and >= 0.")
            if pool_factor != 1 or max_tokens is not None:
                raise ValueError("distance_threshold, max_tokens and a non-default pool_factor are mutually exclusive.")
            distance_threshold = float(distance_threshold)
        if max_tokens is not None:
            if pool_factor != 1:
                raise ValueError(f"pool_factor and max_tokens are mutually exclusive, got pool_factor={pool_factor} "
                                 f"and max_tokens={max_tokens}.")
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)):
                raise ValueError(f"max_tokens must be an integer, got {max_tokens!r}.")
            if max_tokens <= num_protected_tokens:
                raise ValueError("max_tokens must exceed num_protected_tokens to leave room for at least one pooled "
                                 f"token, got max_tokens={max_tokens} and num_protected_tokens={num_protected_tokens}.")
            max_tokens = int(max_tokens)
        self.pool_factor = pool_factor
        self.max_tokens = max_tokens
        self.distance_threshold = distance_threshold
        self.num_protected_tokens = num_protected_tokens
        self.normalize_embeddings = bool(normalize_embeddings)
        self.tasks = [tasks] if isinstance(tasks, str) else list(tasks if tasks is not None else ["document"])

    def applies_to(self, task: str | None) -> bool:
        return (task or "document") in self.tasks

    def get_config_dict(self) -> dict:
        return {"pool_factor": self.pool_factor, "max_tokens": self.max_tokens,
                "distance_threshold": self.distance_threshold, "num_protected_tokens": self.num_protected_tokens,
                "normalize_embeddings": self.normalize_embeddings, "tasks": list(self.tasks)}

    def pool(self, embeddings: list, *, task: str | None = None) -> list[np.ndarray]:
        """One (tokens_i, dim) array per text -> its pooled (clusters_i, dim) float32 array (unchanged, as
        arrays, when the pooling does not apply to ``task``)."""
        embeddings = [np.asarray(e, np.float32) for e in embeddings]
        if not self.applies_to(task):
            return embeddings
        if self.pool_factor <= 1 and self.max_tokens is None and self.distance_threshold is None:
            return [l2_normalize(e) for e in embeddings] if self.normalize_embeddings else embeddings
        return [self._pool_one(e) for e in embeddings]

    def _clusters(self, n: int) -> int:
        """The cluster count ``pool_factor`` or ``max_tokens`` asks of ``n`` poolable tokens (1 to n)."""
        if self.max_tokens is not None:
            wanted = self.max_tokens - self.num_protected_tokens
        else:
            wanted = int(n // self.pool_factor)
        return min(max(wanted, 1), n)

    def cluster_labels(self, tokens: np.ndarray) -> np.ndarray:
        """Dense cluster ids (0 to clusters - 1, in scipy's label order) of (n, dim) tokens to pool: Ward linkage
        on their cosine distances, cut at this pooling's cluster count or distance; each token its own cluster
        when nothing merges (n <= 1, or a count >= n). ``pool`` and training's ``MultiVectorTokenPoolingLoss``
        (``jaxst.losses.multi_vector.pool_token_outputs``) both cluster here."""
        from scipy.cluster import hierarchy

        n = len(tokens)
        if n <= 1 or (self.distance_threshold is None and self._clusters(n) >= n):
            return np.arange(n)
        linkage = _ward_linkage(np.asarray(tokens, np.float32))
        if self.distance_threshold is None:
            labels = hierarchy.fcluster(linkage, t=self._clusters(n), criterion="maxclust")
        else:
            labels = hierarchy.fcluster(linkage, t=self.distance_threshold, criterion="distance")
        return np.unique(labels, return_inverse=True)[1]

    def _pool_one(self, embedding: np.ndarray) -> np.ndarray:
        protected, to_pool = embedding[: self.num_protected_tokens], embedding[self.num_protected_tokens:]
        n = len(to_pool)
        if n > 1 and (self.distance_threshold is not None or self._clusters(n) < n):
            inverse = self.cluster_labels(to_pool)
            sums = np.zeros((int(inverse.max()) + 1, to_pool.shape[1]), np.float32)
            np.add.at(sums, inverse, to_pool)
            counts = np.bincount(inverse).astype(np.float32)
            embedding = np.concatenate([protected, sums / counts[:, None]])
        return l2_normalize(embedding) if self.normalize_embeddings else embedding

    @staticmethod
    def calibrate_distance_threshold(embeddings: Iterable, *, target_tokens: float,
                                     num_protected_tokens: int = 1) -> float | None:
        """A ``distance_threshold`` whose pooling keeps on average at most ``target_tokens`` tokens per
        document (protected ones included) on these documents (6.3's static method, the same number):
        ``embeddings``, unpadded L2-normalized (tokens_i, dim) arrays, e.g. ``encode_document``'s. The
        ``merges``-th lowest Ward merge height over all documents, where ``merges`` is how many tokens the
        budget removes; None when the budget is at least the documents' average length (nothing to merge).
        Other documents can average above the target."""
        from scipy.cluster.hierarchy import maxdists

        if not (isfinite(target_tokens) and target_tokens > 0):
            raise ValueError("target_tokens must be finite and > 0.")
        if num_protected_tokens < 0:
            raise ValueError(f"num_protected_tokens must be >= 0, got {num_protected_tokens}.")
        heights, count, total_tokens, minimum_tokens = [], 0, 0, 0
        for embedding in embeddings:
            embedding = np.asarray(embedding, np.float32)
            if embedding.ndim != 2:
                raise ValueError("Calibration embeddings must be 2D arrays.")
            count += 1
            total_tokens += len(embedding)
            protected = min(num_protected_tokens, len(embedding))
            to_pool = embedding[protected:]
            minimum_tokens += protected + min(len(to_pool), 1)
            if len(to_pool) > 1:
                heights.append(maxdists(_ward_linkage(to_pool)))
        if count == 0:
            raise ValueError("Provide at least one calibration document.")
        if target_tokens * count < minimum_tokens:
            raise ValueError(f"target_tokens must be at least {minimum_tokens / count:g} for these protected tokens.")
        merges = ceil(total_tokens - target_tokens * count)
        if merges <= 0:
            return None
        return float(np.partition(np.concatenate(heights), merges - 1)[merges - 1])

    def __repr__(self) -> str:
        return f"HierarchicalTokenPooling({self.get_config_dict()})"


def _ward_linkage(tokens: np.ndarray) -> np.ndarray:
    """scipy's Ward linkage of (n >= 2, dim) tokens on their cosine distances, clipped to [0, 2]."""
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    distance = np.clip(1.0 - tokens @ tokens.T, 0.0, 2.0)
    return hierarchy.linkage(squareform(distance, checks=False), method="ward")


def from_spec(spec, last: bool) -> HierarchicalTokenPooling:
    """The pooling a folder's module (``spec``: ``.path``, ``.config``) describes; ``last``: whether it ends the
    pipeline, the one place jaxst runs it. A LambdaTokenPooling (code, no ``pool_factor``) is refused."""
    config = spec.config
    if not last or not (spec.path / "config.json").is_file() or "pool_factor" not in config:
        raise ValueError(f"{spec.path}: jaxst runs a HierarchicalTokenPooling as the last module "
                         "(LambdaTokenPooling holds code, which jaxst does not run)")
    return HierarchicalTokenPooling(config["pool_factor"], max_tokens=config.get("max_tokens"),
                                    distance_threshold=config.get("distance_threshold"),
                                    num_protected_tokens=config.get("num_protected_tokens", 1),
                                    normalize_embeddings=config.get("normalize_embeddings", False),
                                    tasks=config.get("tasks"))
