"""helpers.export (COCO results / dataset json, YOLO-seg folders) and evaluation.mask_ap (COCOeval)."""

from __future__ import annotations

import contextlib
import filecmp
import io
import json
import math
import os
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

from helpers.data import Dataset, Sample, load_coco, load_yolo, make_demo_dataset
from helpers.evaluation import mask_ap
from helpers.export import (
    ExportError,
    coco_image_ids,
    mask_polygons,
    read_coco_results,
    write_coco_dataset,
    write_coco_results,
    write_yolo,
)
from helpers.instances import Instance

COCO_JSON = "annotations/instances_val2017.json"
CROWD_IMAGES = [34417, 92660, 217285, 255165, 553664]  # images of the shared subset with iscrowd regions


@pytest.fixture(scope="module")
def demo() -> Dataset:
    return make_demo_dataset(6, seed=24)


def real_coco(image_ids: list[int] | None = None) -> Dataset:
    root = shared_data("coco_val2017_mini")
    return load_coco(root / COCO_JSON, root / "val2017", image_ids=image_ids, check=False)


def noisy_predictions(dataset: Dataset, seed: int = 0) -> dict[str, list[Instance]]:
    """Per image: each object shifted by a few pixels (some not at all), plus shifted duplicates, random scores."""
    rng = np.random.default_rng(seed)
    found = {}
    for sample in dataset:
        out = []
        for instance in sample.instances:
            shift = int(rng.integers(0, 6))
            out.append(Instance(np.roll(instance.mask, shift, axis=1), instance.label, float(rng.random())))
            if rng.random() < 0.4:
                out.append(Instance(np.roll(instance.mask, 25, axis=0), instance.label, float(rng.random())))
        found[sample.image_id] = out
    return found


def quiet_cocoeval(gt_file: Path, results_file: Path) -> np.ndarray:
    """COCOeval (segm) on files, as a user would run it: the 12 summary numbers."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        evaluator = COCOeval(gt, gt.loadRes(str(results_file)), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def same_masks(a: Sample, b: Sample, classes: list[str]) -> None:
    assert np.array_equal(a.image, b.image)
    for name in classes:
        empty = np.zeros(a.image.shape[:2], bool)
        assert np.array_equal(a.masks.get(name, empty), b.masks.get(name, empty)), name
    assert {k: v for k, v in a.ignore.items() if v.any()}.keys() == b.ignore.keys()
    assert all(np.array_equal(a.ignore[k], b.ignore[k]) for k in b.ignore)
    assert [i.label for i in a.instances] == [i.label for i in b.instances]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.instances, b.instances))


def pooled_iou(dataset: Dataset, back: Dataset) -> float:
    """Summed intersections over summed unions of every image's class masks (ids matched)."""
    by_id = {sample.image_id: sample for sample in back}
    assert set(by_id) == set(dataset.ids)
    inter = union = 0
    for sample in dataset:
        other = by_id[sample.image_id]
        empty = np.zeros(sample.image.shape[:2], bool)
        for name in set(sample.masks) | set(other.masks):
            a, b = sample.masks.get(name, empty), other.masks.get(name, empty)
            inter += int((a & b).sum())
            union += int((a | b).sum())
    return inter / union


# --------------------------------------------------------------------------------------------------------------------
# mask AP


def test_ground_truth_as_predictions_scores_one(demo):
    result = mask_ap(demo, [sample.instances for sample in demo])
    assert (result["AP"], result["AP50"], result["AP75"], result["AR100"]) == (1.0, 1.0, 1.0, 1.0)
    present = demo.present_classes()
    assert all(result["per_class"][name] == 1.0 for name in present)
    assert all(math.isnan(result["per_class"][name]) for name in demo.classes if name not in present)


