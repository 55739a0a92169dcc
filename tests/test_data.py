import io
import json
import zipfile

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

from helpers import data
from helpers.data import DatasetError, UnknownClassError


def _write_png(path, array):
    Image.fromarray(array).save(path)


def _semantic_folder(tmp_path, labels_by_stem, suffix=".png"):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for stem, labels in labels_by_stem.items():
        _write_png(images / f"{stem}.png", np.full((*labels.shape, 3), 90, np.uint8))
        if suffix == ".npy":
            np.save(masks / f"{stem}.npy", labels)
        else:
            Image.fromarray(labels.astype(np.uint8)).save(masks / f"{stem}{suffix}", quality=75)
    return images, masks


def _labels(h=40, w=60):
    labels = np.zeros((h, w), np.uint8)
    labels[5:25, 10:30] = 1
    labels[20:35, 35:55] = 2
    return labels


def test_png_and_npy_label_maps_give_exact_masks(tmp_path):
    labels = _labels()
    for suffix in (".png", ".npy"):
        folder = tmp_path / suffix[1:]
        folder.mkdir()
        images, masks = _semantic_folder(folder, {"a": labels}, suffix)
        ds = data.load_semantic_folder(images, masks, {0: "floor", 1: "chair", 2: "table"})
        sample = ds[0]
        assert sample.image.shape == (40, 60, 3) and sample.image.dtype == np.uint8
        assert np.array_equal(sample.masks["chair"], labels == 1)
        assert np.array_equal(sample.masks["table"], labels == 2)
        assert ds.notes == []


def test_jpeg_masks_are_snapped_to_the_nearest_id_and_reported(tmp_path):
    labels = _labels() * 40  # ids 0, 40, 80: JPEG noise moves values by a few levels
    images, masks = _semantic_folder(tmp_path, {"a": labels}, ".jpg")
    raw = np.asarray(Image.open(masks / "a.jpg"))
    assert not np.isin(raw, [0, 40, 80]).all()  # the noise is really there
    ds = data.load_semantic_folder(images, masks, {0: "floor", 40: "chair", 80: "table"})
    chair = ds[0].masks["chair"]
    # a naive threshold at the class value would lose most of the chair; snapping keeps it
    assert (chair == (labels == 40)).mean() > 0.98
    assert (raw == 40).sum() < 0.9 * (labels == 40).sum()
    assert "snapped" in ds.notes[0]


def test_bad_items_are_skipped_and_counted(tmp_path):
    good, outside = _labels(), _labels()
    outside[0, 0] = 7
    images, masks = _semantic_folder(tmp_path, {"good": good, "outside": outside, "small": good[:20]})
    _write_png(images / "small.png", np.zeros((40, 60, 3), np.uint8))  # image bigger than its mask
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (masks / "broken.png").write_bytes((masks / "good.png").read_bytes())
    _write_png(images / "nomask.png", np.zeros((40, 60, 3), np.uint8))
    ds = data.load_semantic_folder(images, masks, ["floor", "chair", "table"])
    assert [s.image_id for s in ds] == ["good"]
    reasons = dict(ds.skipped)
    assert set(reasons) == {"outside.png", "small.png", "broken.png", "nomask.png"}
    assert "[7]" in reasons["outside.png"] and "not in the class table" in reasons["outside.png"]
    assert "60x20" in reasons["small.png"] and "cannot read image" in reasons["broken.png"]
    assert "skipped 4" in ds.report()
    with pytest.raises(DatasetError, match="cannot read|not in the class table|no mask|60x20"):
        data.load_semantic_folder(images, masks, ["floor", "chair", "table"], strict=True)


