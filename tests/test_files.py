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
        assert tmp != target and tmp.parent.parent == tmp_path and tmp.name == target.name
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["weights.pth"]
    for error in (RuntimeError, KeyboardInterrupt):  # a failure half way, Ctrl-C
        with pytest.raises(error), files.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise error()
        assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["weights.pth"]


def test_a_file_written_through_atomic_path_is_the_file_written_in_place(tmp_path):
    """torch.save names its zip records after the file it writes: through a temporary name the demo weights got
    'sam_demo.pth.<pid>-<token>/data.pkl' records, other bytes at every run, never the shipped ones."""
    import torch

    state = {"w": torch.arange(6.0).reshape(2, 3)}
    (tmp_path / "direct").mkdir()
    torch.save(state, tmp_path / "direct" / "sam_demo.pth")
    with files.atomic_path(tmp_path / "sam_demo.pth") as tmp:
        torch.save(state, tmp)
    assert (tmp_path / "sam_demo.pth").read_bytes() == (tmp_path / "direct" / "sam_demo.pth").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["direct", "sam_demo.pth"]


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


def test_leftovers_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    """A killed kernel left hidden .<name>.<pid>-<token>.part / .old folders for good (a hidden one made autolabel's
    --out 'not empty'): the next write there removes those of dead processes and this process's own."""
    folder = tmp_path / "coco"
    dead = tmp_path / ".coco.999999999-0123abcd.part"
    mine = tmp_path / f".coco.{os.getpid()}-89abcdef.old"
    alive = tmp_path / ".coco.1-00000000.part"  # pid 1 runs: another writer at work, left alone
    other = tmp_path / ".cocoa.999999999-0123abcd.part"  # another folder's
    for path in (dead, mine, alive, other):
        path.mkdir()
    tmp = files.new_folder_beside(folder)
    files.replace_folder(tmp, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["coco", alive.name, other.name])


def test_a_symlinked_folder_or_file_is_replaced_where_it_points(tmp_path):
    """An output folder linked to another disk stays a link: its target is replaced (the link was replaced by a
    real folder on the link's disk)."""
    disk = tmp_path / "disk"
    (disk / "export").mkdir(parents=True)
    (tmp_path / "export").symlink_to(disk / "export")
    new = files.new_folder_beside(tmp_path / "export")
    assert new.parent == disk
    (new / "a.txt").write_text("new")
    files.replace_folder(new, tmp_path / "export")
    assert (tmp_path / "export").is_symlink() and (disk / "export" / "a.txt").read_text() == "new"
    (disk / "f.json").write_text("old")
    (tmp_path / "f.json").symlink_to(disk / "f.json")
    files.write_text(tmp_path / "f.json", "new")
    assert (tmp_path / "f.json").is_symlink() and (disk / "f.json").read_text() == "new"
