"""The notebooks stay thin and teachable: Colab set-up first, markdown before every step,
outputs stripped. (nbmake executes them; this checks their shape.)"""

import os
import sys
import types
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


class FakeColab:
    """What the Colab set-up cell asks of IPython: shell commands and the %cd / %pip magics, with ``{name}``
    expanded from the cell's variables; ``git clone`` makes the folder, nothing else runs."""

    def __init__(self, namespace: dict):
        self.namespace, self.calls = namespace, []

    def system(self, command: str) -> None:
        command = command.format_map(self.namespace)
        self.calls.append(command)
        if command.startswith("git clone") and "unreachable" not in command:
            Path(command.split()[-1]).mkdir(parents=True)

    def run_line_magic(self, name: str, line: str) -> None:
        line = line.format_map(self.namespace)
        self.calls.append(f"%{name} {line}")
        if name == "cd":
            os.chdir(line)


def _run_colab_cell(source: str, content: Path, url: str | None, monkeypatch) -> list[str]:
    from IPython.core.inputtransformer2 import TransformerManager

    import helpers.run_notebooks

    code = TransformerManager().transform_cell(source).replace('"/content/"', repr(f"{content}/"))
    if url is not None:
        code = code.replace("https://github.com/your-org/sam-clip-segmentation.git", url)
    namespace: dict = {}
    shell = FakeColab(namespace)
    namespace["get_ipython"] = lambda: shell
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(helpers.run_notebooks, "run_earlier", lambda names: shell.calls.append(f"run_earlier {names}"))
    exec(compile(code, "colab-cell", "exec"), namespace)
    return shell.calls


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_colab_cell_stops_without_a_repository_and_can_run_twice(path, tmp_path, monkeypatch):
    """Run as shipped it says to set REPO_URL (it went on through three errors); a failed clone stops it; run twice
    it stays in the one clone (it cloned a second copy inside the first, a relative path after %cd); it runs the
    notebooks whose outputs it reads first (Colab gives each notebook a runtime of its own): run_earlier."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAMCLIP_HOME", "recorded, so that the cell's setdefault is undone")
    monkeypatch.delenv("SAMCLIP_HOME")
    source = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code").source
    content = tmp_path / "content"
    content.mkdir()
    with pytest.raises(RuntimeError, match="Set REPO_URL"):
        _run_colab_cell(source, content, None, monkeypatch)
    with pytest.raises(RuntimeError, match="Could not clone"):
        _run_colab_cell(source, content, "https://example.invalid/unreachable.git", monkeypatch)
    first = _run_colab_cell(source, content, "https://example.org/team/sam-clip.git", monkeypatch)
    repo = content / "sam-clip"
    assert first[0] == f"git clone -q https://example.org/team/sam-clip.git {repo}" and Path.cwd() == repo
    assert os.environ["SAMCLIP_HOME"] == str(repo)
    earlier = {"02": "01", "03": "01 02", "04": "01 02 03", "05": "01"}.get(path.name[:2])
    assert first[1:] == [f"%cd {repo}", "%pip install -q -e ."] + ([f"run_earlier {earlier}"] if earlier else [])
    again = _run_colab_cell(source, content, "https://example.org/team/sam-clip.git", monkeypatch)
    assert again == first[1:] and Path.cwd() == repo  # no second clone; run_earlier decides what is left to run


def test_run_earlier_runs_from_the_first_notebook_not_run_with_these_settings(tmp_path, monkeypatch, capsys):
    """What the Colab cell asks: nothing when 01 and 02 ran here with the same settings (as load_config reads them:
    a relative and an absolute path, or a Drive cache set later, are the same run), 02 alone when only it did not,
    both after a setting changed; a failure raises with the end of the output (Colab's kernel shows nothing a child
    process writes, so it is printed line by line) and is not recorded."""
    import helpers.run_notebooks as rn
    from helpers.config import load_config

    for name in [k for k in os.environ if k.startswith("SAMCLIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SAMCLIP_HOME", str(tmp_path))
    monkeypatch.setenv("SAMCLIP_PROFILE", "smoke")
    monkeypatch.setenv("SAMCLIP_DATA_PATH", str(tmp_path / "data"))
    out = tmp_path / "outputs" / "smoke" / "notebooks"
    monkeypatch.setattr(rn, "execute", lambda path, out_dir, timeout: None)  # every notebook runs to its end
    notebooks = [Path("01_prepare_dataset.ipynb"), Path("02_sam_clip_processing.ipynb")]
    assert rn.run(notebooks, out, 10, rn.run_key(load_config())) == 0
    calls, status = [], [0]

    def fake(command, cwd):
        calls.append(command[3:])
        return status[0], ["02_sam_clip_processing.ipynb stopped: CheckpointError: no network\n"]

    monkeypatch.setattr(rn, "stream", fake)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAMCLIP_START_DIR", str(tmp_path))
    monkeypatch.setenv("SAMCLIP_DATA_PATH", "data")  # the same folder, written relative
    monkeypatch.setenv("SAMCLIP_DRIVE_CACHE", "/content/drive/cache")  # where weights come from: the same run
    rn.run_earlier("01 02")
    assert calls == [] and "ran here with these settings already" in capsys.readouterr().out
    monkeypatch.setattr(rn, "execute", lambda path, out_dir, timeout: "KeyboardInterrupt: stopped")
    assert rn.run(notebooks[1:], out, 10, rn.run_key(load_config())) == 1  # 02 stopped half way: not recorded
    rn.run_earlier("1 2")
    monkeypatch.setenv("SAMCLIP_MAX_IMAGES", "2")
    rn.run_earlier(["01", "02"])
    assert calls == [["02"], ["01", "02"]]
    status[0] = 1
    with pytest.raises(RuntimeError, match=r"(?s)notebook\(s\) 01 02 stopped.*CheckpointError: no network"):
        rn.run_earlier("01 02")


def test_stream_prints_a_childs_output_as_it_comes_and_keeps_its_end(capsys, tmp_path):
    from helpers.run_notebooks import stream

    code = "import sys\nfor i in range(5): print('line', i)\nsys.exit(3)"
    status, tail = stream([sys.executable, "-c", code], tmp_path, keep=2)
    assert status == 3 and tail == ["line 3\n", "line 4\n"]
    assert capsys.readouterr().out == "".join(f"line {i}\n" for i in range(5))