def square(top: int, left: int, size: int = 10, shape: tuple[int, int] = (100, 100)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_hand_made_ap():
    """2 objects, 3 detections: A (score .9) = object 1, B (.8) on nothing, C (.7) object 2 shifted by 2 px
    (IoU 80/120 = 0.667); and D (.85) inside a crowd region, which COCO ignores."""
    gt = [Instance(square(0, 0), "thing"), Instance(square(50, 50), "thing")]
    crowd = square(70, 0, size=20)
    sample = Sample("1", np.zeros((100, 100, 3), np.uint8), {"thing": gt[0].mask | gt[1].mask}, {"thing": crowd}, gt)
    dataset = Dataset("hand", [sample], ["thing", "other"])
    detections = [
        Instance(square(0, 0), "thing", 0.9),
        Instance(square(30, 80), "thing", 0.8),
        Instance(square(50, 52), "thing", 0.7),
        Instance(square(75, 5), "thing", 0.85),
    ]
    # Ranked A, B, C (D ignored). COCO's AP: mean over 101 recall points 0, 0.01, ..., 1 of the best
    # precision at recall >= r; 51 of the points are <= 0.5.
    # IoU threshold <= 0.65 (0.50, 0.55, 0.60, 0.65): TP FP TP, recall 1/2 1/2 1, precision 1 1/2 2/3:
    #   precision 1 up to recall 0.5, then 2/3: AP = (51 + 50 * 2/3) / 101; recall 1.
    # IoU threshold >= 0.70 (6 of them): TP FP FP, recall stops at 1/2: AP = 51 / 101; recall 1/2.
    matched, unmatched = (51 + 50 * 2 / 3) / 101, 51 / 101
    result = mask_ap(dataset, [detections])
    assert result["AP50"] == pytest.approx(matched, abs=1e-12)
    assert result["AP75"] == pytest.approx(unmatched, abs=1e-12)
    assert result["AP"] == pytest.approx((4 * matched + 6 * unmatched) / 10, abs=1e-12)
    assert result["AR100"] == pytest.approx((4 * 1 + 6 * 0.5) / 10, abs=1e-12)
    assert result["per_class"]["thing"] == pytest.approx(result["AP"])
    assert math.isnan(result["per_class"]["other"])  # no ground truth: left out, as COCO does
    # Without the crowd region, D is a false positive ranked second: TP FP FP TP, precision 1 1/2 1/3 1/2.
    sample.ignore = {}
    assert mask_ap(dataset, [detections])["AP50"] == pytest.approx((51 + 50 / 2) / 101, abs=1e-12)


def mask_ap_against_files(dataset: Dataset, predictions: dict, folder: Path) -> None:
    result = mask_ap(dataset, predictions)
    gt_file = write_coco_dataset(dataset, folder / "gt.json", copy_images=False)
    results_file = write_coco_results(dataset, predictions, folder / "results.json")
    stats = quiet_cocoeval(gt_file, results_file)
    assert [result[k] for k in ("AP", "AP50", "AP75", "AR100")] == [stats[0], stats[1], stats[2], stats[8]]
    assert 0.2 < result["AP"] < 0.95  # a real case, neither trivial nor empty


def test_mask_ap_equals_cocoeval_on_the_written_files(demo, tmp_path):
    mask_ap_against_files(demo, noisy_predictions(demo), tmp_path)


@pytest.mark.shared_data
def test_mask_ap_equals_cocoeval_on_real_coco_with_crowds(tmp_path):
    dataset = real_coco(CROWD_IMAGES)
    assert all(sample.ignore for sample in dataset)
    mask_ap_against_files(dataset, noisy_predictions(dataset, seed=1), tmp_path)


def test_predictions_written_and_read_back_give_the_same_ap(demo, tmp_path):
    predictions = noisy_predictions(demo, seed=2)
    expected = mask_ap(demo, predictions)
    from_results = read_coco_results(write_coco_results(demo, predictions, tmp_path / "r.json"), demo)
    from_dataset = read_coco_results(write_coco_dataset(demo, tmp_path / "p.json", predictions), demo)
    assert mask_ap(demo, from_results) == expected
    assert mask_ap(demo, from_dataset) == expected
    first = sorted(predictions["demo_000"], key=lambda i: -i.score)
    assert all(np.array_equal(a.mask, b.mask) and a.score == b.score for a, b in zip(first, from_results["demo_000"]))


def test_mask_ap_errors(demo):
    empty = Dataset("empty", [Sample("1", np.zeros((8, 8, 3), np.uint8), {"a": np.zeros((8, 8), bool)})], ["a"])
    with pytest.raises(ValueError, match="no ground-truth instances"):
        mask_ap(empty, [[]])
    with pytest.raises(ExportError, match="one list per image"):
        mask_ap(demo, [[]])
    with pytest.raises(ExportError, match="not in dataset"):
        mask_ap(demo, {"nope": []})
    with pytest.raises(ExportError, match="'dog', not among the classes"):
        mask_ap(demo, {"demo_000": [Instance(np.ones((240, 320), bool), "dog")]})
    with pytest.raises(ValueError, match="full size"):
        mask_ap(demo, {"demo_000": [Instance(np.ones((24, 32), bool), "circle")]})
    assert mask_ap(demo, {})["AP"] == 0.0  # no detection at all


# --------------------------------------------------------------------------------------------------------------------
# COCO files


def test_image_ids_one_mapping():
    assert coco_image_ids(["139", "802"]) == {"139": 139, "802": 802}
    assert coco_image_ids(["139", "demo"]) == {"139": 1, "demo": 2}
    assert coco_image_ids(["7", "007"]) == {"7": 1, "007": 2}  # their integers collide
    with pytest.raises(ExportError, match="Repeated"):
        coco_image_ids(["a", "a"])


def test_results_and_dataset_json_share_ids(demo, tmp_path):
    predictions = [sample.instances for sample in demo]
    results = json.loads(write_coco_results(demo, predictions, tmp_path / "r.json").read_text())
    content = json.loads(write_coco_dataset(demo, tmp_path / "d.json").read_text())
    names = {image["id"]: image["file_name"] for image in content["images"]}
    assert names == {number: f"demo_{number - 1:03d}.png" for number in range(1, 7)}
    assert {c["name"]: c["id"] for c in content["categories"]} == {"circle": 1, "square": 2, "triangle": 3, "star": 4}
    pairs = [(r["image_id"], r["category_id"], r["segmentation"]["counts"]) for r in results]
    assert pairs == [(a["image_id"], a["category_id"], a["segmentation"]["counts"]) for a in content["annotations"]]
    assert set(results[0]) == {"image_id", "category_id", "segmentation", "score", "bbox"}
    assert isinstance(results[0]["segmentation"]["counts"], str)
    first = demo[0].instances[0]
    x0, y0, x1, y1 = first.box
    assert results[0]["bbox"] == [x0, y0, x1 - x0, y1 - y0]
    assert content["annotations"][0]["area"] == first.area and content["annotations"][0]["iscrowd"] == 0


def test_coco_round_trip_demo_is_exact(demo, tmp_path):
    path = write_coco_dataset(demo, tmp_path / "out" / "annotations.json")
    back = load_coco(path, tmp_path / "out" / "images", classes=demo.classes)
    assert back.ids == [str(n) for n in range(1, len(demo) + 1)]  # non-digit ids are numbered
    for a, b in zip(demo, back):
        same_masks(a, b, demo.classes)


def test_a_hidden_demo_shape_travels_as_a_crowd_region(tmp_path):
    """Seed 0's first image hides a star but for 148 pixels (``MIN_VISIBLE``): written as one ``iscrowd`` annotation,
    read back into ``ignore``; mask AP with a detection on it equals COCOeval on the written files."""
    hidden = make_demo_dataset(6, seed=0)
    assert hidden[0].ignore["star"].sum() == 148
    path = write_coco_dataset(hidden, tmp_path / "out" / "annotations.json")
    annotations = json.loads(path.read_text())["annotations"]
    assert sum(a["iscrowd"] for a in annotations) == 1
    back = load_coco(path, tmp_path / "out" / "images", classes=hidden.classes)
    assert np.array_equal(back[0].ignore["star"], hidden[0].ignore["star"]) and not back[0].masks["star"].any()
    predictions = noisy_predictions(hidden)
    predictions[hidden[0].image_id].append(Instance(hidden[0].ignore["star"], "star", 0.99))
    mask_ap_against_files(hidden, predictions, tmp_path)


@pytest.mark.shared_data
def test_coco_round_trip_real_is_exact(tmp_path):
    dataset = real_coco(sorted(CROWD_IMAGES + [139, 802, 397133]))
    path = write_coco_dataset(dataset, tmp_path / "annotations.json")
    back = load_coco(path, tmp_path / "images", check=False)
    assert back.ids == dataset.ids  # COCO's own image ids are kept
    for a, b in zip(dataset, back):
        same_masks(a, b, dataset.classes)
    source = Path(dataset.samples.refs[0].source["image"])
    assert filecmp.cmp(source, tmp_path / "images" / f"{dataset.ids[0]}.jpg", shallow=False)  # copied, not re-encoded


def test_file_with_exif_orientation_is_written_as_its_pixels(tmp_path):
    """A YOLO image stored sideways with an EXIF tag: load_yolo turns it upright, load_coco would not, so
    the export writes the upright pixels as PNG rather than copying the file."""
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    Image.new("RGB", (40, 20), (200, 30, 30)).save(root / "images" / "side.jpg", exif=exif)
    (root / "labels" / "side.txt").write_text("0 0.1 0.1 0.9 0.1 0.9 0.5 0.1 0.5\n")
    (root / "data.yaml").write_text("names: [thing]\n")
    dataset = load_yolo(root)
    path = write_coco_dataset(dataset, tmp_path / "out" / "ann.json")
    assert (tmp_path / "out" / "images" / "side.png").is_file()
    back = load_coco(path, tmp_path / "out" / "images", classes=["thing"])
    same_masks(dataset[0], back[0], ["thing"])


# --------------------------------------------------------------------------------------------------------------------
# YOLO folders


def test_yolo_round_trip_demo(demo, tmp_path):
    folder = write_yolo(demo, tmp_path / "yolo")
    back = load_yolo(folder, classes=demo.classes, check=False)
    assert sorted(back.ids) == sorted(demo.ids)  # sample ids kept: the files are named by them
    assert pooled_iou(demo, back) >= 0.98
    spec = (folder / "data.yaml").read_text()
    assert "train: images" in spec and "val: images" in spec and f"path: {folder.absolute()}" in spec


@pytest.mark.shared_data
def test_yolo_round_trip_real_coco(tmp_path):
    dataset = real_coco()
    back = load_yolo(write_yolo(dataset, tmp_path / "yolo"), check=False)
    assert pooled_iou(dataset, back) >= 0.98


def test_yolo_predictions_and_polygon_rule(demo, tmp_path):
    mask = np.zeros((50, 60), bool)
    mask[5:25, 5:25] = True  # a part
    mask[30:40, 40:50] = True  # a second part
    mask[45, 2] = True  # a single pixel: dropped
    mask[45:48, 20] = True  # a one-pixel-wide line: dropped
    assert len(mask_polygons(mask)) == 2
    sample = Sample("a", np.zeros((50, 60, 3), np.uint8), {"thing": mask}, instances=[Instance(mask, "thing")])
    dataset = Dataset("parts", [sample], ["thing"])
    write_yolo(dataset, tmp_path / "gt")
    lines = (tmp_path / "gt" / "labels" / "a.txt").read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("0 ") for line in lines)  # two parts, two lines
    back = load_yolo(tmp_path / "gt")[0]
    assert np.array_equal(back.masks["thing"], mask & ~(np.arange(50)[:, None] >= 45))
    predictions = {"demo_001": [Instance(demo[1].instances[0].mask, demo[1].instances[0].label, 0.3)]}
    folder = write_yolo(demo, tmp_path / "pred", predictions=predictions)
    assert len((folder / "labels" / "demo_001.txt").read_text().splitlines()) == 1
    assert (folder / "labels" / "demo_000.txt").read_text() == ""  # no objects: an empty label file


