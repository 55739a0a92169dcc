"""COCO instances json (through pycocotools) and a val2017 subset download."""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .types import Dataset, DatasetError, Sample, finish, read_image

COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
COCO_IMAGES_URL = "http://images.cocodataset.org/val2017/"


def load_coco(
    annotation_file: str | Path,
    image_dir: str | Path,
    classes: list[str] | None = None,
    image_ids: list[int] | None = None,
    limit: int | None = None,
    strict: bool = False,
) -> Dataset:
    """A COCO instances json: a class's mask is the union of its instances; crowd regions go
    into ``Sample.ignore``. With ``classes``, every sample carries every listed class (empty
    masks where absent); without, the classes present in each image."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotation_file))
    names = {cat["id"]: cat["name"] for cat in coco.loadCats(coco.getCatIds())}
    all_classes = [names[i] for i in sorted(names)]
    dataset = Dataset(Path(annotation_file).stem, [], all_classes)
    dataset.check_classes(classes or [])
    dataset.classes = classes or all_classes
    wanted = {i for i, name in names.items() if classes is None or name in classes}
    ids = sorted(coco.getImgIds()) if image_ids is None else list(image_ids)
    for image_id in ids[:limit] if limit else ids:
        if image_id not in coco.imgs:
            dataset.skipped.append((str(image_id), "image id not in the annotation file"))
            continue
        info = coco.imgs[image_id]
        try:
            image = read_image(Path(image_dir) / info["file_name"])
        except DatasetError as exc:
            dataset.skipped.append((info["file_name"], str(exc)))
            continue
        if image.shape[:2] != (info["height"], info["width"]):
            dataset.skipped.append(
                (
                    info["file_name"],
                    f"image is {image.shape[1]}x{image.shape[0]} but the json says {info['width']}x{info['height']}",
                )
            )
            continue
        masks: dict[str, np.ndarray] = {name: np.zeros(image.shape[:2], bool) for name in classes or []}
        ignore: dict[str, np.ndarray] = {}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, catIds=sorted(wanted), iscrowd=None)):
            name = names[ann["category_id"]]
            target = ignore if ann.get("iscrowd", 0) else masks
            region = coco.annToMask(ann).astype(bool)
            target[name] = target[name] | region if name in target else region
        dataset.samples.append(Sample(str(image_id), image, masks, ignore))
    return finish(dataset, strict)


# --- semantic label maps ------------------------------------------------------------------------


def fetch_coco_subset(
    image_ids: list[int],
    dest: str | Path,
    annotations_url: str = COCO_ANNOTATIONS_URL,
    images_url: str = COCO_IMAGES_URL,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Download a val2017 subset from the official COCO site: the annotation zip (241 MB, once,
    resumable), cut down to ``image_ids``, and those images. Returns (annotation json, image dir)."""
    from ..download import download_file

    dest = Path(dest)
    image_dir = dest / "val2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    archive = download_file([annotations_url], dest / Path(annotations_url).name, progress=progress)
    with zipfile.ZipFile(archive) as zipped:
        member = next((n for n in zipped.namelist() if n.endswith("instances_val2017.json")), None)
        if member is None:
            raise DatasetError(f"{archive} has no instances_val2017.json; delete it and download again.")
        full = json.loads(zipped.read(member))
    wanted = set(image_ids)
    missing = wanted - {img["id"] for img in full["images"]}
    if missing:
        raise DatasetError(f"image id(s) {sorted(missing)} are not in COCO val2017.")
    subset = dict(
        full,
        images=[i for i in full["images"] if i["id"] in wanted],
        annotations=[a for a in full["annotations"] if a["image_id"] in wanted],
    )
    for info in subset["images"]:
        download_file([images_url + info["file_name"]], image_dir / info["file_name"], progress=False)
    ann_path = dest / "annotations" / "instances_val2017_subset.json"
    ann_path.parent.mkdir(exist_ok=True)
    tmp = ann_path.with_name(ann_path.name + ".part")
    tmp.write_text(json.dumps(subset))
    os.replace(tmp, ann_path)
    return ann_path, image_dir


# --- prepared datasets on disk ------------------------------------------------------------------
