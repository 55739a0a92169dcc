"""COCO instances json (through pycocotools) and a val2017 subset download."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np

from ..files import write_text
from ..instances import Instance
from .lazy import LazySamples, SampleRef, check_sources, fingerprints, pack, path_text, register_reader
from .types import Dataset, DatasetError, Sample, finish, load_image

COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
COCO_IMAGES_URL = "http://images.cocodataset.org/val2017/"


def load_coco(
    annotation_file: str | Path,
    image_dir: str | Path,
    classes: list[str] | None = None,
    image_ids: list[int] | None = None,
    limit: int | None = None,
    strict: bool = False,
    check: bool = True,
    progress: bool = False,
) -> Dataset:
    """A COCO instances json: each annotation is a ``Sample.instances`` entry and a class's mask is
    the union of its instances; crowd regions go into ``Sample.ignore`` (COCOeval ignores them too).
    With ``classes``, every sample carries every listed class (empty
    masks where absent); without, the classes present in each image (``Dataset.classes`` keeps
    every category; ``Dataset.present_classes()`` those with pixels).

    The json is read and checked up front: a broken file raises DatasetError naming it and what
    to fix; an annotation with an unknown category is dropped and listed. Samples are read from
    disk when touched (``lazy.LazySamples``; the json's annotations for each image are kept).
    ``check`` reads each image once now, one at a time: an unreadable image, a size that
    differs from the json or a malformed annotation (bad polygon, RLE of another size, empty
    segmentation) is skipped and listed here; without it, at first touch. ``limit``: the first that many
    images whose files are there (one missing is listed and not counted).
    """
    annotation_file = Path(annotation_file)
    content = _read_json(annotation_file)
    names = _categories(annotation_file, content["categories"])
    all_classes = list(dict.fromkeys(names[i] for i in sorted(names)))
    dataset = Dataset(annotation_file.stem, LazySamples([]), all_classes)
    dataset.check_classes(classes or [])
    dataset.classes = classes or all_classes
    images = _images(annotation_file, content["images"], dataset.skipped)
    by_image = _annotations(content["annotations"], images, names, dataset.skipped)
    wanted = {i for i, name in names.items() if classes is None or name in classes}
    try:
        ids = sorted(images) if image_ids is None else list(image_ids)
    except TypeError:  # mixed id types
        ids = sorted(images, key=str)
    for image_id in ids:
        if limit and len(dataset.samples.refs) >= limit:
            break
        if image_id not in images:
            dataset.skipped.append((str(image_id), "image id not in the annotation file (or its entry is invalid)"))
            continue
        info = images[image_id]
        path = Path(image_dir) / info["file_name"]
        if limit and not path.is_file():  # e.g. the full val2017 json beside some of its images: `limit` found ones
            dataset.skipped.append((f"{info['file_name']} (image {image_id})", f"no file {path}"))
            continue
        shapes = [
            [names[a["category_id"]], int(bool(a.get("iscrowd", 0))), a.get("segmentation"), a.get("id")]
            for a in by_image.get(image_id, [])
            if a["category_id"] in wanted
        ]
        source = {
            "image": path_text(path),
            "name": str(info["file_name"]),
            "height": info["height"],
            "width": info["width"],
            "shapes": pack(shapes),
            "classes": classes,
            "annotations": path_text(annotation_file),  # read now; its size checked at each read, as the image's
        }
        source["fingerprint"] = fingerprints(source, "image", "annotations")
        dataset.samples.refs.append(SampleRef(str(image_id), "coco", f"{info['file_name']} (image {image_id})", source))
    oriented = dataset.samples.scan(progress) if check else []
    return finish(dataset, strict, oriented)


@register_reader("coco")
def read_coco_sample(ref: SampleRef) -> tuple[Sample, int]:
    """One COCO sample: the image, checked against the json's size, and its annotations rasterised."""
    source = ref.source
    path = Path(source["image"])
    check_sources(source)
    image, orientation = load_image(path)
    height, width = source["height"], source["width"]
    if image.shape[:2] != (height, width):
        hint = f" (the file carries EXIF orientation {orientation})" if orientation != 1 else ""
        raise DatasetError(f"image is {image.shape[1]}x{image.shape[0]} but the json says {width}x{height}{hint}")
    masks: dict[str, np.ndarray] = {name: np.zeros(image.shape[:2], bool) for name in source["classes"] or []}
    ignore: dict[str, np.ndarray] = {}
    instances: list[Instance] = []
    for name, crowd, segmentation, ann_id in json.loads(source["shapes"]):
        target = ignore if crowd else masks
        try:
            region = _rasterise({"segmentation": segmentation}, height, width)
        except _BadAnnotation as exc:
            raise DatasetError(f"annotation {ann_id}: {exc}") from exc
        target[name] = target[name] | region if name in target else region
        if not crowd:
            instances.append(Instance(region, name))
    return Sample(ref.image_id, image, masks, ignore, instances), orientation


class _BadAnnotation(ValueError):
    pass


def _known(key: object, table: dict) -> bool:
    try:
        return key in table
    except TypeError:  # an unhashable id (a list, a dict)
        return False


def _string_counts(text: bytes) -> list[int] | None:
    """The run lengths of a COCO compressed RLE string (pycocotools' rleFrString), None if corrupt:
    checked here because pycocotools decodes without bounds checks."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value = shift = 0
        more = True
        while more:
            if pos >= len(text):
                return None
            char = text[pos] - 48
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            pos += 1
            shift += 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)
        counts.append(value + counts[-2] if len(counts) > 2 else value)
    return counts


def _read_json(path: Path) -> dict:
    where = path.absolute()
    try:
        content = json.loads(path.read_bytes())
    except OSError as exc:
        raise DatasetError(f"cannot read the COCO annotation file {where}: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where} is not valid JSON ({exc}); re-download or repair the file.") from exc
    if not isinstance(content, dict):
        raise DatasetError(f"{where}: a COCO file is a JSON object, not a {type(content).__name__}.")
    for key, shape in (("images", "{id, file_name, height, width}"), ("categories", "{id, name}")):
        if not isinstance(content.get(key), list):
            raise DatasetError(f"{where} has no {key!r} list; a COCO instances file needs one of {shape}.")
    if not isinstance(content.get("annotations"), list):
        raise DatasetError(f"{where} has no 'annotations' list: is it an instances (segmentation) file?")
    return content


def _categories(path: Path, entries: list) -> dict:
    names: dict = {}
    for index, cat in enumerate(entries):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
            raise DatasetError(f"{path.absolute()}: categories[{index}] = {cat!r} needs an 'id' and a 'name'.")
        if cat["id"] in names:
            raise DatasetError(f"{path.absolute()}: category id {cat['id']!r} is listed twice.")
        names[cat["id"]] = cat["name"]
    return names


def _images(path: Path, entries: list, skipped: list) -> dict:
    images: dict = {}
    for index, info in enumerate(entries):
        if not isinstance(info, dict) or "id" not in info:
            skipped.append((f"images[{index}]", "image entry has no 'id'"))
            continue
        missing = [key for key in ("file_name", "height", "width") if key not in info]
        if missing:
            skipped.append((f"image {info['id']}", f"the json entry has no {', '.join(map(repr, missing))}"))
            continue
        if not all(isinstance(info[key], int) and info[key] > 0 for key in ("height", "width")):
            skipped.append((f"image {info['id']}", "'height' and 'width' must be positive integers"))
            continue
        if _known(info["id"], images):
            raise DatasetError(f"{path.absolute()}: image id {info['id']!r} is listed twice.")
        images[info["id"]] = info
    return images


def _annotations(entries: list, images: dict, names: dict, skipped: list) -> dict:
    """Annotations by image id; those with no known image or category are listed and dropped."""
    by_image: dict = {}
    for index, ann in enumerate(entries):
        if not isinstance(ann, dict):
            skipped.append((f"annotations[{index}]", "not a JSON object"))
            continue
        label = f"annotation {ann.get('id', f'#{index}')}"
        if not _known(ann.get("image_id"), images):
            skipped.append((label, f"image_id {ann.get('image_id')!r} is not among the valid 'images'"))
        elif not _known(ann.get("category_id"), names):
            known = f"known ids {sorted(names, key=str)[:12]}"
            skipped.append((f"{label} (image {ann['image_id']})", f"category_id {ann.get('category_id')!r}: {known}"))
        else:
            by_image.setdefault(ann["image_id"], []).append(ann)
    return by_image


def _rasterise(ann: dict, height: int, width: int) -> np.ndarray:
    """One annotation's mask (polygons or RLE), validated first: raises _BadAnnotation."""
    from pycocotools import mask as mask_utils

    segm = ann.get("segmentation")
    if isinstance(segm, list):
        if not segm:
            raise _BadAnnotation("empty segmentation []")
        for part in segm:
            if not isinstance(part, list) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in part):
                raise _BadAnnotation("a polygon must be a list of numbers, segmentation [[x1, y1, x2, y2, ...]]")
            if len(part) % 2 or len(part) < 6:
                raise _BadAnnotation(f"a polygon needs at least 3 (x, y) pairs, got {len(part)} coordinates")
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            raise _BadAnnotation(f"RLE size {segm['size']} differs from the image's [height, width] {[height, width]}")
        counts = segm["counts"]
        if isinstance(counts, str):
            counts = counts.encode()
        numbers = _string_counts(counts) if isinstance(counts, bytes) else counts
        if not isinstance(numbers, list) or not all(isinstance(n, int) and n >= 0 for n in numbers):
            raise _BadAnnotation("RLE counts must be non-negative integers or a COCO compressed string")
        if sum(numbers) != height * width:
            raise _BadAnnotation(f"RLE counts sum to {sum(numbers)}, not height x width = {height * width}")
        rle = mask_utils.frPyObjects(segm, height, width) if isinstance(counts, list) else dict(segm, counts=counts)
    else:
        raise _BadAnnotation("no 'segmentation' polygons or RLE {size, counts}")
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as exc:  # pycocotools raises bare errors for corrupt compressed RLE
        raise _BadAnnotation(f"cannot decode the RLE: {exc}") from exc


def fetch_coco_subset(
    image_ids: list[int],
    dest: str | Path,
    annotations_url: str = COCO_ANNOTATIONS_URL,
    images_url: str = COCO_IMAGES_URL,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Download a val2017 subset from the official COCO site: the annotation zip (241 MB, once,
    resumable), cut down to ``image_ids``, and those images. Returns (annotation json, image dir)."""
    from ..checkpoints.download import download_file

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
    write_text(ann_path, json.dumps(subset))
    return ann_path, image_dir
