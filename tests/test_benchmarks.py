"""Every benchmark script runs at its smallest size (``run_all.py --smoke``'s arguments), so that none of them
rots between the runs that time them: each exits cleanly and reports at least one result row whose ratio is a
positive number. Speed itself is never asserted here (benchmarks measure it; tests do not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from run_all import SCRIPTS  # noqa: E402


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_benchmark_runs_at_its_smallest_size(name, tmp_path):
    script, _, smoke = SCRIPTS[name]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), *smoke], cwd=BENCHMARKS, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{script} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert out.stdout.startswith("cpu: "), "every benchmark prints the machine header first"
    assert "\ncommit: " in out.stdout
    rows = [json.loads(line[4:]) for line in out.stdout.splitlines() if line.startswith("ROW ")]
    assert rows, f"{script} printed no result row"
    for row in rows:
        assert row["benchmark"] and row["work"]
        if row["median"] is not None:
            assert row["median"] > 0 and (row["best"] is None or row["best"] > 0)
