"""The batch samplers of sentence-transformers' trainers, with their batch order, in numpy.

sentence-transformers draws its batches with a ``torch.Generator`` seeded from the training arguments'
``seed``: torch's CPU generator is the classic Mersenne Twister (mt19937, seeded as ``init_genrand``) and
``torch.randperm`` on the CPU is a Fisher-Yates shuffle over its 32-bit draws. ``TorchGenerator`` does both
with numpy's MT19937, so the samplers below form the same batches in the same order as sentence-transformers'
for the same seed, without torch (tested against torch and against sentence-transformers' trainer).

A sampler is an iterable of index lists with ``__len__`` and ``set_epoch``; the trainer calls ``set_epoch``
before each epoch. Names and arguments are sentence-transformers' (``jaxst.BatchSamplers.NO_DUPLICATES``, a
``DefaultBatchSampler`` subclass or a callable as ``batch_sampler=`` of the training arguments).
"""

from __future__ import annotations

import enum
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

import numpy as np

TORCH_DEFAULT_SEED = 67280421310721  # torch.Generator()'s seed when none is set
DEFAULT_LABEL_COLUMNS = ("label", "labels", "score", "scores")
EXCLUDED_COLUMNS = frozenset({"dataset_name"})  # not part of a row's values (NO_DUPLICATES)
RESAMPLE_PASSES = 2  # extra shuffled passes NO_DUPLICATES may take to reach its advertised length


class BatchSamplers(enum.StrEnum):
    """sentence-transformers' ``BatchSamplers``: how rows are grouped into batches."""

    BATCH_SAMPLER = "batch_sampler"  # shuffled rows, in order
    NO_DUPLICATES = "no_duplicates"  # no value twice in a batch (in-batch negatives losses)
    NO_DUPLICATES_HASHED = "no_duplicates_hashed"  # the same batches (row values compared as they are)
    GROUP_BY_LABEL = "group_by_label"  # >= 2 rows of each of >= 2 labels per batch (batch triplet losses)


class MultiDatasetBatchSamplers(enum.StrEnum):
    """sentence-transformers' ``MultiDatasetBatchSamplers``: in what order several datasets give batches."""

    ROUND_ROBIN = "round_robin"  # one batch of each in turn, until one is exhausted
    PROPORTIONAL = "proportional"  # every batch of every dataset, in a shuffled order


class TorchGenerator:
    """``torch.Generator`` on the CPU, for what the samplers draw: ``manual_seed`` and ``randperm``."""

    def __init__(self, seed: int | None = None):
        self._bits = np.random.MT19937()
        self.manual_seed(TORCH_DEFAULT_SEED if seed is None else seed)

    def manual_seed(self, seed: int) -> TorchGenerator:
        # torch keeps the low 32 bits of the seed for mt19937's init_genrand, as numpy's legacy seeding does
        key = np.random.RandomState(int(seed) & 0xFFFFFFFF).get_state()[1]
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": 624}}
        return self

    def randperm(self, n: int) -> np.ndarray:
        """``torch.randperm(n, generator=self)``: Fisher-Yates, swapping position i with i + draw % (n - i)."""
        order = np.arange(n, dtype=np.int64)
        if n < 2:
            return order
        draws = self._bits.random_raw(n - 1)
        for i, z in enumerate((draws % np.arange(n, 1, -1, dtype=np.uint64)).tolist()):
            j = i + z
            order[i], order[j] = order[j], order[i]
        return order


class DefaultBatchSampler:
    """Shuffled rows in batches of ``batch_size`` (``drop_last``: no smaller last batch): torch's
    ``BatchSampler`` over a ``RandomSampler``, one ``randperm`` of the shared generator per epoch."""

    def __init__(self, dataset, batch_size: int, drop_last: bool = False,
                 valid_label_columns: Sequence[str] | None = None, generator: TorchGenerator | None = None,
                 seed: int = 0):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.valid_label_columns = list(valid_label_columns or DEFAULT_LABEL_COLUMNS)
        self.generator = generator if generator is not None else TorchGenerator(seed)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.dataset)
        yield from _chunks(self.generator.randperm(n).tolist(), self.batch_size, self.drop_last)
        # torch's RandomSampler then draws a permutation for its (empty) tail of num_samples % n rows: the
        # generator moves on as it does there, so the next epoch's order is the same as there
        self.generator.randperm(n)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def _chunks(order: list[int], size: int, drop_last: bool) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        batch = order[start:start + size]
        if len(batch) == size or not drop_last:
            yield batch


def _columns(dataset) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:
        raise TypeError(f"expected a datasets.Dataset (with column_names), got {type(dataset).__name__}")
    return list(names)


def label_column(dataset, valid_label_columns: Sequence[str]) -> str:
    """The first of ``valid_label_columns`` the dataset has, or a ValueError naming its columns."""
    for name in valid_label_columns:
        if name in _columns(dataset):
            return name
    raise ValueError(f"none of the label columns {list(valid_label_columns)} is in the dataset, which has the "
                     f"columns {_columns(dataset)}")


