"""The notebooks stay thin and teachable: Colab set-up first, markdown before every step,
outputs stripped. (nbmake executes them; this checks their shape.)"""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_the_seven_notebooks_exist():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shape(path):
    notebook = nbformat.read(path, as_version=4)
    cells = notebook.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    code = [c for c in cells if c.cell_type == "code"]
    assert "google.colab" in code[0].source  # the Colab set-up cell comes first
    for before, cell in zip(cells, cells[1:]):
        if cell.cell_type == "code":
            assert before.cell_type == "markdown", f"{path.name}: a code cell without markdown before it"
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name}: strip outputs (make strip)"
    assert all(len(c.source.splitlines()) <= 25 for c in code), "logic belongs in helpers/"
