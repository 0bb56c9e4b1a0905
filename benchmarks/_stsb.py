"""The STS benchmark carried in the repository (``data/stsb``), as the benchmark scripts read it."""

from __future__ import annotations

import csv
from pathlib import Path

STSB = Path(__file__).resolve().parents[1] / "data" / "stsb"


def read_stsb(name: str) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, gold score 0-5) rows of one split file, e.g. ``stsb-en-test.csv``."""
    with open(STSB / name, encoding="utf-8", newline="") as f:
        return [(a, b, float(score)) for a, b, score in csv.reader(f)]


def unique_sentences(*names: str) -> list[str]:
    """Every sentence of the given split files once, in first-seen order."""
    return list(dict.fromkeys(s for name in names for a, b, _ in read_stsb(name) for s in (a, b)))
