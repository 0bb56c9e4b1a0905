"""Hard-negative mining (sentence-transformers' ``util.mine_hard_negatives``) with jaxst models: embed the
anchors and a corpus, retrieve each anchor's nearest documents with ``jax.lax.top_k``, optionally rescore
them with a CrossEncoder, filter by rank, score and margins, and sample negatives; the same options, the
same selection rules and the same output formats."""

from __future__ import annotations

import random

import jax
import numpy as np

OUTPUT_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")


def _columns(dataset, anchor_column_name, positive_column_name):
    """(anchors, positives, anchor column name, positive column name, is a datasets.Dataset)."""
    if hasattr(dataset, "column_names"):  # a datasets.Dataset
        columns = list(dataset.column_names)
        anchor = anchor_column_name if anchor_column_name in columns else columns[0]
        if positive_column_name not in columns:
            if len(columns) < 2:
                raise ValueError("Dataset must contain at least two columns to select the positive column "
                                 "automatically.")
            positive_column_name = columns[1]
        return list(dataset[anchor]), list(dataset[positive_column_name]), anchor, positive_column_name, True
    rows = list(dataset)
    if not all(isinstance(r, (tuple, list)) and len(r) >= 2 and all(isinstance(x, str) for x in r[:2])
               for r in rows):
        raise TypeError("mine_hard_negatives takes a datasets.Dataset or a list of (anchor, positive) text pairs")
    return ([r[0] for r in rows], [r[1] for r in rows], anchor_column_name or "anchor",
            positive_column_name or "positive", False)