def test_empty_dataset_and_unknown_class_are_clear_errors(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        data.load_semantic_folder(tmp_path / "i", tmp_path / "m", ["a"])
    (tmp_path / "x").mkdir()
    images, masks = _semantic_folder(tmp_path / "x", {"a": _labels()})
    with pytest.raises(UnknownClassError, match="Known classes: floor, chair, table"):
        data.load_semantic_folder(images, masks, ["floor", "chair", "table"], classes=["sofa"])
    with pytest.raises(UnknownClassError, match="Class names are matched as written: 'chair'\\?"):  # a case hint
        data.load_semantic_folder(images, masks, ["floor", "chair", "table"], classes=["Chair", "sofa"])


def test_demo_set_is_deterministic_with_exact_disjoint_masks():
    a, b = data.make_demo_dataset(4, seed=3), data.make_demo_dataset(4, seed=3)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    for sample in a:
        stacked = np.stack(list(sample.masks.values()))
        assert stacked.sum(0).max() == 1  # one class per pixel
        assert sum(m.any() for m in sample.masks.values()) >= 2
        # the shape's pixels really carry its colour: a mask pixel differs from the background
        name = next(n for n, m in sample.masks.items() if m.sum() > 500)
        inside = sample.image[sample.masks[name]]
        assert inside.std(axis=0).max() < 1.0  # flat fill colour, no anti-aliasing at the mask
    assert a.classes == data.DEMO_CLASSES


def test_a_demo_shape_all_but_hidden_is_ignored_not_a_class_to_find():
    """Seed 0's first image: a star covered but for 148 pixels (under MIN_VISIBLE, a tenth) is no object to find."""
    sample = data.make_demo_dataset(1, seed=0)[0]
    assert not sample.masks["star"].any()
    assert sample.ignore["star"].sum() == 148
    assert not any(mask[sample.ignore["star"]].any() for mask in sample.masks.values())
    assert "star" not in {instance.label for instance in sample.instances}
    assert sum(mask.any() for mask in sample.masks.values()) >= 2


def test_prepared_dataset_round_trip(tmp_path):
    ds = data.make_demo_dataset(3)
    ds.samples[0].ignore["circle"] = np.eye(240, 320, dtype=bool)
    data.save_dataset(ds, tmp_path / "prep")
    back = data.load_prepared(tmp_path / "prep")
    assert [s.image_id for s in back] == [s.image_id for s in ds]
    for x, y in zip(ds, back):
        assert np.array_equal(x.image, y.image)
        assert all(np.array_equal(x.masks[k], y.masks[k]) for k in x.masks)
    assert np.array_equal(back[0].ignore["circle"], ds[0].ignore["circle"])
    with pytest.raises(DatasetError, match="run notebooks/01"):
        data.load_prepared(tmp_path / "nothing")
    ds.samples[1].image_id = "street/night/a"  # an id with folders (recursive reads): copied into sub-folders
    data.save_dataset(ds, tmp_path / "nested")
    assert data.load_prepared(tmp_path / "nested").ids == ["demo_000", "street/night/a", "demo_002"]
    ds.samples[1].image_id = "../outside"
    with pytest.raises(DatasetError, match="cannot name an exported file"):
        data.save_dataset(ds, tmp_path / "escape")
    assert not (tmp_path / "outside.png").exists() and not (tmp_path / "escape").exists()


def _tiny_coco(tmp_path):
    images = tmp_path / "val2017"
    images.mkdir()
    _write_png(images / "1.png", np.zeros((30, 40, 3), np.uint8))
    _write_png(images / "2.png", np.zeros((30, 40, 3), np.uint8))
    poly = [[5, 5, 20, 5, 20, 15, 5, 15]]  # a 15 x 10 box
    crowd = {"counts": [30 * 30, 30 * 10], "size": [30, 40]}  # uncompressed RLE: last 10 columns
    coco = {
        "images": [
            {"id": 1, "file_name": "1.png", "height": 30, "width": 40},
            {"id": 2, "file_name": "2.png", "height": 30, "width": 40},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 62, "name": "chair"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 62,
                "segmentation": poly,
                "iscrowd": 0,
                "area": 150,
                "bbox": [5, 5, 15, 10],
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "segmentation": crowd,
                "iscrowd": 1,
                "area": 300,
                "bbox": [30, 0, 10, 30],
            },
        ],
    }
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(coco))
    return path, images


def test_coco_polygons_union_and_crowd_regions(tmp_path):
    ann, images = _tiny_coco(tmp_path)
    ds = data.load_coco(ann, images)
    chair = ds[0].masks["chair"]
    assert chair[5:15, 5:20].all() and 150 <= chair.sum() <= 16 * 11
    assert "person" not in ds[0].masks and ds[0].ignore["person"][:, 30:].all()
    assert ds[1].masks == {}
    ds = data.load_coco(ann, images, classes=["chair"])
    assert not ds[1].masks["chair"].any()  # listed classes are present, empty where absent
    with pytest.raises(UnknownClassError, match="Known classes: person, chair"):
        data.load_coco(ann, images, classes=["sofa"])


