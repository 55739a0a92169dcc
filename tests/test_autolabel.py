"""Auto-labelling: a folder and a class list to COCO and YOLO, resumable, with clear errors."""

import numpy as np
import pytest
from PIL import Image

from helpers import autolabel as autolabel_module
from helpers.autolabel import autolabel, main, parse_classes, parse_formats
from helpers.config import load_config
from helpers.data import DatasetError, load_coco, load_images, load_yolo, make_demo_dataset


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for sample in make_demo_dataset(3, 64, 80, seed=8):
        Image.fromarray(sample.image).save(images / f"{sample.image_id}.jpg", quality=95)
    (images / "broken.jpg").write_bytes(b"not an image")
    return images


@pytest.fixture
def smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMCLIP_PROFILE", "smoke")
    monkeypatch.setenv("SAMCLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SAMCLIP_START_DIR", "recorded, so that main()'s remember_start_dir is undone")
    monkeypatch.delenv("SAMCLIP_START_DIR")
    return load_config()


def test_a_folder_is_labelled_exported_read_back_and_resumed(folder, smoke, tmp_path):
    out = tmp_path / "labels"
    report = autolabel(folder, "circle, square", out, "coco,yolo", smoke, progress=False)
    assert report.images == 3 and report.sam_runs == 3 and "(SAM ran on 3)" in report.summary()
    assert [item for item, _ in report.skipped] == ["broken.jpg"]  # listed and skipped, not fatal
    assert set(report.outputs) == {"coco", "yolo"}
    coco = load_coco(out / "coco" / "annotations.json", out / "coco" / "images")
    yolo = load_yolo(out / "yolo")
    assert len(coco) == len(yolo) == 3 and coco.classes == yolo.classes == ["circle", "square"]
    found = sum(len(p) for p in report.predictions)
    assert sum(report.objects.values()) == found == sum(len(s.instances) for s in coco) > 0
    for sample, instances in zip(coco, report.predictions):  # COCO keeps the masks exactly
        assert [np.array_equal(a.mask, b.mask) for a, b in zip(sample.instances, instances)] == [True] * len(instances)
    with pytest.raises(FileExistsError, match="--overwrite"):
        autolabel(folder, "circle", out, "coco", smoke, progress=False)
    again = autolabel(folder, "circle, square", out, "yolo", smoke, overwrite=True, progress=False)
    assert again.sam_runs == 0 and again.objects == report.objects  # resumed from the cache
    assert "(SAM ran on 0, 3 from the cache)" in again.summary()
    assert f"left as it was: {out / 'coco'} (an earlier export" in again.summary()  # not replaced by a yolo run
    upper = autolabel(folder, "Background, circle", tmp_path / "upper", "yolo", smoke, progress=False)
    assert upper.predictions.selection.negatives == ()  # "background" is a class here, in any case: not a negative