def mine_hard_negatives(
    dataset,
    model,
    anchor_column_name: str | None = None,
    positive_column_name: str | None = None,
    corpus: list[str] | None = None,
    cross_encoder=None,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    num_negatives: int = 3,
    sampling_strategy: str = "top",
    query_prompt_name: str | None = None,
    query_prompt: str | None = None,
    corpus_prompt_name: str | None = None,
    corpus_prompt: str | None = None,
    include_positives: bool = False,
    output_format: str = "triplet",
    output_scores: bool = False,
    batch_size: int = 32,
    faiss_batch_size: int = 16384,
    use_faiss: bool = False,
    use_multi_process: bool = False,
    verbose: bool = True,
):
    """Add hard negatives to (anchor, positive) pairs; see sentence-transformers' ``mine_hard_negatives``.

    ``dataset``: a ``datasets.Dataset`` (returns one, with the same column names) or a list of (anchor,
    positive) pairs (returns a list of rows: tuples in the output format's column order). Candidates are
    the ``range_max`` nearest corpus entries (the positives, plus ``corpus`` when given) by the model's
    similarity of normalized embeddings (``cross_encoder``'s scores instead, when one is given: it rescores
    every candidate and positive), never the query's own text; the first ``range_min`` are skipped, and
    ``max_score``, ``min_score``,
    ``absolute_margin`` (negative + margin must stay at or below the weakest positive's score) and
    ``relative_margin`` (at or below the positive's score minus that fraction of its magnitude) drop
    candidates. ``sampling_strategy``: "top" (the best remaining) or "random" (Python's ``random``, so
    ``random.seed`` makes it repeatable). ``output_format``: "triplet", "n-tuple", "labeled-pair" or
    "labeled-list", ``output_scores`` adding or replacing labels with scores. ``faiss_batch_size`` bounds
    the queries scored at once; FAISS and multi-process encoding are not used by jaxst (the search is a
    jitted top-k on the model's device)."""
    if use_faiss or use_multi_process:
        raise ValueError("jaxst mines with its own jitted top-k on the model's devices: use_faiss and "
                         "use_multi_process are not supported")
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"Invalid output_format: {output_format}. Must be one of {OUTPUT_FORMATS}.")
    if sampling_strategy not in ("top", "random"):
        raise ValueError(f"sampling_strategy must be 'top' or 'random', got {sampling_strategy!r}")
    if not isinstance(faiss_batch_size, int) or faiss_batch_size <= 0:
        raise ValueError(f"faiss_batch_size must be a positive integer, got {faiss_batch_size}.")
    queries_all, positives_all, anchor_name, positive_name, is_dataset = _columns(dataset, anchor_column_name,
                                                                                 positive_column_name)
    if not queries_all:
        raise ValueError("The dataset is empty. Please provide a non-empty dataset.")
    if include_positives:
        output_format = "n-tuple"  # keeps the ranking order, as sentence-transformers does
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got num_negatives={num_negatives}.")

    counts: dict[str, int] = {}
    for q in queries_all:
        counts[q] = counts.get(q, 0) + 1
    max_positives = max(counts.values())
    if range_max is None:
        if absolute_margin is not None or relative_margin is not None or max_score is not None or (
                cross_encoder is not None and min_score is not None):
            range_max = range_min + num_negatives * 10 + max_positives
        else:
            range_max = range_min + num_negatives + max_positives
        if verbose:
            print(f"Setting range_max to {range_max} based on the provided parameters.")
    if range_min < 0:
        raise ValueError(f"range_min must be non-negative, got range_min={range_min}.")
    if range_min >= range_max:
        raise ValueError(f"range_min must be smaller than range_max, got range_min={range_min} and "
                         f"range_max={range_max}.")
    if num_negatives > range_max - range_min:
        raise ValueError(f"Cannot mine {num_negatives} negatives per query: only {range_max - range_min} candidates "
                         f"remain after skipping the first range_min={range_min} of range_max={range_max}.")

    corpus = list(dict.fromkeys((list(corpus) if corpus is not None else positives_all) + positives_all))
    corpus_idx = {text: i for i, text in enumerate(corpus)}
    queries = list(dict.fromkeys(queries_all))
    queries_idx = {q: i for i, q in enumerate(queries)}
    n_queries = len(queries)

    corpus_emb = np.asarray(model.encode_document(corpus, batch_size=batch_size, normalize_embeddings=True,
                                                  prompt_name=corpus_prompt_name, prompt=corpus_prompt,
                                                  show_progress_bar=verbose))
    query_emb = np.asarray(model.encode_query(queries, batch_size=batch_size, normalize_embeddings=True,
                                              prompt_name=query_prompt_name, prompt=query_prompt,
                                              show_progress_bar=verbose))
    width = range_max + max_positives + 1  # room for the positives and the query's own text, both excluded
    k = min(width, len(corpus))
    scores = np.full((n_queries, width), -np.inf, np.float32)
    indices = np.full((n_queries, width), -1, np.int64)
    corpus_device = jax.device_put(corpus_emb)
    for start in range(0, n_queries, faiss_batch_size):
        values, ids = jax.lax.top_k(model.similarity(query_emb[start : start + faiss_batch_size], corpus_device), k)
        scores[start : start + len(values), :k] = np.asarray(values)
        indices[start : start + len(values), :k] = np.asarray(ids)

    positive_indices = [[] for _ in range(n_queries)]
    for q, p in zip(queries_all, positives_all):
        if corpus_idx[p] not in positive_indices[queries_idx[q]]:
            positive_indices[queries_idx[q]].append(corpus_idx[p])
    n_positives = [len(p) for p in positive_indices]
    positives = [corpus[i] for q in range(n_queries) for i in positive_indices[q]]
    anchors = [queries[q] for q in range(n_queries) for _ in positive_indices[q]]
    rows = [q for q in range(n_queries) for _ in positive_indices[q]]
    positive_scores = np.asarray(model.similarity_pairwise(
        query_emb[rows], corpus_emb[[i for p in positive_indices for i in p]]), np.float32)

    if cross_encoder is not None:  # its scores order the candidates, filters or not (sentence-transformers 6.3)
        for q in range(n_queries):
            candidates = [corpus[i] for i in indices[q] if i >= 0]
            rescored = np.asarray(cross_encoder.predict([(queries[q], c) for c in candidates], batch_size=batch_size),
                                  np.float32)
            scores[q, : len(candidates)] = rescored
        positive_scores = np.asarray(cross_encoder.predict(list(zip(anchors, positives)), batch_size=batch_size),
                                     np.float32)

    scores[indices == -1] = -np.inf
    # a query is never its own negative (unless it is its own positive and positives are included)
    own = np.asarray([corpus_idx.get(q, -1) for q in queries])
    if include_positives:
        own[[queries_idx[q] for q, p in zip(queries_all, positives_all) if q == p]] = -1
    scores[(indices == own[:, None]) & (own[:, None] >= 0)] = -np.inf
    if not include_positives:
        for q in range(n_queries):
            scores[q, np.isin(indices[q], positive_indices[q])] = -np.inf
    if absolute_margin is not None or relative_margin is not None:
        offsets = np.cumsum([0] + n_positives)
        weakest = np.asarray([positive_scores[offsets[q] : offsets[q + 1]].min() for q in range(n_queries)])
        if absolute_margin is not None:
            scores[scores + absolute_margin > weakest[:, None]] = -np.inf
        if relative_margin is not None:
            scores[scores > (weakest - np.abs(weakest) * relative_margin)[:, None]] = -np.inf
    if max_score is not None:
        scores[scores > max_score] = -np.inf
    if min_score is not None:
        scores[scores < min_score] = -np.inf

    order = np.argsort(-scores, axis=1, kind="stable")[:, :range_max]
    negative_scores = np.take_along_axis(scores, order, axis=1)[:, range_min:]
    indices = np.take_along_axis(indices, order, axis=1)[:, range_min:]
    if sampling_strategy == "top":
        indices, negative_scores = indices[:, :num_negatives], negative_scores[:, :num_negatives]
    else:
        options = np.maximum(indices.shape[1] - np.isinf(negative_scores).sum(1), num_negatives)
        picked = np.asarray([random.sample(range(int(n)), k=num_negatives) for n in options])
        indices = np.take_along_axis(indices, picked, axis=1)
        negative_scores = np.take_along_axis(negative_scores, picked, axis=1)
        resort = np.argsort(-negative_scores, axis=1, kind="stable")
        indices = np.take_along_axis(indices, resort, axis=1)
        negative_scores = np.take_along_axis(negative_scores, resort, axis=1)

    data = _output(output_format, output_scores, anchor_name, positive_name, queries, corpus, anchors, positives,
                   positive_indices, positive_scores, rows, indices, negative_scores, num_negatives)
    if verbose:
        kept = sum(len(v) for v in data.values()) // max(len(data), 1)
        print(f"Mined hard negatives: {kept} rows ({output_format}) from {n_queries} queries.")
    if is_dataset:
        from datasets import Dataset

        return Dataset.from_dict(data)
    return list(zip(*data.values()))