def test_ids_with_folders_are_exported_in_sub_folders_and_read_back(demo, tmp_path):
    """Ids from a recursive read ("park/a"; one in a folder named images, where ultralytics' label rule takes the last
    /images/) become sub-folders in both formats and come back from both readers; an id that leaves the folder or
    names nothing is refused."""
    ids = ["park/a", "street/a", "images/b", "c"]
    nested = Dataset("nested", [replace(s, image_id=i) for s, i in zip(demo, ids)], demo.classes)
    yolo = write_yolo(nested, tmp_path / "yolo")
    assert (yolo / "images" / "park" / "a.png").is_file() and (yolo / "labels" / "street" / "a.txt").is_file()
    assert (yolo / "images" / "labels" / "b.txt").is_file()  # images/images/b.png's labels, as ultralytics looks
    back = load_yolo(yolo, classes=demo.classes)
    assert sorted(back.ids) == sorted(ids) and pooled_iou(nested, back) >= 0.98
    coco = write_coco_dataset(nested, tmp_path / "coco" / "annotations.json")
    names = [image["file_name"] for image in json.loads(coco.read_text())["images"]]
    assert names == ["park/a.png", "street/a.png", "images/b.png", "c.png"]
    read = load_coco(coco, tmp_path / "coco" / "images")  # ids 1-4 (COCO's are numbers), in the same order
    assert pooled_iou(nested, Dataset("read", [replace(s, image_id=i) for s, i in zip(read, ids)], [])) == 1.0
    for bad in ("../x", "a//b", "/abs", "a\\b", "", "C:/x"):
        one = Dataset("bad", [replace(demo[0], image_id=bad)], demo.classes)
        with pytest.raises(ExportError, match="cannot name an exported file"):
            write_yolo(one, tmp_path / f"bad{len(bad)}")
    assert not list(tmp_path.glob("bad*")) and not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------------------------------
