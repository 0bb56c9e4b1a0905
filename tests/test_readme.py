"""The README's Python examples run, in order, and print what the README says they print."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def expected_output(block: str) -> list[str]:
    """The ``# ...`` lines right after a print(...) are its documented output."""
    return [line[2:] for line in block.splitlines() if line.startswith("# ")]


# A number as any numpy version or CPU may spell it: 1, 1., 1.0000001, -0.25, 1e-05 (not the digits inside a word).
NUMBER = r"(?<![\w.])-?\d+(?:\.\d*)?(?:e[-+]?\d+)?(?![\w])"


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(NUMBER, text)]


def shape(text: str) -> str:
    """The words and brackets of a line, with every number replaced by # and spacing ignored."""
    return re.sub(r"\s+", "", re.sub(NUMBER, "#", text))


def same_output(got: str, want: str) -> bool:
    """Same words, and the same numbers within the 4 decimals the README prints."""
    return shape(got) == shape(want) and np.allclose(numbers(got), numbers(want), rtol=0, atol=1.5e-4)


def test_number_comparison_ignores_spelling_not_values():
    assert same_output("[[1.         0.6659553  0.104584  ]", "[[1.0000001  0.66595554 0.10458403]")
    assert same_output("(3, 384) float32 doc-1", "(3, 384) float32 doc-1")
    assert not same_output("[[1.  0.6661]", "[[1.  0.6659]")  # a real difference in the 4th decimal
    assert not same_output("(3, 385)", "(3, 384)") and not same_output("doc-2 x", "doc-1 x")
    assert not same_output("True 0", "False 0")


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
            assert same_output(got, want), (got, want)


def test_ci_runs_the_readmes_two_commands():
    """.ci/run reads both commands out of this README (.ci/readme_command.py), so the two cannot drift apart;
    the main job installs jaxst without its test extra and the default model without its torch dependencies."""
    sys.path.insert(0, str(README.parent / ".ci"))
    try:
        import readme_command
    finally:
        sys.path.pop(0)
    from jaxst.io.hub import DEFAULT_MODEL_INSTALL

    main, test = readme_command.command("main"), readme_command.command("test")
    assert "pip install -e . " in main and DEFAULT_MODEL_INSTALL in main and "jaxst search" in main, main
    assert "torch" not in main and "[test]" not in main, main
    assert 'pip install -q -e ".[test]"' in test and "python -m pytest" in test, test
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "readme_command.py main" in ci and "readme_command.py test" in ci
    assert 'bash -euo pipefail -c "$main_job"' in ci and 'bash -euo pipefail -c "$test_command"' in ci


def test_hostile_input_count_is_the_suites():
    """The reliability paragraph's count of hostile-input cases is what pytest collects from those files."""
    import subprocess

    stated = re.search(r"(\d+) cases in `tests/test_hostile_\*\.py`", README.read_text(encoding="utf-8"))
    assert stated, "README's reliability paragraph must state the count of hostile-input cases"
    tests = README.parent / "tests"
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          *sorted(str(p) for p in tests.glob("test_hostile_*.py"))],
                         capture_output=True, text=True, cwd=README.parent, timeout=300)
    collected = re.search(r"(\d+) tests? collected", out.stdout)
    assert collected, out.stdout[-2000:] + out.stderr[-2000:]
    assert int(stated.group(1)) == int(collected.group(1))