def _output(output_format, output_scores, anchor_name, positive_name, queries, corpus, anchors, positives,
            positive_indices, positive_scores, rows, indices, negative_scores, num_negatives) -> dict:
    """The output columns of each format, built as sentence-transformers builds them."""
    finite = np.isfinite(negative_scores)
    if output_format == "triplet":
        data = {anchor_name: [], positive_name: [], "negative": []}
        if output_scores:
            data["scores"] = []
        for r, (anchor, positive) in enumerate(zip(anchors, positives)):
            q = rows[r]
            for j in range(num_negatives):
                if finite[q, j]:
                    data[anchor_name].append(anchor)
                    data[positive_name].append(positive)
                    data["negative"].append(corpus[indices[q, j]])
                    if output_scores:
                        data["scores"].append([float(positive_scores[r]), float(negative_scores[q, j])])
        return data
    if output_format == "labeled-pair":
        data = {anchor_name: [], positive_name: [], "score" if output_scores else "label": []}
        key = "score" if output_scores else "label"
        r = 0
        for q, query in enumerate(queries):
            for i in positive_indices[q]:
                data[anchor_name].append(query)
                data[positive_name].append(corpus[i])
                data[key].append(float(positive_scores[r]) if output_scores else 1)
                r += 1
            for j in range(num_negatives):
                if finite[q, j]:
                    data[anchor_name].append(query)
                    data[positive_name].append(corpus[indices[q, j]])
                    data[key].append(float(negative_scores[q, j]) if output_scores else 0)
        return data
    if output_format == "n-tuple":
        keep = [r for r in range(len(anchors)) if finite[rows[r]].all()]
        data = {anchor_name: [anchors[r] for r in keep], positive_name: [positives[r] for r in keep]}
        for j in range(num_negatives):
            data[f"negative_{j + 1}"] = [corpus[indices[rows[r], j]] for r in keep]
        if output_scores:
            data["scores"] = [[float(positive_scores[r])] + negative_scores[rows[r]].astype(float).tolist()
                              for r in keep]
        return data
    keep = [r for r in range(len(anchors)) if finite[rows[r]].any()]  # labeled-list
    data = {anchor_name: [anchors[r] for r in keep],
            positive_name: [[positives[r]] + [corpus[indices[rows[r], j]] for j in range(num_negatives)
                                              if finite[rows[r], j]] for r in keep]}
    if output_scores:
        data["scores"] = [[float(positive_scores[r])] + negative_scores[rows[r]][finite[rows[r]]].astype(float).tolist()
                          for r in keep]
    else:
        data["labels"] = [[1] + [0] * int(finite[rows[r]].sum()) for r in keep]
    return data


__all__ = ["mine_hard_negatives"]
