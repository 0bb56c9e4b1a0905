"""The README's Python examples run, in order, and print what the README says they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def expected_output(block: str) -> list[str]:
    """The ``# ...`` lines right after a print(...) are its documented output."""
    return [line[2:] for line in block.splitlines() if line.startswith("# ")]


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", text)]


def test_readme_examples_run_and_print_what_they_say(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that save files write them here
    blocks = python_blocks()
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(README), "exec"), namespace)
        expected = expected_output(block)
        printed = out.getvalue().splitlines()
        assert len(printed) == len(expected), (block, printed)
        for got, want in zip(printed, expected):
            if numbers(want):  # scores: same words, numbers within 1e-4
                shape = lambda s: re.sub(r"\s+", " ", re.sub(r"-?\d+\.\d+(e-?\d+)?", "#", s))
                assert shape(got) == shape(want)
                np.testing.assert_allclose(numbers(got), numbers(want), atol=1e-4)
            else:
                assert got == want


def test_readme_and_ci_share_the_test_command():
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README.read_text()