def test_bad_requests_are_clear_errors(folder, smoke, tmp_path, capsys):
    assert parse_classes(" cat, dog ,") == ["cat", "dog"] and parse_formats("YOLO, coco") == ["yolo", "coco"]
    with pytest.raises(ValueError, match="class list is empty"):
        parse_classes(" , ")
    with pytest.raises(ValueError, match="twice"):
        parse_classes("cat,cat")
    with pytest.raises(ValueError, match="twice .CLIP reads text in lower case"):
        parse_classes("Circle, circle")  # one prompt to CLIP: one class could never win
    with pytest.raises(ValueError, match="use one or more of coco, yolo"):
        parse_formats("coco,voc")
    with pytest.raises(ValueError, match="No export format given"):
        parse_formats(" , ")
    assert main(["--images", str(folder), "--classes", "", "--out", str(tmp_path / "o")]) == 2
    assert "class list is empty" in capsys.readouterr().err
    assert main(["--images", str(folder), "--classes", "cat", "--out", str(tmp_path / "o"), "--format", "voc"]) == 2
    assert "Unknown export format" in capsys.readouterr().err
    assert main(["--images", str(tmp_path / "nowhere"), "--classes", "cat", "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder; pass the folder that holds the images" in capsys.readouterr().err
    one = next(folder.glob("demo_*.jpg"))  # a single image: said so
    assert main(["--images", str(one), "--classes", "cat", "--out", str(tmp_path / "o")]) == 2
    assert "is a file: put it in a folder of its own" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["--images", str(folder), "--classes", "cat", "--out", str(tmp_path / "full")]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "full" / "keep.txt").read_text() == "mine"
    tree = tmp_path / "tree"  # images in sub-folders only
    (tree / "photos").mkdir(parents=True)
    (tree / "photos" / "a.jpg").write_bytes(next(folder.glob("demo_*.jpg")).read_bytes())
    assert main(["--images", str(tree), "--classes", "cat", "--out", str(tmp_path / "o")]) == 2
    assert "its sub-folders hold images (e.g. photos/" in capsys.readouterr().err
    # --out the image folder itself, or inside it: the exports would lie among the images (a review found
    # `--out photos --overwrite` accepted without --recursive, and a later --recursive run labelling the copies)
    before = sorted(folder.iterdir())
    for out in (folder, folder / ".." / folder.name, folder / "labels"):
        assert main(["--images", str(folder), "--classes", "cat", "--out", str(out), "--overwrite"]) == 2
        assert "is, or lies inside, --images" in capsys.readouterr().err
    assert sorted(folder.iterdir()) == before
    autolabel_module.check_out_beside(folder, folder.parent)  # a folder holding it is fine: coco/, yolo/ beside photos/
    # a negative chosen by hand that is also a class: its masks would be labelled and dropped at once
    args = ["--images", str(folder), "--classes", "circle,square", "--out", str(tmp_path / "o")]
    assert main([*args, "--negatives", "Circle,background"]) == 2
    assert "Circle is both a class and a negative prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # --workers is Ray's: without --ray it did nothing, silently
        main([*args, "--workers", "3"])
    assert stop.value.code == 2 and "give --ray too" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_export_that_would_be_refused_is_refused_before_any_work(folder, smoke, tmp_path, monkeypatch, capsys):
    """Images inside --out/yolo: replacing that folder would delete them. Refused before SAM runs and
    before the COCO export is written, not after."""
    out = tmp_path / "shared"
    (out / "yolo").mkdir(parents=True)
    for path in folder.glob("demo_*.jpg"):
        (out / "yolo" / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(autolabel_module, "checkpoint_paths", lambda *a, **k: pytest.fail("models were loaded"))
    args = ["--images", str(out / "yolo"), "--classes", "circle", "--out", str(out), "--overwrite"]
    assert main(args) == 2
    assert "holds the dataset's own file" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["yolo"] and len(list((out / "yolo").iterdir())) == 3


def test_missing_weights_and_ctrl_c_end_with_a_message_not_a_traceback(folder, smoke, tmp_path, monkeypatch, capsys):
    from helpers.checkpoints import DownloadError

    def offline(*args, **kwargs):
        raise DownloadError("Could not download sam_vit_b_01ec64.pth ... set SAMCLIP_MIRROR")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    args = ["--images", str(folder), "--classes", "circle", "--out", str(tmp_path / "o")]
    monkeypatch.setattr(autolabel_module, "checkpoint_paths", offline)
    assert main(args) == 2
    assert "\nerror: Could not download sam_vit_b_01ec64.pth" in capsys.readouterr().err
    monkeypatch.setattr(autolabel_module, "checkpoint_paths", interrupted)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "nothing was exported; SAM's masks" in err and "the same command again goes on from there" in err
    assert not (tmp_path / "o").exists()
    monkeypatch.undo()
    monkeypatch.setenv("SAMCLIP_PROFILE", "smoke")
    monkeypatch.setenv("SAMCLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(autolabel_module, "write_yolo", interrupted)  # Ctrl-C while the second export is written
    assert main(args) == 130
    assert f"interrupted: only {tmp_path / 'o' / 'coco'} was written; SAM's masks" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["coco"]


def test_the_command_line_labels_a_folder(folder, smoke, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--images", str(folder), "--classes", "circle", "--out", str(out), "--format", "yolo"]) == 0
    printed = capsys.readouterr().out
    assert "3 images labelled" in printed and "broken.jpg" in printed and (out / "yolo" / "data.yaml").is_file()
    assert not (out / "coco").exists()


def test_max_images_labels_the_first_few_and_the_cache_keeps_them(folder, smoke, tmp_path, capsys):
    """--max-images N: the folder's first N image files (by name; broken.jpg among them, skipped), the rest
    said to be left out; the whole folder afterwards runs SAM only on the images not done yet."""
    out = tmp_path / "few"
    assert main(["--images", str(folder), "--classes", "circle", "--out", str(out), "--max-images", "2"]) == 0
    printed = capsys.readouterr().out
    assert "1 images labelled" in printed and "broken.jpg" in printed
    assert "2 further image(s) left out by --max-images" in printed
    assert [s.image_id for s in load_yolo(out / "yolo")] == ["demo_000"]
    whole = autolabel(folder, "circle", tmp_path / "all", "yolo", smoke, progress=False)
    assert whole.images == 3 and whole.sam_runs == 2 and whole.left_out == 0 and "left out" not in whole.summary()
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            main(["--images", str(folder), "--classes", "circle", "--out", str(out), "--max-images", bad])
        assert "is not a number of images" in capsys.readouterr().err
    with pytest.raises(ValueError, match="whole number"):
        autolabel(folder, "circle", tmp_path / "x", "yolo", smoke, progress=False, limit=0)


def test_recursive_labels_sub_folders_and_keeps_them_in_the_exports(smoke, tmp_path, capsys):
    """--recursive: images in sub-folders (two of one name in two folders; a hidden folder left out), exported in the
    same sub-folders and read back under the same ids; without it the error names the option; an --out inside the
    image folder is refused (the next run would label the exported copies)."""
    photos = tmp_path / "photos"
    for index, name in enumerate(["park/a.jpg", "street/a.jpg", "street/night/b.png", "top.jpg", ".cache/c.jpg"]):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_demo_dataset(1, 64, 80, seed=30 + index)[0].image).save(photos / name, quality=95)
    (photos / "top.jpg").unlink()
    with pytest.raises(DatasetError, match="recursive=True \\(autolabel --recursive\\)"):
        autolabel(photos, "circle", tmp_path / "flat", "yolo", smoke, progress=False)
    out = tmp_path / "labels"
    argv = ["--images", str(photos), "--classes", "circle,square", "--out", str(out), "--recursive"]
    assert main(argv) == 0 and "3 images labelled" in capsys.readouterr().out
    ids = ["park/a", "street/a", "street/night/b"]
    assert (out / "yolo" / "images" / "street" / "night" / "b.png").is_file()
    assert (out / "yolo" / "labels" / "park" / "a.txt").is_file()
    assert load_yolo(out / "yolo").ids == ids
    coco = load_coco(out / "coco" / "annotations.json", out / "coco" / "images")
    assert [ref.label.split(" ")[0] for ref in coco.samples.refs] == [
        "park/a.jpg",
        "street/a.jpg",
        "street/night/b.png",
    ]
    few = autolabel(photos, "circle", tmp_path / "few", "yolo", smoke, progress=False, limit=1, recursive=True)
    assert few.images == 1 and few.left_out == 2 and few.sam_runs == 0  # from the cache
    assert main([*argv[:5], str(photos / "out"), "--recursive"]) == 2
    assert "lies inside, --images" in capsys.readouterr().err and not (photos / "out").exists()
    (tmp_path / "linked").symlink_to(photos)  # the same folder by a link, or through '..': inside it all the same
    for out in (photos / "park" / ".." / "out", tmp_path / "linked" / "out"):
        assert main([*argv[:5], str(out), "--recursive"]) == 2 and "lies inside" in capsys.readouterr().err
    # a folder name no export can take (a colon is a drive on Windows) is refused before SAM runs, naming the fix
    (photos / "a:b").mkdir()
    Image.fromarray(make_demo_dataset(1, 64, 80, seed=40)[0].image).save(photos / "a:b" / "x.jpg")
    assert main([*argv[:5], str(tmp_path / "colon"), "--recursive"]) == 2
    assert "rename that image file or folder" in capsys.readouterr().err
    assert load_images(photos, recursive=True).ids == ["a:b/x", *ids]  # readable: only exporting it fails
    hidden = tmp_path / "hidden-only"
    (hidden / ".ipynb_checkpoints").mkdir(parents=True)
    Image.fromarray(make_demo_dataset(1, 64, 80, seed=41)[0].image).save(hidden / ".ipynb_checkpoints" / "y.png")
    with pytest.raises(DatasetError) as error:  # hidden folders are not read, so no hint to read sub-folders
        load_images(hidden)
    assert "recursive=True" not in str(error.value)


def test_what_a_killed_run_left_does_not_block_the_next(folder, smoke, tmp_path):
    """A run killed while writing leaves a hidden .coco.<pid>-<token>.part in --out: it made --out 'not empty', so
    the same command refused to run again without --overwrite."""
    out = tmp_path / "killed"
    (out / ".coco.999999999-0123abcd.part" / "images").mkdir(parents=True)
    report = autolabel(folder, "circle", out, "coco", smoke, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["coco"] and report.outputs["coco"] == out / "coco"


def test_unlabelled_folders_read_on_touch(folder):
    dataset = load_images(folder)
    assert dataset.lazy and dataset.ids == ["demo_000", "demo_001", "demo_002"]
    assert "broken.jpg" in dict(dataset.skipped) and dataset[0].masks == {}
    assert autolabel_module.FORMATS == ("coco", "yolo")


def test_the_autolabel_benchmark_runs_and_both_labellers_agree(tmp_path):
    from conftest import load_benchmark

    ratios = load_benchmark("bench_autolabel").main(["--quick", "--work-dir", str(tmp_path)])
    assert ratios["tiny"] > 0  # the script asserts the same labels, masks and scores itself


def test_settings_are_checked_first_and_warnings_are_one_line(tmp_path, monkeypatch, capsys):
    """A bad SAMCLIP_* value stopped the command only after the images had been read, and the demo CLIP's warning
    about a word it never read printed as Python's file, line and source (a review as a new user)."""
    monkeypatch.setenv("SAMCLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SAMCLIP_START_DIR", "recorded, so that main()'s remember_start_dir is undone")
    monkeypatch.delenv("SAMCLIP_START_DIR")
    monkeypatch.setenv("SAMCLIP_MAX_IMAGES", "two")
    assert main(["--images", str(tmp_path / "nowhere"), "--classes", "cat", "--out", str(tmp_path / "o")]) == 2
    assert "SAMCLIP_MAX_IMAGES" in capsys.readouterr().err  # said before the (missing) folder is looked at
    monkeypatch.delenv("SAMCLIP_MAX_IMAGES")
    monkeypatch.setenv("SAMCLIP_PROFILE", "demo")
    images = tmp_path / "photos"
    images.mkdir()
    Image.fromarray(make_demo_dataset(1, 64, 80, seed=9)[0].image).save(images / "one.png")
    assert main(["--images", str(images), "--classes", "circle,chair", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning: 'chair' is not a word this CLIP" in err and "UserWarning" not in err and "autolabel.py" not in err