def _hashable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _hashable(v)) for k, v in value.items())
    return value


class NoDuplicatesBatchSampler(DefaultBatchSampler):
    """Batches in which no value of an input column (not the label, not ``dataset_name``) occurs twice,
    for losses whose other rows are a text's negatives. Rows are visited in a shuffled order (reseeded
    with ``seed + epoch``); a row that repeats a value of the batch being filled waits for a later batch,
    and a batch left short when no waiting row fits is given as it is (dropped with ``drop_last``). When
    one pass falls short of ``len(self)`` batches (many repeated values with ``drop_last``), further
    shuffled passes fill the rest."""

    def __init__(self, dataset, batch_size: int, drop_last: bool = False,
                 valid_label_columns: Sequence[str] | None = None, generator: TorchGenerator | None = None,
                 seed: int = 0, precompute_hashes: bool = False):
        super().__init__(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        self.precompute_hashes = precompute_hashes  # accepted for sentence-transformers' spelling
        self._values: list[frozenset] | None = None

    def _row_values(self) -> list[frozenset]:
        if self._values is None:
            # a value is one column's value as str() spells it (sentence-transformers' key: 1 and "1" collide)
            names = [c for c in _columns(self.dataset) if c not in EXCLUDED_COLUMNS
                     and c not in self.valid_label_columns]
            columns = [self.dataset[c] for c in names]
            self._values = [frozenset(str(_plain(col[i])) for col in columns) for i in range(len(self.dataset))]
        return self._values

    def __iter__(self) -> Iterator[list[int]]:
        self.generator.manual_seed(self.seed + self.epoch)
        if len(self.dataset) == 0:
            return
        values = self._row_values()
        wanted, given = len(self), 0
        for batch in self._one_pass(values):
            yield batch
            given += 1
        if given == 0:
            return
        for _ in range(RESAMPLE_PASSES if given < wanted else 0):
            for batch in self._one_pass(values):
                yield batch
                given += 1
                if given >= wanted:
                    return

    def _one_pass(self, values: list[frozenset]) -> Iterator[list[int]]:
        waiting = self.generator.randperm(len(self.dataset)).tolist()
        while waiting:
            # fill a batch from the waiting rows in order; a row repeating one of its values keeps its place
            batch, seen, deferred = [], set(), []
            for position, index in enumerate(waiting):
                if not values[index].isdisjoint(seen):
                    deferred.append(index)
                    continue
                batch.append(index)
                if len(batch) == self.batch_size:
                    deferred.extend(waiting[position + 1:])
                    break
                seen |= values[index]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch  # a short one when the waiting rows ran out (its rows are used either way)
            waiting = deferred


def _plain(value: Any) -> Any:
    """A value as sentence-transformers stringifies it: numpy scalars as Python ones."""
    return value.item() if isinstance(value, np.generic) else value


class GroupByLabelBatchSampler(DefaultBatchSampler):
    """Batches of exactly ``batch_size`` (even, >= 4) rows in which every label present has at least 2 rows
    and at least 2 labels are present, for in-batch triplet mining: labels take turns (a shuffled order each
    round) giving 2 rows each (each label's rows shuffled) until fewer than 2 labels have rows left."""

    def __init__(self, dataset, batch_size: int, drop_last: bool = False,
                 valid_label_columns: Sequence[str] | None = None, generator: TorchGenerator | None = None,
                 seed: int = 0):
        super().__init__(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        if batch_size < 4 or batch_size % 2:
            raise ValueError(f"GROUP_BY_LABEL needs an even batch_size >= 4, got {batch_size}")
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, label in enumerate(self.dataset[label_column(dataset, self.valid_label_columns)]):
            groups[_hashable(_plain(label))].append(i)
        self.groups = {label: rows for label, rows in groups.items() if len(rows) >= 2}
        if len(self.groups) < 2:
            raise ValueError(f"GROUP_BY_LABEL needs at least 2 labels with 2 or more rows each; "
                             f"{len(self.groups)} label(s) have that")
        pairs = sorted((len(rows) // 2 for rows in self.groups.values()), reverse=True)
        # the rounds stop when one label is left: every label gives at most as many pairs as the second largest
        self._stream = 2 * sum(min(p, pairs[1]) for p in pairs)

    def __iter__(self) -> Iterator[list[int]]:
        self.generator.manual_seed(self.seed + self.epoch)
        queues = {}
        for label, rows in self.groups.items():
            keep = self.generator.randperm(len(rows))[:len(rows) // 2 * 2]
            queues[label] = deque(rows[i] for i in keep.tolist())
        labels, batch, last = list(queues), [], None
        while len(labels) >= 2:
            labels = [labels[i] for i in self.generator.randperm(len(labels)).tolist()]
            if batch and labels[0] == last:  # two consecutive pairs of a batch not of the same label
                labels[0], labels[1] = labels[1], labels[0]
            for label in labels:
                batch += [queues[label].popleft(), queues[label].popleft()]
                if len(batch) >= self.batch_size:
                    yield batch[:self.batch_size]
                    batch = batch[self.batch_size:]
            last = labels[-1]
            labels = [label for label in labels if queues[label]]
        if not self.drop_last and len(batch) >= 4:
            yield batch

    def __len__(self) -> int:
        n = self._stream // self.batch_size
        return n + (1 if not self.drop_last and self._stream % self.batch_size >= 4 else 0)


class MultiDatasetDefaultBatchSampler:
    """Batches over several datasets concatenated (indices offset by the sizes before), each batch from one
    dataset; subclasses say in what order."""

    def __init__(self, datasets: Sequence, batch_samplers: Sequence, generator: TorchGenerator | None = None,
                 seed: int = 0):
        if len(datasets) != len(batch_samplers):
            raise ValueError(f"{len(datasets)} datasets but {len(batch_samplers)} batch samplers")
        self.datasets = list(datasets)
        self.batch_samplers = list(batch_samplers)
        self.generator = generator if generator is not None else TorchGenerator(seed)
        self.seed = seed
        self.epoch = 0
        self.offsets = [0, *accumulate(len(d) for d in self.datasets)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for sampler in self.batch_samplers:
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)


class RoundRobinBatchSampler(MultiDatasetDefaultBatchSampler):
    """One batch of each dataset in turn until one is exhausted: each dataset is sampled equally, and the
    larger ones are not used in full."""

    def __iter__(self) -> Iterator[list[int]]:
        self.generator.manual_seed(self.seed + self.epoch)
        for batches in zip(*self.batch_samplers):
            for offset, batch in zip(self.offsets, batches):
                yield [offset + i for i in batch]

    def __len__(self) -> int:
        return min(len(s) for s in self.batch_samplers) * len(self.batch_samplers)


class ProportionalBatchSampler(MultiDatasetDefaultBatchSampler):
    """Every batch of every dataset, the datasets' turns in a shuffled order: larger datasets come up more
    often, and all rows are used."""

    def __iter__(self) -> Iterator[list[int]]:
        self.generator.manual_seed(self.seed + self.epoch)
        turns = [d for d, sampler in enumerate(self.batch_samplers) for _ in range(len(sampler))]
        order = [turns[i] for i in self.generator.randperm(len(turns)).tolist()]
        iterators = [iter(s) for s in self.batch_samplers]
        for d in order:
            batch = next(iterators[d], None)
            if batch is not None:
                yield [self.offsets[d] + i for i in batch]

    def __len__(self) -> int:
        return sum(len(s) for s in self.batch_samplers)


def make_batch_sampler(choice, dataset, batch_size: int, drop_last: bool, valid_label_columns, generator,
                       seed: int):
    """The batch sampler ``choice`` names: a ``BatchSamplers`` value (or its string), a sampler class, or a
    callable taking sentence-transformers' keyword arguments."""
    kwargs = dict(batch_size=batch_size, drop_last=drop_last, valid_label_columns=valid_label_columns,
                  generator=generator, seed=seed)
    if isinstance(choice, type) or (callable(choice) and not isinstance(choice, (str, enum.Enum))):
        return choice(dataset, **kwargs)
    kind = _enum(BatchSamplers, choice, "batch_sampler")
    if kind is BatchSamplers.GROUP_BY_LABEL:
        return GroupByLabelBatchSampler(dataset, **kwargs)
    if kind is BatchSamplers.BATCH_SAMPLER:
        return DefaultBatchSampler(dataset, **kwargs)
    return NoDuplicatesBatchSampler(dataset, precompute_hashes=kind is BatchSamplers.NO_DUPLICATES_HASHED,
                                    **kwargs)


def make_multi_dataset_batch_sampler(choice, datasets: Sequence, batch_samplers: Sequence, generator,
                                     seed: int):
    """The multi-dataset sampler ``choice`` names (a ``MultiDatasetBatchSamplers`` value, a class, a callable)."""
    if isinstance(choice, type) or (callable(choice) and not isinstance(choice, (str, enum.Enum))):
        return choice(datasets, batch_samplers=batch_samplers, generator=generator, seed=seed)
    kind = _enum(MultiDatasetBatchSamplers, choice, "multi_dataset_batch_sampler")
    cls = RoundRobinBatchSampler if kind is MultiDatasetBatchSamplers.ROUND_ROBIN else ProportionalBatchSampler
    return cls(datasets, batch_samplers, generator=generator, seed=seed)


def _enum(kind: type[enum.Enum], value, name: str):
    try:
        return kind(getattr(value, "value", value))
    except ValueError:
        raise ValueError(f"{name} must be one of {[k.value for k in kind]}, a sampler class or a callable; "
                         f"got {value!r}") from None

