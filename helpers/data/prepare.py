"""The run's dataset, chosen by the run's settings, prepared once for notebooks 02-04."""

from __future__ import annotations

from pathlib import Path

from .coco import load_coco
from .demo import make_demo_dataset
from .label_map_folder import load_label_map_folder
from .label_maps import load_camvid
from .storage import save_dataset
from .types import Dataset, DatasetError, is_image_file
from .yolo import load_yolo

DATASETS = ("demo", "coco", "camvid", "yolo", "labelmaps")


def data_path(config) -> Path | None:
    """Where the run's dataset lies (absolute): ``config.data_path``, else ``<root>/data/<dataset>``;
    None for the generated demo set."""
    if config.dataset == "demo":
        return None
    return Path(config.data_path or Path(config.root) / "data" / config.dataset).expanduser().absolute()


def dataset_request(config) -> dict:
    """What the run asks for: dataset, absolute data path, classes and image limit. ``prepare_dataset``
    records it in the manifest; ``load_prepared(folder, expected=dataset_request(config))`` checks it."""
    path = data_path(config)
    request = {
        "dataset": config.dataset,
        "data_path": None if path is None else str(path),
        "classes": list(config.classes or []),
        "max_images": config.max_images,
    }
    seed = _demo_seed(config)
    if seed:  # another seed is another dataset (recorded only when not the default 0, as before)
        request["seed"] = seed
    return request


def _demo_seed(config) -> int:
    """The seed of the generated demo images (``RunConfig.demo_seed``; 0 for other datasets)."""
    return int(getattr(config, "demo_seed", 0) or 0) if config.dataset == "demo" else 0


def coco_files(path: Path) -> tuple[Path, Path]:
    """(annotation json, image folder) of the COCO set at ``path``: COCO's own layout
    (``annotations/instances_val2017*.json``, ``val2017/``), a folder holding one json and ``images/`` (what
    ``write_coco_dataset`` and CVAT write) or the images themselves (Roboflow's ``_annotations.coco.json``), or
    the json itself with ``images/`` or ``val2017/`` beside it or one folder up, or images beside it."""
    path = Path(path)
    if path.is_file():
        found, roots = [path], [path.parent, path.parent.parent]
    else:
        found = sorted((path / "annotations").glob("instances_val2017*.json"))[:1]
        for pattern in ("*.json", "annotations/instances_*.json", "annotations/*.json"):
            found = found or sorted(path.glob(pattern))
        roots = [path]
    if len(found) != 1:
        listed = f" ({', '.join(p.name for p in found[:5])}: which one?)" if found else ""
        raise DatasetError(
            f"No single COCO json under {path}{listed}: set SAMCLIP_DATA_PATH to the json itself, or to a folder "
            "holding annotations/instances_val2017*.json and val2017/ (fetch_coco_subset in notebook 01 makes one)."
        )
    folders = [root / name for root in roots for name in ("val2017", "images")]
    images = next((folder for folder in folders if folder.is_dir()), None)
    if images is None and any(is_image_file(p) for p in found[0].parent.iterdir()):  # images beside the json (Roboflow)
        images = found[0].parent
    if images is None:
        raise DatasetError(
            f"No image folder for {found[0]}: looked for {', '.join(str(f) for f in folders)} and images beside the "
            "json; put the images there."
        )
    return found[0], images


def prepare_dataset(config) -> Dataset:
    """The run's dataset (``config.dataset``: demo, coco, camvid, yolo or labelmaps, read from ``config.data_path``),
    saved with its request to ``config.dataset_dir`` for the next notebooks."""
    kind = config.dataset
    if kind not in DATASETS:
        raise DatasetError(f"SAMCLIP_DATASET={kind!r} is not known; use one of {', '.join(DATASETS)}.")
    path = data_path(config)
    classes = list(config.classes or []) or None
    limit = config.max_images
    if path is not None and not path.exists():
        raise DatasetError(f"The {kind} data folder {path} does not exist; set SAMCLIP_DATA_PATH to where it lies.")
    if kind == "demo":
        dataset = make_demo_dataset(limit or 12, seed=_demo_seed(config))
    elif kind == "coco":
        annotations, images = coco_files(path)
        dataset = load_coco(annotations, images, classes=classes, limit=limit, progress=True)
    elif kind == "camvid":
        dataset = load_camvid(path, limit=limit, classes=classes)
    elif kind == "labelmaps":
        dataset = load_label_map_folder(path, classes=classes, limit=limit)
    else:
        dataset = load_yolo(path, classes=classes, limit=limit, progress=True)
    if classes:
        dataset.check_classes(classes)
    save_dataset(dataset, config.dataset_dir, request=dataset_request(config))
    return dataset
