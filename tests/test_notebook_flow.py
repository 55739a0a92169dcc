"""The notebooks 01-04 as a user runs them, on real data (COCO val2017 mini, CamVid), smoke profile.

Each test gets its own project folder (links to the real notebooks and helpers), so its
prepared dataset, cache and results never mix with another run's. The notebooks of one test share
a kernel (``SharedKernel``: namespace reset between them; a fresh kernel per notebook is what the
nbmake run of ``make test`` checks), since each kernel's imports cost more than a smoke notebook.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import shared_data

from helpers.run_notebooks import SharedKernel, progress_bars_as_text

ROOT = Path(__file__).resolve().parents[1]


def project(tmp_path: Path) -> Path:
    home = tmp_path / "project"
    home.mkdir()
    for name in ("notebooks", "helpers"):
        (home / name).symlink_to(ROOT / name)
    return home


def outputs(path: Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return "\n".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))


@pytest.mark.shared_data
@pytest.mark.parametrize("dataset, folder", [("coco", "coco_val2017_mini"), ("camvid", "camvid_test_sample")])
def test_notebooks_01_to_04_on_real_data(dataset, folder, tmp_path, monkeypatch, capfd):
    data = shared_data(folder)
    home = project(tmp_path)
    monkeypatch.setenv("SAMCLIP_HOME", str(home))
    monkeypatch.setenv("SAMCLIP_PROFILE", "smoke")
    monkeypatch.setenv("SAMCLIP_DATASET", dataset)
    monkeypatch.setenv("SAMCLIP_START_DIR", str(data.parents[1]))
    monkeypatch.setenv("SAMCLIP_DATA_PATH", str(Path("data") / folder))  # relative: to the start folder
    monkeypatch.setenv("SAMCLIP_MAX_IMAGES", "2")
    out = tmp_path / "executed"
    out.mkdir()
    kernel = SharedKernel(home / "notebooks", timeout=300)
    with kernel:
        for name in ("01_prepare_dataset", "02_sam_clip_processing", "03_iou_evaluation", "04_visualization"):
            error = kernel.execute(home / "notebooks" / f"{name}.ipynb", out)
            assert error is None, f"{name} on {dataset}: {error}"
        if dataset == "coco":  # settings changed after notebook 01: the next notebook stops and says why
            monkeypatch.setenv("SAMCLIP_MAX_IMAGES", "3")
            changed = tmp_path / "changed"
            changed.mkdir()
            error = kernel.execute(home / "notebooks" / "03_iou_evaluation.ipynb", changed)
            assert error and "DatasetError" in error and "01_prepare_dataset" in error
    three, four = outputs(out / "03_iou_evaluation.ipynb"), outputs(out / "04_visualization.ipynb")
    for text in (three, four):
        assert "SAM runs in this notebook: 0 (SAM loaded: False)" in text
    two = nbformat.read(out / "02_sam_clip_processing.ipynb", as_version=4)
    views = [
        o.data
        for c in two.cells
        for o in c.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert [v["text/plain"][:33] for v in views] == ["SAM + CLIP: 100%|██████████| 2/2 "]  # saved for viewers
    runs = sorted((home / "outputs" / "smoke" / "results").glob("run_*"))
    record = json.loads((runs[-1] / "results.json").read_text())
    assert record["dataset"]["kind"] == dataset and record["dataset"]["images"] == 2
    assert record["dataset"]["path"] == str(data.resolve())
    assert record["models"]["sam"]["weights"].startswith("sam_tiny:")
    evaluated = record["dataset"]["classes_evaluated"]
    assert evaluated and set(evaluated) | set(record["dataset"]["classes_absent"]) >= set(evaluated)
    assert (home / "outputs" / "smoke" / "figures" / dataset / "04_worst_cases.png").is_file()
    printed = capfd.readouterr()
    for noise in ("without encryption", "KeyboardInterrupt", "Parent appears"):  # IPC kernels, shut down cleanly
        assert noise not in printed.err + printed.out


def test_stripping_a_clean_notebook_changes_nothing(tmp_path):
    copy = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", copy)
    strip = Path(sys.executable).parent / "nbstripout"
    subprocess.run([str(strip), *sorted(map(str, copy.glob("*.ipynb")))], check=True)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert (copy / path.name).read_bytes() == path.read_bytes(), f"make strip would change {path.name}"


def test_saved_progress_bars_show_their_last_state():
    """A tqdm widget's saved text is what viewers without widgets show: it says where the bar ended
    ('100%|...| 3/3'), not its first frame ('0%| | 0/3'). The widgets and their state are tqdm's and
    ipywidgets' own, saved as nbclient saves them (the real-data flow above checks a kernel's)."""
    from ipywidgets.embed import embed_data
    from tqdm.notebook import tqdm

    bars = [tqdm(range(3), desc="steps"), tqdm(iter(range(4)), desc="no total"), tqdm(range(5), desc="stopped")]
    for bar in bars:
        for step in bar:
            if bar.desc == "stopped" and step == 2:
                break
        bar.close()
    data = embed_data(views=[bar.container for bar in bars])
    notebook = nbformat.v4.new_notebook(
        metadata={"widgets": {"application/vnd.jupyter.widget-state+json": data["manager_state"]}}
    )
    outputs = [
        nbformat.v4.new_output("display_data", {"application/vnd.jupyter.widget-view+json": view, "text/plain": first})
        for view, first in zip(data["view_specs"], ("steps:   0%|          | 0/3", "no total: 0it", "stopped:   0%|"))
    ]
    notebook.cells = [
        nbformat.v4.new_code_cell("...", outputs=outputs),
        nbformat.v4.new_code_cell("1", outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "1"})]),
    ]
    assert progress_bars_as_text(notebook) == 3
    texts = [o["data"]["text/plain"] for o in notebook.cells[0].outputs]
    assert texts[0].startswith("steps: 100%|██████████| 3/3 [")
    assert texts[1].startswith("no total: |██████████| 4/? [")  # the widget shows an unknown total full
    assert texts[2].startswith("stopped:  40%|████      | 2/5 [")
    assert notebook.cells[1].outputs[0]["data"]["text/plain"] == "1"