# outputs


def test_existing_outputs_are_refused_unless_overwrite(demo, tmp_path):
    predictions = [sample.instances for sample in demo]
    writers = {
        "results": lambda path, **kw: write_coco_results(demo, predictions, path / "r.json", **kw),
        "dataset": lambda path, **kw: write_coco_dataset(demo, path / "d.json", **kw),
        "yolo": lambda path, **kw: write_yolo(demo, path / "yolo", **kw),
    }
    for name, write in writers.items():
        folder = tmp_path / name
        first = write(folder)
        stamp = first.stat().st_mtime_ns
        with pytest.raises(FileExistsError, match="overwrite=True"):
            write(folder)
        assert first.stat().st_mtime_ns == stamp
        write(folder, overwrite=True)
        assert not [p for p in folder.iterdir() if p.name.endswith(".part")]  # no temporary left behind
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "images").mkdir()
    (tmp_path / "taken" / "images" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="images"):  # the image folder beside the json counts too
        write_coco_dataset(demo, tmp_path / "taken" / "new.json")
    assert not (tmp_path / "taken" / "new.json").exists()


def test_exports_get_the_umasks_permissions(demo, tmp_path):
    """Written through temporary names, an export still gets the permissions any new file or folder gets
    (readable by others under umask 022, private under 077), not tempfile's private 0700 / 0600."""
    predictions = [sample.instances for sample in demo]
    for umask, folder_mode, file_mode in ((0o022, 0o755, 0o644), (0o077, 0o700, 0o600)):
        out = tmp_path / f"umask{umask:03o}"
        before = os.umask(umask)
        try:
            written = [
                write_coco_dataset(demo, out / "coco"),  # a folder: the json and images/ inside
                write_coco_dataset(demo, out / "flat" / "d.json"),  # a json with images/ beside it
                write_coco_results(demo, predictions, out / "r.json"),
                write_yolo(demo, out / "yolo"),
            ]
        finally:
            os.umask(before)
        paths = [p for path in written for p in (path, *path.parent.rglob("*"))]
        for path in paths:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (folder_mode if path.is_dir() else file_mode), f"{path}: {mode:o} under umask {umask:03o}"


