"""Dataset formats, bad inputs and the provenance of prepared data (issue 11), on generated data
whose ground truth is exact, plus one check on the shared real COCO images."""

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

from helpers import data
from helpers.data import DatasetError
from helpers.data.types import _rgb8
from helpers.files import remove

W, H = 64, 32  # powers of two: k / 64 and k / 32 are exact in decimal text and in binary


def _png(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _image(h=H, w=W, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rect(x0, y0, x1, y1, w=W, h=H):
    """A YOLO polygon for the pixel box x0..x1, y0..y1 (inclusive, as cv2.fillPoly fills it)."""
    return [x0 / w, y0 / h, x1 / w, y0 / h, x1 / w, y1 / h, x0 / w, y1 / h]


def _box_mask(x0, y0, x1, y1, h=H, w=W):
    mask = np.zeros((h, w), bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def _label_file(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{c} " + " ".join(f"{v:g}" for v in coords) + "\n" for c, coords in lines))


# --- YOLO -----------------------------------------------------------------------------------------


def test_yolo_flat_layout_rasterises_polygons_exactly(tmp_path):
    (tmp_path / "data.yaml").write_text("names: [cat, dog, bird]\n")
    _png(tmp_path / "images" / "a.jpg", _image())
    _label_file(
        tmp_path / "labels" / "a.txt",
        [(0, _rect(2, 3, 20, 12)), (0, _rect(10, 8, 30, 20)), (1, _rect(40, 4, 60, 28))],
    )
    _png(tmp_path / "images" / "b.PNG", _image(seed=1))  # no label file: background, as in ultralytics
    ds = data.load_yolo(tmp_path)
    assert ds.classes == ["cat", "dog", "bird"] and [s.image_id for s in ds] == ["a", "b"]
    a = ds[0]
    assert np.array_equal(a.masks["cat"], _box_mask(2, 3, 20, 12) | _box_mask(10, 8, 30, 20))  # union of instances
    assert np.array_equal(a.masks["dog"], _box_mask(40, 4, 60, 28))
    assert "bird" not in a.masks and ds[1].masks == {}
    assert ds.present_classes() == ["cat", "dog"]
    assert any("no label file" in n and "b.PNG" in n for n in ds.notes)
    # a triangle: the mask is what cv2.fillPoly draws at the image's size (ultralytics' polygon2mask)
    _label_file(tmp_path / "labels" / "a.txt", [(2, [0.5, 0.0625, 0.90625, 0.9375, 0.125, 0.75])])
    import cv2

    expected = np.zeros((H, W), np.uint8)
    cv2.fillPoly(expected, [np.array([[32, 2], [58, 30], [8, 24]], np.int32)], 1)
    ds = data.load_yolo(tmp_path, classes=["bird", "cat"])
    assert np.array_equal(ds[0].masks["bird"], expected.astype(bool)) and not ds[0].masks["cat"].any()


def test_yolo_split_layout_dict_names_and_external_yaml(tmp_path):
    root = tmp_path / "coco128-seg"
    for split, seed in (("train", 0), ("val", 1)):
        _png(root / "images" / split / f"{split}1.jpg", _image(seed=seed))
        _label_file(root / "labels" / split / f"{split}1.txt", [(seed, _rect(1, 1, 9, 9))])
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames:\n  0: person\n  1: car\n")
    assert [s.image_id for s in data.load_yolo(root)] == ["val1"]  # no split given: val
    train = data.load_yolo(root, split="train")
    assert [s.image_id for s in train] == ["train1"] and np.array_equal(train[0].masks["person"], _box_mask(1, 1, 9, 9))
    assert train.classes == ["person", "car"]
    # ultralytics' own yaml sits elsewhere and points at the data with `path:`
    (tmp_path / "coco128-seg.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames: [a, b]\n")
    assert [s.image_id for s in data.load_yolo(tmp_path / "coco128-seg.yaml", split="val")] == ["train1"]
    with pytest.raises(DatasetError, match="No 'test' split.*train.*val"):
        data.load_yolo(root, split="test")
    (root / "data.yaml").unlink()
    with pytest.raises(DatasetError, match="names"):
        data.load_yolo(root, split="val")
    assert data.load_yolo(root, split="val", names=["p", "c"])[0].masks["c"].sum() == 81
    with pytest.raises(DatasetError, match="data.yaml is one folder up: pass"):  # pointed at images/
        (root / "data.yaml").write_text("names: [person, car]\n")
        data.load_yolo(root / "images")
    (root / "data.yaml").write_text("val: images/val\n")  # a yaml without names: no "one folder up" hint
    with pytest.raises(DatasetError, match="No class names") as error:
        data.load_yolo(root)
    assert "one folder up" not in str(error.value)
    # a train-only set (the notebooks have no split setting): its train split is read, and the notes say so
    only = tmp_path / "train-only"
    _png(only / "images" / "train" / "t1.jpg", _image())
    _label_file(only / "labels" / "train" / "t1.txt", [(0, _rect(1, 1, 9, 9))])
    (only / "data.yaml").write_text("train: images/train\nnames: [person]\n")
    dataset = data.load_yolo(only)
    assert dataset.ids == ["t1"] and any("No 'val' split" in n and "'train' split" in n for n in dataset.notes)


def test_yolo_bad_label_files_skip_their_image(tmp_path):
    (tmp_path / "data.yaml").write_text("names: {0: cat, 1: dog}\n")
    bad = {
        "class": ([(5, _rect(1, 1, 5, 5))], "class 5 is not in the names"),
        "box": ([(0, [0.5, 0.5, 0.2, 0.2])], "a box"),
        "odd": ([(0, [0.1, 0.1, 0.2, 0.2, 0.3])], "at least 3 x y pairs"),
        "pixels": ([(0, [1, 1, 30, 1, 30, 20])], "normalised to 0-1"),
    }
    for stem, (lines, _) in bad.items():
        _png(tmp_path / "images" / f"{stem}.png", _image())
        _label_file(tmp_path / "labels" / f"{stem}.txt", lines)
    _png(tmp_path / "images" / "text.png", _image())
    (tmp_path / "labels" / "text.txt").write_text("0 0.1 0.1 zero 0.2 0.3 0.3\n")
    _png(tmp_path / "images" / "good.png", _image())
    _label_file(tmp_path / "labels" / "good.txt", [(1, _rect(0, 0, 3, 3))])
    ds = data.load_yolo(tmp_path)
    assert [s.image_id for s in ds] == ["good"]
    reasons = dict(ds.skipped)
    for stem, (_, message) in bad.items():
        assert message in reasons[f"images/{stem}.png"] and f"{stem}.txt line 1" in reasons[f"images/{stem}.png"]
    assert "not numbers" in reasons["images/text.png"]
    with pytest.raises(DatasetError, match="line 1"):
        data.load_yolo(tmp_path, strict=True)


# --- suffixes and EXIF orientation ----------------------------------------------------------------


def test_tif_images_and_upper_case_mask_suffixes(tmp_path):
    labels = np.zeros((H, W), np.uint8)
    labels[4:20, 8:40] = 1
    _png(tmp_path / "img" / "a.tif", _image())
    _png(tmp_path / "img" / "b.TIFF", _image(seed=1))
    _png(tmp_path / "img" / "c.JPG", _image(seed=2))
    _png(tmp_path / "msk" / "a.PNG", labels)
    np.save(tmp_path / "msk" / "b.npy", labels)
    (tmp_path / "msk" / "b.npy").rename(tmp_path / "msk" / "b.NPY")
    _png(tmp_path / "msk" / "c.TIF", labels)
    ds = data.load_semantic_folder(tmp_path / "img", tmp_path / "msk", ["bg", "box"])
    assert [s.image_id for s in ds] == ["a", "b", "c"] and not ds.skipped
    assert all(np.array_equal(s.masks["box"], labels == 1) for s in ds)
    assert np.array_equal(ds[0].image, _image())


def test_exif_orientation_is_kept_as_stored_and_noted(tmp_path):
    stored = _image()
    _png(tmp_path / "img" / "photo.jpg", stored, exif=_exif(6), quality=95)
    _png(tmp_path / "img" / "scan.tif", stored, exif=_exif(6))  # PIL itself would rotate a TIFF
    _png(tmp_path / "img" / "plain.png", stored)
    for stem in ("photo", "scan", "plain"):
        _png(tmp_path / "msk" / f"{stem}.png", np.zeros((H, W), np.uint8))
    ds = data.load_semantic_folder(tmp_path / "img", tmp_path / "msk", ["bg"])
    assert [s.image.shape for s in ds] == [(H, W, 3)] * 3  # stored orientation, mask and image agree
    assert np.array_equal(ds[2].image, stored) and np.array_equal(
        data.read_image(tmp_path / "img" / "scan.tif"), stored
    )
    note = next(n for n in ds.notes if "EXIF orientation" in n)
    _png(tmp_path / "img" / "sideways.png", stored, exif=_exif(8))
    _png(tmp_path / "msk" / "sideways.png", np.zeros((W, H), np.uint8))  # mask drawn on the upright view
    skipped = dict(data.load_semantic_folder(tmp_path / "img", tmp_path / "msk", ["bg"]).skipped)
    assert "EXIF orientation 8, not applied" in skipped["sideways.png"]
    assert "photo.jpg" in note and "scan.tif" in note and "plain.png" not in note and "as stored" in note
    # COCO: same rule, same note
    coco = {
        "images": [{"id": 1, "file_name": "photo.jpg", "height": H, "width": W}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    assert any("photo.jpg" in n for n in data.load_coco(tmp_path / "c.json", tmp_path / "img").notes)
    # YOLO labels are drawn on the upright image (ultralytics reads with cv2, which applies the tag)
    (tmp_path / "y" / "data.yaml").parent.mkdir()
    (tmp_path / "y" / "data.yaml").write_text("names: [thing]\n")
    _png(tmp_path / "y" / "images" / "r.png", stored, exif=_exif(6))
    _label_file(tmp_path / "y" / "labels" / "r.txt", [(0, _rect(1, 2, 9, 40, w=H, h=W))])  # upright: 32 x 64
    ds = data.load_yolo(tmp_path / "y")
    assert np.array_equal(ds[0].image, np.rot90(stored, -1))
    assert np.array_equal(ds[0].masks["thing"], _box_mask(1, 2, 9, 40, h=W, w=H))
    assert any("r.png" in n and "upright" in n for n in ds.notes)


# --- folders of label maps with a classes.txt (SAMCLIP_DATASET=labelmaps) ---------------------------


def _label_map_folder(root, classes_txt, masks="labels"):
    labels = np.zeros((H, W), np.uint8)
    labels[4:20, 8:40] = 1
    labels[30:, :] = 255
    _png(root / "images" / "a.jpg", _image())
    _png(root / masks / "a.png", labels)
    (root / "classes.txt").write_text(classes_txt)
    return labels


@pytest.mark.parametrize(
    "text",
    [
        "background\nchair\n",
        "# ids in order\r\nbackground\r\n\r\n  chair  # the one to find\r\n",
        "\ufeff0 background\n1 chair\n",
        "0: background\n1,chair\n",
        "0\tbackground\n1 = chair\n",
    ],
)
def test_class_names_by_order_or_by_id(tmp_path, text):
    (tmp_path / "classes.txt").write_text(text)
    assert data.read_class_names(tmp_path / "classes.txt") == ({0: "background", 1: "chair"}, ())


def test_class_names_with_spaces_and_ignored_ids(tmp_path):
    (tmp_path / "classes.txt").write_text("0 background\n5 traffic\t  light\n7 C#\n-1 void\n254 Void\n255 void\n")
    table, ignored = data.read_class_names(tmp_path / "classes.txt")
    assert table == {0: "background", 5: "traffic light", 7: "C#", -1: "void", 254: "Void", 255: "void"}
    assert ignored == (-1, 254, 255)


@pytest.mark.parametrize(
    "text, message",
    [
        ("0 background\nchair\n2 table\n", "line 2: 'chair' has no id, unlike the other lines"),
        ("background\nchair\nsofa\n2 wheeler\n", "line 4: '2 wheeler' starts with an id, unlike the others"),
        ("0 background\n255\n", "line 2: the id 255 has no name"),
        ("chair\nChair\n", "line 2: 'Chair' \\(line 1 names it too\\) is named twice"),
        ("0 a\n00 b\n", "line 2: id 0 is named twice"),
        ("# nothing\n\n", "names no class"),
        ("0 void\n1 ignore\n", "names only classes left out of the scores"),
    ],
)
def test_class_names_refused_with_the_line_and_the_fix(tmp_path, text, message):
    (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(DatasetError, match=message) as error:
        data.read_class_names(tmp_path / "classes.txt")
    assert "'255 void'" in str(error.value)  # the fix: how the file is written


def test_class_names_not_utf8_say_so(tmp_path):
    (tmp_path / "classes.txt").write_bytes("chaise\nfenêtre\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="Cannot read .*classes.txt .*\\(UTF-8\\)"):
        data.read_class_names(tmp_path / "classes.txt")


def test_a_label_map_folder_reads_like_load_semantic_folder(tmp_path):
    labels = _label_map_folder(tmp_path / "rooms", "0 background\n1 chair\n255 void\n")
    ds = data.load_label_map_folder(tmp_path / "rooms")
    assert ds.name == "rooms" and ds.classes == ["background", "chair"] and [s.image_id for s in ds] == ["a"]
    assert np.array_equal(ds[0].masks["chair"], labels == 1)
    assert np.array_equal(ds[0].ignore["chair"], labels == 255)
    twin = data.load_semantic_folder(
        tmp_path / "rooms" / "images",
        tmp_path / "rooms" / "labels",
        {0: "background", 1: "chair", 255: "void"},
        (255,),
        name="rooms",
    )
    assert all(np.array_equal(ds[0].masks[c], twin[0].masks[c]) for c in ds.classes)
    assert data.load_label_map_folder(tmp_path / "rooms", classes=["chair"]).classes == ["chair"]
    with pytest.raises(DatasetError, match="void: named void or ignore in .*classes.txt, so its pixels are left out"):
        data.load_label_map_folder(tmp_path / "rooms", classes=["void"])


@pytest.mark.parametrize("case", ["one image", "the only image", "another skipped first", "two ids"])
def test_an_id_classes_txt_does_not_name_is_an_error_that_names_the_file(tmp_path, case):
    root = tmp_path / "rooms"
    _label_map_folder(root, "background\nchair\n")  # a.png holds 255 (VOC's border), unnamed
    if case == "one image":  # a second image without it: skipping a.jpg would go on with a subset
        _png(root / "images" / "b.jpg", _image(seed=1))
        _png(root / "labels" / "b.png", np.ones((H, W), np.uint8))
    if case == "another skipped first":  # 0.jpg has no map: the empty set's first reason is not the id
        _png(root / "images" / "0.jpg", _image(seed=1))
    if case == "two ids":
        _png(root / "images" / "b.jpg", _image(seed=1))
        _png(root / "labels" / "b.png", np.full((H, W), 7, np.uint8))
    with pytest.raises(DatasetError) as error:
        data.load_label_map_folder(root)
    message = str(error.value)
    ids = "[7, 255]" if case == "two ids" else "[255]"
    assert f"class id(s) {ids} (e.g. a.png)" in message and str(root / "classes.txt") in message
    assert "'7 void'" in message if case == "two ids" else "'255 void'" in message


def test_a_label_map_folder_takes_the_first_folder_that_holds_maps(tmp_path):
    root = tmp_path / "mixed"
    labels = _label_map_folder(root, "0 background\n1 chair\n255 void\n", masks="masks")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n")  # YOLO polygons beside, no label map
    assert np.array_equal(data.load_label_map_folder(root)[0].masks["chair"], labels == 1)


def test_a_label_map_folder_finds_the_coursework_layout(tmp_path):
    root = tmp_path / "scene"
    labels = _label_map_folder(root, "floor\nchair\n", masks="gt_semantic_2d/render_semantic")
    exact = root / "gt_semantic_2d" / "render_semantic_npy"
    exact.mkdir()
    np.save(exact / "a.npy", np.minimum(labels, 1))
    ds = data.load_label_map_folder(root)  # the exact .npy maps are preferred to the rendered ones' folder
    assert ds.classes == ["floor", "chair"] and np.array_equal(ds[0].masks["chair"], np.minimum(labels, 1) == 1)


@pytest.mark.parametrize(
    "missing, message",
    [("images", "No images/ folder"), ("labels", "No label maps in"), ("classes.txt", "No classes.txt in")],
)
def test_a_label_map_folder_says_what_is_missing(tmp_path, missing, message):
    root = tmp_path / "rooms"
    _label_map_folder(root, "background\nchair\n")
    remove(root / missing)
    with pytest.raises(DatasetError, match=message) as error:
        data.load_label_map_folder(root)
    assert str(root.absolute()) in str(error.value)


def test_a_label_map_folder_given_as_dot_keeps_its_name(tmp_path, monkeypatch):
    _label_map_folder(tmp_path / "rooms", "0 b\n1 chair\n255 void\n")
    monkeypatch.chdir(tmp_path / "rooms")
    assert data.load_label_map_folder(".").name == "rooms"


def test_samclip_dataset_labelmaps_prepares_the_folder(tmp_path):
    folder = tmp_path / "data" / "labelmaps"
    _label_map_folder(folder, "0 background\n1 chair\n255 void\n")
    config = _config(tmp_path, dataset="labelmaps", classes=("chair",), max_images=None)
    assert data.prepare_dataset(config).classes == ["chair"]
    back = data.load_prepared(config.dataset_dir, expected=data.dataset_request(config))
    assert back.ids == ["a"] and back[0].masks["chair"].sum() == 16 * 32 and back[0].ignore["chair"].any()
    (folder / "classes.txt").write_text("1 background\n0 chair\n255 void\n")  # ids swapped: the same size
    with pytest.raises(DatasetError, match="run notebooks/01_prepare_dataset.ipynb again"):
        data.load_prepared(config.dataset_dir, expected=data.dataset_request(config))


# --- bad masks, colour masks, huge images ---------------------------------------------------------


def test_unreadable_masks_skip_their_item(tmp_path):
    labels = np.zeros((H, W), np.uint8)
    labels[:8] = 1
    for stem in ("good", "truncated", "empty", "text", "pickled", "emptynpy"):
        _png(tmp_path / "img" / f"{stem}.png", _image())
    _png(tmp_path / "msk" / "good.png", labels)
    (tmp_path / "msk" / "truncated.png").write_bytes((tmp_path / "msk" / "good.png").read_bytes()[:-30])
    (tmp_path / "msk" / "empty.png").write_bytes(b"")
    (tmp_path / "msk" / "text.png").write_text("not an image")
    np.save(tmp_path / "msk" / "pickled.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "msk" / "emptynpy.npy").write_bytes(b"")
    ds = data.load_semantic_folder(tmp_path / "img", tmp_path / "msk", ["bg", "top"])
    assert [s.image_id for s in ds] == ["good"] and np.array_equal(ds[0].masks["top"], labels == 1)
    reasons = dict(ds.skipped)
    assert set(reasons) == {"truncated.png", "empty.png", "text.png", "pickled.png", "emptynpy.png"}
    for stem, reason in reasons.items():
        assert "cannot read mask" in reason and str(tmp_path / "msk" / stem.split(".")[0]) in reason
    assert "pickled" in reasons["pickled.png"] and "skipped 5" in ds.report()


def test_colour_masks_compare_all_channels_or_need_a_palette(tmp_path):
    colours = np.zeros((H, W, 3), np.uint8)  # classes differ only in the blue channel
    colours[:, 20:40, 2] = 128
    colours[:, 40:, 2] = 255
    _png(tmp_path / "img" / "a.png", _image())
    _png(tmp_path / "msk" / "a.png", colours)
    with pytest.raises(DatasetError, match="colour-coded mask.*palette=") as error:
        data.load_semantic_folder(tmp_path / "img", tmp_path / "msk", ["bg", "water", "sky"])
    assert str(tmp_path / "msk" / "a.png") in str(error.value)
    palette = {(0, 0, 0): 0, (0, 0, 128): 1, (0, 0, 255): 2}
    ds = data.load_semantic_folder(tmp_path / "img", tmp_path / "msk", ["bg", "water", "sky"], palette=palette)
    assert np.array_equal(ds[0].masks["water"], colours[..., 2] == 128)
    assert np.array_equal(ds[0].masks["sky"], colours[..., 2] == 255)
    with pytest.raises(DatasetError, match=r"not in the palette, e.g. \[\(0, 0, 255\)\]"):
        data.load_semantic_folder(
            tmp_path / "img", tmp_path / "msk", ["bg", "water", "sky"], palette={(0, 0, 0): 0, (0, 0, 128): 1}
        )
    grey = np.repeat((colours[..., 2:] > 0).astype(np.uint8), 3, axis=2)  # R = G = B: still a class-id map
    _png(tmp_path / "msk" / "a.png", grey)
    assert data.load_semantic_folder(tmp_path / "img", tmp_path / "msk", ["bg", "fg"])[0].masks["fg"][:, 20:].all()


def test_16_bit_grey_images_keep_their_top_8_bits_and_32_bit_ones_are_skipped(tmp_path):
    """A 16-bit grey PNG or TIFF reads as cv2.imread reads it (PIL's own conversion clips it to white);
    32-bit values beyond 0-255 have no fixed range: the image is skipped with why."""
    deep = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 31).astype(np.uint16)  # 0 to 63457
    _png(tmp_path / "img" / "a16.png", deep)
    _png(tmp_path / "img" / "b16.tif", deep)
    _png(tmp_path / "img" / "c32.tif", deep.astype(np.int32))
    _png(tmp_path / "img" / "d32.tif", deep.astype(np.float32))
    _png(tmp_path / "img" / "e32.tif", (deep >> 8).astype(np.int32))  # 32-bit, but 0-255: read as it is
    ds = data.load_images(tmp_path / "img")
    assert [s.image_id for s in ds] == ["a16", "b16", "e32"]
    for sample, name in zip(ds, ("a16.png", "b16.tif")):
        assert np.array_equal(sample.image, cv2.imread(str(tmp_path / "img" / name))[..., ::-1])
    assert all(np.array_equal(sample.image, np.dstack([deep >> 8] * 3)) for sample in ds)
    older = Image.fromarray(deep.astype(np.int32))  # how Pillow < 10.3 opens a 16-bit grey PNG: mode "I"
    older.format = "PNG"
    assert np.array_equal(_rgb8(older), ds[0].image)
    skipped = dict(ds.skipped)
    assert "32-bit integers from 0 to 63457" in skipped["c32.tif"] and "8- or 16-bit" in skipped["c32.tif"]
    assert "32-bit floats" in skipped["d32.tif"]


def test_float_images_in_0_to_1_are_scaled(tmp_path):
    """A float TIFF in 0-1 (scikit-image's convention) reads as its values x 255 (PIL alone reads it black);
    one in 0-255 as it is; NaN is refused with why."""
    ramp = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    _png(tmp_path / "img" / "a.tif", ramp)
    _png(tmp_path / "img" / "b.tif", ramp * 200)
    _png(tmp_path / "img" / "c.tif", np.where(ramp > 0.5, np.nan, ramp).astype(np.float32))
    ds = data.load_images(tmp_path / "img")
    assert [s.image_id for s in ds] == ["a", "b"]
    assert np.array_equal(ds[0].image, np.dstack([np.rint(ramp * 255).astype(np.uint8)] * 3))
    assert np.abs(ds[1].image[..., 0].astype(int) - ramp * 200).max() <= 1
    assert "NaN" in dict(ds.skipped)["c.tif"]


def test_labels_edited_after_indexing_are_not_read_stale(tmp_path):
    """A YOLO label file or a COCO json edited after the dataset was indexed (notebook 01) is reported at the next
    read, as a changed image is, instead of its old shapes being used without a word."""
    _png(tmp_path / "yolo" / "images" / "val" / "a.png", _image())
    _png(tmp_path / "yolo" / "images" / "val" / "b.png", _image(seed=1))
    label = tmp_path / "yolo" / "labels" / "val" / "a.txt"
    label.parent.mkdir(parents=True)
    label.write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n1 0.6 0.6 0.9 0.6 0.9 0.9\n")
    (tmp_path / "yolo" / "data.yaml").write_text("names: [circle, square]\n")
    data.save_dataset(data.load_yolo(tmp_path / "yolo"), tmp_path / "prepared")
    label.write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n")  # the square's line deleted
    with pytest.warns(UserWarning, match="gone or changed since notebook 01, first: label"):
        prepared = data.load_prepared(tmp_path / "prepared")
    assert prepared.ids == ["b"]  # b has no label file: nothing to check
    assert "label" in dict(prepared.skipped)["images/val/a.png"] and "changed since" in str(prepared.skipped)
    coco, images = _coco(tmp_path / "c", [{"image_id": 1, "category_id": 1, "segmentation": BOX}])
    dataset = data.load_coco(coco, images)
    data.save_dataset(dataset, tmp_path / "prepared-coco")
    coco.write_text(coco.read_text().replace('"cat"', '"cats"'))
    with pytest.raises(DatasetError, match="annotations .*c.json changed since the dataset was indexed"):
        dataset[0]
    with pytest.raises(DatasetError, match="changed since notebook 01 .*run notebooks/01_prepare_dataset.ipynb again"):
        data.load_prepared(tmp_path / "prepared-coco")  # every sample shares the json: prepare again, not "moved"


def test_images_over_the_decompression_bomb_limit_are_skipped_with_the_fix(tmp_path, monkeypatch):
    for stem, side in (("small", 16), ("huge", 100)):
        _png(tmp_path / "img" / f"{stem}.png", np.zeros((side, side, 3), np.uint8))
        _png(tmp_path / "msk" / f"{stem}.png", np.zeros((side, side), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 100 x 100 image is > 2x the limit: PIL raises
    ds = data.load_semantic_folder(tmp_path / "img", tmp_path / "msk", ["bg"])
    assert [s.image_id for s in ds] == ["small"]
    assert "PIL.Image.MAX_IMAGE_PIXELS = None" in dict(ds.skipped)["huge.png"]


# --- COCO json checks -----------------------------------------------------------------------------


def _coco(tmp_path, annotations, images=None):
    for i in range(1, 10):
        _png(tmp_path / "img" / f"{i}.png", np.zeros((30, 40, 3), np.uint8))
    content = {
        "images": images or [{"id": i, "file_name": f"{i}.png", "height": 30, "width": 40} for i in range(1, 10)],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cow"}],
        "annotations": [dict({"id": 100 + i, "iscrowd": 0}, **ann) for i, ann in enumerate(annotations)],
    }
    (tmp_path / "c.json").write_text(json.dumps(content))
    return tmp_path / "c.json", tmp_path / "img"


BOX = [[5, 5, 20, 5, 20, 15, 5, 15]]


def test_coco_bad_annotations_are_listed_never_silently_wrong(tmp_path):
    path, images = _coco(
        tmp_path,
        [
            {"image_id": 1, "category_id": 1, "segmentation": BOX},
            {"image_id": 1, "category_id": 99, "segmentation": BOX},  # 101: unknown category, dropped
            {"image_id": 2, "category_id": 1, "segmentation": [[5, 5, 20, 5]]},  # 2 points: pycocotools reads a box
            {"image_id": 3, "category_id": 1, "segmentation": [[5, 5]]},
            {"image_id": 4, "category_id": 1, "segmentation": []},
            {"image_id": 5, "category_id": 1, "segmentation": [[5, 5, 20, 5, 20, 15, 5]]},
            {"image_id": 6, "category_id": 1, "segmentation": {"counts": [600, 600], "size": [40, 30]}},
            {"image_id": 7, "category_id": 1},
            {"image_id": 8, "segmentation": BOX},  # 108: no category, dropped
            {"image_id": 42, "category_id": 1, "segmentation": BOX},  # 109: no such image
            {"image_id": 9, "category_id": 2, "segmentation": {"counts": "garbage!", "size": [30, 40]}},
        ],
    )
    ds = data.load_coco(path, images)
    assert [s.image_id for s in ds] == ["1", "8"]
    assert ds[0].masks["cat"].sum() == 150 and list(ds[0].masks) == ["cat"] and ds[1].masks == {}
    reasons = dict(ds.skipped)
    assert (
        "category_id 99" in reasons["annotation 101 (image 1)"]
        and "category_id None" in reasons["annotation 108 (image 8)"]
    )
    assert "42" in reasons["annotation 109"]
    for image_id, ann_id, message in (
        (2, 102, "at least 3 (x, y) pairs"),
        (3, 103, "at least 3 (x, y) pairs"),
        (4, 104, "empty segmentation"),
        (5, 105, "got 7 coordinates"),
        (6, 106, "RLE size [40, 30] differs"),
        (7, 107, "no 'segmentation'"),
        (9, 110, "RLE"),
    ):
        reason = reasons[f"{image_id}.png (image {image_id})"]
        assert reason.startswith(f"annotation {ann_id}: ") and message in reason
    # a bad annotation of a class not asked for does not matter
    assert [s.image_id for s in data.load_coco(path, images, classes=["dog"])] == [str(i) for i in range(1, 9)]
    with pytest.raises(DatasetError, match="annotation 10"):
        data.load_coco(path, images, strict=True)


def test_coco_file_problems_name_the_file_and_the_fix(tmp_path):
    path, images = _coco(tmp_path, [])
    path.write_text('{"images": [], "annotations": [')
    with pytest.raises(DatasetError, match=f"{path}.*not valid JSON.*line 1"):
        data.load_coco(path, images)
    for content, message in (
        ({"images": [], "annotations": []}, "no 'categories' list"),
        ({"images": [], "categories": []}, "no 'annotations' list"),
        ({"images": [], "annotations": [], "categories": [{"id": 1}]}, r"categories\[0\].*'name'"),
        ([1, 2], "JSON object"),
    ):
        path.write_text(json.dumps(content))
        with pytest.raises(DatasetError, match=message):
            data.load_coco(path, images)
    images_json = [
        {"id": 1, "file_name": "1.png", "width": 40},
        {"id": 2, "file_name": "2.png", "height": 30, "width": 40},
    ]
    path, images = _coco(tmp_path, [{"image_id": 2, "category_id": 3, "segmentation": BOX}], images_json)
    ds = data.load_coco(path, images)
    assert [s.image_id for s in ds] == ["2"] and "'height'" in dict(ds.skipped)["image 1"]
    assert ds.classes == ["cat", "dog", "cow"] and ds.present_classes() == ["cow"]


# --- provenance of the prepared dataset -----------------------------------------------------------


def _config(tmp_path, **kwargs):
    values = dict(dataset="demo", data_path=None, classes=(), max_images=2, root=tmp_path)
    values.update(kwargs)
    return SimpleNamespace(dataset_dir=tmp_path / "outputs" / "dataset", **values)


def test_prepared_dataset_records_its_request_and_refuses_another(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMCLIP_DATA_PATH", str(tmp_path / "elsewhere"))  # the environment is not read
    (tmp_path / "data.yaml").parent.mkdir(exist_ok=True)
    yolo = tmp_path / "data" / "yolo"
    (yolo / "data.yaml").parent.mkdir(parents=True)
    (yolo / "data.yaml").write_text("names: [cat, dog]\n")
    _png(yolo / "images" / "a.png", _image())
    _label_file(yolo / "labels" / "a.txt", [(1, _rect(0, 0, 7, 7))])
    config = _config(tmp_path, dataset="yolo", classes=("dog",), max_images=None)
    request = data.dataset_request(config)
    assert request == {"dataset": "yolo", "data_path": str(yolo.absolute()), "classes": ["dog"], "max_images": None}
    data.prepare_dataset(config)
    back = data.load_prepared(config.dataset_dir, expected=request)
    assert back.classes == ["dog"] and back[0].masks["dog"].sum() == 64
    demo = _config(tmp_path)
    with pytest.raises(DatasetError) as error:
        data.load_prepared(config.dataset_dir, expected=data.dataset_request(demo))
    message = str(error.value)
    assert str(config.dataset_dir.absolute()) in message and "'yolo'" in message and "'demo'" in message
    assert "run notebooks/01_prepare_dataset.ipynb again (or `make run`)" in message
    data.prepare_dataset(demo)  # a demo run replaces it: the yolo request no longer matches
    assert len(data.load_prepared(demo.dataset_dir, expected=data.dataset_request(demo))) == 2
    with pytest.raises(DatasetError, match="prepared for"):
        data.load_prepared(demo.dataset_dir, expected=request)
    data.save_dataset(data.make_demo_dataset(1), demo.dataset_dir)  # no request recorded (older version)
    with pytest.raises(DatasetError, match="older version"):
        data.load_prepared(demo.dataset_dir, expected=data.dataset_request(demo))
    missing = _config(tmp_path, dataset="camvid", data_path=tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=str(tmp_path / "nowhere")):
        data.prepare_dataset(missing)


def test_a_coco_limit_counts_the_images_that_are_there(tmp_path):
    """The full json beside a few of its images (a common download): limit=N gives N images, the missing
    files listed, not N minus the missing ones."""
    coco, images = _coco(tmp_path, [{"image_id": i, "category_id": 1, "segmentation": BOX} for i in range(1, 10)])
    for i in (1, 2, 4, 5):
        (images / f"{i}.png").unlink()
    dataset = data.load_coco(coco, images, limit=3)
    assert dataset.ids == ["3", "6", "7"]
    assert [item for item, _ in dataset.skipped] == [
        "1.png (image 1)",
        "2.png (image 2)",
        "4.png (image 4)",
        "5.png (image 5)",
    ]


def test_coco_settings_take_the_json_itself_or_an_exported_folder(tmp_path):
    """SAMCLIP_DATA_PATH for coco: COCO's own layout, a folder as write_coco_dataset (or CVAT) writes, or the json."""
    from helpers.export import write_coco_dataset

    demo = data.make_demo_dataset(3, seed=5)
    folder = write_coco_dataset(demo, tmp_path / "export")  # annotations.json and images/
    for where in (folder, folder / "annotations.json"):
        dataset = data.prepare_dataset(_config(tmp_path, dataset="coco", data_path=where, max_images=None))
        assert len(dataset) == 3 and all(np.array_equal(a.image, b.image) for a, b in zip(dataset, demo))
    (folder / "other.json").write_text("{}")
    with pytest.raises(DatasetError, match="annotations.json, other.json: which one"):
        data.coco_files(folder)
    (folder / "images").rename(folder / "pictures")
    with pytest.raises(DatasetError, match="No image folder for .*annotations.json: looked for"):
        data.coco_files(folder / "annotations.json")
    roboflow = tmp_path / "roboflow" / "valid"  # its json beside the images
    roboflow.mkdir(parents=True)
    (folder / "annotations.json").rename(roboflow / "_annotations.coco.json")
    for image in (folder / "pictures").iterdir():
        image.rename(roboflow / image.name)
    assert data.coco_files(roboflow) == (roboflow / "_annotations.coco.json", roboflow)
    train = tmp_path / "train-only" / "annotations"  # COCO's train annotations: instances_*.json is the one
    train.mkdir(parents=True)
    for name in ("captions_train2017.json", "instances_train2017.json", "person_keypoints_train2017.json"):
        (train / name).write_text("{}")
    (train.parent / "images").mkdir()
    assert data.coco_files(train.parent)[0].name == "instances_train2017.json"


# --- real data --------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_coco_polygons_as_a_yolo_folder_match_the_coco_masks(tmp_path):
    """The shared COCO images, their polygons written as YOLO labels: both loaders agree."""
    root = shared_data("coco_val2017_mini")
    content = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    names = {c["id"]: c["name"] for c in content["categories"]}
    ids = sorted(names)
    coco = data.load_coco(root / "annotations" / "instances_val2017.json", root / "val2017", limit=12)
    assert coco.present_classes() and set(coco.present_classes()) < set(coco.classes)
    (tmp_path / "data.yaml").write_text(json.dumps({"names": [names[i] for i in ids]}))  # JSON is YAML
    info = {i["id"]: i for i in content["images"]}
    for sample in coco:
        image = info[int(sample.image_id)]
        lines = []
        for ann in content["annotations"]:
            if ann["image_id"] == image["id"] and not ann["iscrowd"]:
                for polygon in ann["segmentation"]:
                    xy = np.array(polygon).reshape(-1, 2) / (image["width"], image["height"])
                    lines.append((ids.index(ann["category_id"]), xy.clip(0, 1).ravel()))
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "images" / f"{sample.image_id}.jpg").symlink_to(root / "val2017" / image["file_name"])
        _label_file(tmp_path / "labels" / f"{sample.image_id}.txt", lines)
    yolo = data.load_yolo(tmp_path)
    assert [s.image_id for s in yolo] == sorted(s.image_id for s in coco) and not yolo.skipped
    by_id = {s.image_id: s for s in coco}
    total_both = total_either = 0
    for sample in yolo:
        truth = by_id[sample.image_id]
        assert sorted(sample.masks) == sorted(truth.masks)
        for name, mask in sample.masks.items():
            both, either = (mask & truth.masks[name]).sum(), (mask | truth.masks[name]).sum()
            # cv2.fillPoly on truncated coordinates vs pycocotools' rasteriser: about a pixel at the edges
            assert either < 2000 or both / either > 0.9, (sample.image_id, name, both / either)
            total_both, total_either = total_both + both, total_either + either
    assert total_both / total_either > 0.97
