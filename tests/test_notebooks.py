"""Execute every notebook in ``notebooks/`` top to bottom and fail on any cell error.

The notebooks run in a ``python3`` kernel that is this interpreter (a kernelspec installed into a
temporary Jupyter path), offline (``HF_HUB_OFFLINE=1``) and with a non-interactive matplotlib backend.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ipykernel.kernelspec as kernelspec
import nbclient
import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
ROOT_README = NOTEBOOK_DIR.parent / "README.md"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# Appended to the in-memory copy of each notebook: reports which interpreter the kernel runs.
PROBE = "import json, sys\nprint(json.dumps({'executable': sys.executable, 'prefix': sys.prefix}))"


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"
    install = (ROOT_README.read_text(encoding="utf-8").split("pip install --no-deps ", 1)[1].split()[0])
    for path in NOTEBOOKS:  # each opens with a Colab badge, then a cell that installs what is missing
        cells = nbformat.read(path, as_version=4).cells
        assert cells[0].cell_type == "markdown" and "colab.research.google.com" in cells[0].source, path.name
        setup = cells[1].source
        assert cells[1].cell_type == "code" and '[notebooks]"' in setup and "git\", \"clone\"" in setup, path.name
        assert f"install -q --no-deps {install}" in setup, (path.name, install)  # the README's pinned default model
        assert 'DATA = REPO / "data" / "stsb"' in setup, path.name
        code = "\n".join(c.source for c in cells if c.cell_type == "code")
        assert "../.." not in code, path.name  # every file they read is inside the repository (REPO / ...)


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A ``python3`` kernelspec for ``sys.executable``, found first on JUPYTER_PATH; offline, Agg."""
    prefix = tmp_path / "jupyter-prefix"
    kernelspec.install(prefix=str(prefix), kernel_name="python3")
    spec = json.loads((prefix / "share" / "jupyter" / "kernels" / "python3" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_env):
    nb = nbformat.read(path, as_version=4)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert code_cells, f"{path.name} has no code cells"
    last = code_cells[-1]
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))

    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.km = client.create_kernel_manager()
    assert client.km.kernel_spec.argv[0] == sys.executable, client.km.kernel_spec.argv
    client.execute()  # raises CellExecutionError on the first failing cell

    for i in code_cells:
        errors = [o for o in nb.cells[i].outputs if o.output_type == "error"]
        assert not errors, f"{path.name} cell {i}: {errors}"

    outputs = nb.cells[last].outputs
    assert outputs, f"{path.name}: the last code cell (cell {last}) produced no output"
    assert all(o.output_type != "error" for o in outputs)

    probe = json.loads("".join(o.text for o in nb.cells[-1].outputs if o.output_type == "stream"))
    assert probe["prefix"] == sys.prefix, f"kernel ran {probe}, not this interpreter ({sys.executable})"