def test_an_interrupted_replacement_keeps_the_old_export(demo, tmp_path, monkeypatch):
    """With overwrite, the old folder is moved aside before the new one moves in and deleted after: a Ctrl-C
    as the new one moves in puts the old one back, and the unfinished new one is removed."""
    from helpers import files

    folder = write_yolo(demo, tmp_path / "yolo")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    moves, real_replace = [], os.replace

    def replace(src, dst):
        moves.append((Path(src).name, Path(dst).name))
        if len(moves) == 2:  # the new folder moving in
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_yolo(demo, folder, overwrite=True)
    monkeypatch.undo()
    assert moves[0][0] == "yolo" and moves[0][1].startswith(".yolo.") and moves[1][1] == "yolo"
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert os.listdir(tmp_path) == ["yolo"]  # neither the old one aside nor the unfinished new one left


def test_an_export_never_replaces_the_dataset_it_reads(demo, tmp_path):
    folder = write_yolo(demo, tmp_path / "yolo")
    dataset = load_yolo(folder)
    with pytest.raises(ExportError, match="own file"):
        write_yolo(dataset, folder, overwrite=True)
    with pytest.raises(ExportError, match="own file"):
        write_coco_dataset(dataset, tmp_path / "ann.json", image_dir=folder / "images", overwrite=True)
    assert len(load_yolo(folder)) == len(demo)  # untouched


def test_read_coco_results_wants_mask_results(demo, tmp_path):
    (tmp_path / "boxes.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}]))
    with pytest.raises(ExportError, match="RLE segmentation"):
        read_coco_results(tmp_path / "boxes.json", demo)
    (tmp_path / "other.json").write_text(json.dumps([{"image_id": 99, "category_id": 1}]))
    with pytest.raises(ExportError, match="does not have"):
        read_coco_results(tmp_path / "other.json", demo)


class Named(list):
    """Predictions that carry their own image ids (as ``InstancePredictions`` does), in another order."""

    ids: list[str] = []


def test_coco_folder_export_and_predictions_named_by_id(demo, tmp_path):
    predictions = noisy_predictions(demo, seed=3)
    named = Named(predictions[i] for i in reversed(demo.ids))
    named.ids = list(reversed(demo.ids))
    assert mask_ap(demo, named) == mask_ap(demo, predictions)
    folder = write_coco_dataset(demo, tmp_path / "coco", predictions=named)
    assert sorted(p.name for p in folder.iterdir()) == ["annotations.json", "images"]
    back = read_coco_results(folder / "annotations.json", demo)
    assert mask_ap(demo, back) == mask_ap(demo, predictions)
    assert len(load_coco(folder / "annotations.json", folder / "images")) == len(demo)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_coco_dataset(demo, folder)
    with pytest.raises(ExportError, match="image_dir goes with a json path"):
        write_coco_dataset(demo, tmp_path / "other", image_dir=tmp_path / "pics")