def test_fetch_coco_subset_from_a_local_server(file_server, tmp_path):
    ann, images = _tiny_coco(tmp_path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.write(ann, "annotations/instances_val2017.json")
    file_server.files["/annotations/annotations_trainval2017.zip"] = buffer.getvalue()
    file_server.files["/val2017/2.png"] = (images / "2.png").read_bytes()
    ann_path, image_dir = data.fetch_coco_subset(
        [2],
        tmp_path / "coco",
        file_server.url + "/annotations/annotations_trainval2017.zip",
        file_server.url + "/val2017/",
        progress=False,
    )
    subset = json.loads(ann_path.read_text())
    assert [i["id"] for i in subset["images"]] == [2] and subset["annotations"] == []
    assert data.load_coco(ann_path, image_dir)[0].image_id == "2"
    with pytest.raises(DatasetError, match="not in COCO val2017"):
        data.fetch_coco_subset(
            [99],
            tmp_path / "coco",
            file_server.url + "/annotations/annotations_trainval2017.zip",
            file_server.url + "/val2017/",
            progress=False,
        )


def test_mosaics_tile_one_class_each(tmp_path):
    for name, value in (("cat", 10), ("dog", 80), ("car", 160), ("ship", 240)):
        (tmp_path / name).mkdir()
        for i in range(2):
            _write_png(tmp_path / name / f"{i}.png", np.full((32, 32, 3), value, np.uint8))
    items, classes = data.load_class_folders(tmp_path)
    assert classes == ["car", "cat", "dog", "ship"] and len(items) == 8
    ds = data.make_mosaics(items, per_mosaic=4, tile=16, count=3)
    for sample in ds:
        assert sample.image.shape == (32, 32, 3)
        assert sorted(sample.masks) == classes
        for name, mask in sample.masks.items():
            assert mask.sum() == 256
            value = {"cat": 10, "dog": 80, "car": 160, "ship": 240}[name]
            assert np.all(np.abs(sample.image[mask].astype(int) - value) <= 1)
    with pytest.raises(DatasetError, match="no class sub-folders"):
        data.load_class_folders(tmp_path / "cat")


@pytest.mark.shared_data
def test_real_coco_mask_areas_match_the_annotations():
    root = shared_data("coco_val2017_mini")
    ann = root / "annotations" / "instances_val2017.json"
    ds = data.load_coco(ann, root / "val2017")
    assert len(ds) == 79 and not ds.skipped
    coco = json.loads(ann.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    checked = 0
    for sample in ds:
        anns = [a for a in coco["annotations"] if str(a["image_id"]) == sample.image_id and not a["iscrowd"]]
        for name in {names[a["category_id"]] for a in anns}:
            instances = [a for a in anns if names[a["category_id"]] == name]
            if len(instances) != 1:
                continue  # a union of overlapping instances is smaller than the summed areas
            area = instances[0]["area"]
            if area > 500:
                assert abs(sample.masks[name].sum() - area) / area < 0.05, (sample.image_id, name)
                checked += 1
    assert checked > 40


@pytest.mark.shared_data
def test_real_camvid_frames():
    ds = data.load_camvid(shared_data("camvid_test_sample"))
    assert len(ds) == 20 and "Unlabelled" not in ds.classes
    sample = ds[0]
    assert sample.image.shape == (360, 480, 3)
    covered = np.stack([sample.masks[c] for c in ds.classes]).sum(0) + sample.ignore["Road"]
    assert covered.max() == 1 and covered.min() == 1  # every pixel is one class or ignored
    assert sample.masks["Road"].mean() > 0.1


def test_object_crops_can_leave_out_crops_that_hold_another_class():
    """A class's box often takes in other shapes; with ``max_other`` such crops are left out (mosaic tiles of
    one class each, as SLIP's)."""
    image = np.zeros((60, 100, 3), np.uint8)
    circle, square = np.zeros((60, 100), bool), np.zeros((60, 100), bool)
    circle[10:50, 5:25] = circle[10:50, 75:95] = True  # two circles: their box spans the square between them
    square[20:40, 40:60] = True
    dataset = data.Dataset("t", [data.Sample("a", image, {"circle": circle, "square": square})], ["circle", "square"])
    assert [item.label for item in data.object_crops(dataset, min_area=100)] == ["circle", "square"]
    kept = data.object_crops(dataset, min_area=100, max_other=0.05)
    assert [item.label for item in kept] == ["square"] and kept[0].image.shape == (22, 22, 3)
    with pytest.raises(ValueError, match="share of the box"):
        data.object_crops(dataset, max_other=5)


def test_image_files_lists_image_files_only(tmp_path):
    """One test of "is an image" for every reader: a folder named like an image is not one (class folders read it)."""
    from PIL import Image

    for name in ("a.jpg", "b.PNG", "sub/e.png", "cls/x.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG")
    (tmp_path / "c.txt").write_text("x")
    (tmp_path / "d.jpg").mkdir()
    (tmp_path / "cls" / "thumbs.png").mkdir()
    assert [p.name for p in data.image_files(tmp_path)] == ["a.jpg", "b.PNG"]
    found = [p.relative_to(tmp_path).as_posix() for p in data.image_files(tmp_path, recursive=True)]
    assert found == ["a.jpg", "b.PNG", "cls/x.png", "sub/e.png"]
    items, classes = data.load_class_folders(tmp_path)
    assert classes == ["cls", "d.jpg", "sub"] and sorted(i.path for i in items) == [
        str(tmp_path / "cls" / "x.png"),
        str(tmp_path / "sub" / "e.png"),
    ]
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)  # a link back up: each folder read once, no endless walk
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / ".hidden" / "h.png")
    found = [p.relative_to(tmp_path).as_posix() for p in data.image_files(tmp_path, recursive=True)]
    assert found == ["a.jpg", "b.PNG", "cls/x.png", "sub/e.png"]
    (tmp_path / "sub" / "loop").unlink()
    (tmp_path / "more").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "more" / "m.png")
    (tmp_path / "sub" / "linked").symlink_to(tmp_path / "more")  # a linked folder outside the one read is read
    found = [p.relative_to(tmp_path / "sub").as_posix() for p in data.image_files(tmp_path / "sub", recursive=True)]
    assert found == ["e.png", "linked/m.png"]
