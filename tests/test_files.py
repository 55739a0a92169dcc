"""helpers.files: atomic writes that leave whole files or nothing, and replace folders without losing the old one."""

import os

import numpy as np
import pytest

from helpers import data, files


def test_unused_names_differ_and_hide_on_request(tmp_path):
    names = {files.unused_name(tmp_path / "a.json") for _ in range(50)}
    assert len(names) == 50 and all(n.parent == tmp_path and n.name.startswith("a.json.") for n in names)
    assert files.unused_name(tmp_path / "a.json", ".old", hidden=True).name.startswith(".a.json.")
    assert files.unused_name(tmp_path / "a.json", ".old").name.endswith(".old")


def test_atomic_path_renames_on_success_and_removes_on_failure(tmp_path):
    target = tmp_path / "weights.pth"
    with files.atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["weights.pth"]
    for error in (RuntimeError, KeyboardInterrupt):  # a failure half way, Ctrl-C
        with pytest.raises(error), files.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise error()
        assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["weights.pth"]


def test_write_bytes_and_text_replace_whole_files(tmp_path):
    files.write_bytes(tmp_path / "a.bin", b"\x00\x01")
    files.write_text(tmp_path / "a.bin", "é")
    assert (tmp_path / "a.bin").read_bytes() == "é".encode() and os.listdir(tmp_path) == ["a.bin"]


def test_replace_folder_keeps_the_old_one_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    new = files.new_folder_beside(folder)
    assert new.name.startswith(".export.") and new.is_dir()
    (new / "new.txt").write_text("new")
    replace = os.replace

    def failing(src, dst):  # the move of the new folder fails (a full disk, Ctrl-C at that moment)
        if str(src) == str(new):
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(files.os, "replace", failing)
    with pytest.raises(KeyboardInterrupt):
        files.replace_folder(new, folder)
    assert (folder / "old.txt").read_text() == "old"  # put back where it was, under its own name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", new.name])
    monkeypatch.setattr(files.os, "replace", replace)
    files.replace_folder(new, folder)
    assert os.listdir(folder) == ["new.txt"] and os.listdir(tmp_path) == ["export"]


def test_save_dataset_failing_half_way_keeps_the_prepared_folder(tmp_path, monkeypatch):
    """Notebook 01 interrupted while writing: the dataset prepared before stays readable, no temporary left."""
    prepared = tmp_path / "dataset"
    data.save_dataset(data.make_demo_dataset(2, seed=3), prepared)
    before = data.load_prepared(prepared)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.save_dataset(data.make_demo_dataset(3, seed=4), prepared)
    assert os.listdir(tmp_path) == ["dataset"]
    after = data.load_prepared(prepared)
    assert after.ids == before.ids and np.array_equal(after[0].image, before[0].image)
