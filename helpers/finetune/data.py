"""Training data for CLIP fine-tuning: class folders checked strictly, cut-outs of a segmentation
dataset in the pipeline's region mode, a stratified split, CLIP's own preprocessing after a light
augmentation (random resized crop, horizontal flip)."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ..data import Dataset, DatasetError, LabelledImage, Sample, load_class_folders
from ..masks import MaskSet
from ..regions import RegionSettings, extract_region


class FinetuneDataError(DatasetError):
    """Training data that cannot be used; the message says what to fix."""


def load_finetune_folders(root: str | Path, per_class: int | None = None) -> tuple[list[LabelledImage], list[str]]:
    """``root/<class>/<images>`` as training data; an empty class folder or an unreadable image
    (named) is an error here, not a class that silently never appears."""
    root = Path(root)
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if not any(p.is_file() for p in folder.iterdir()):
                raise FinetuneDataError(f"Class folder {folder} is empty: add images or remove the folder.")
    items, classes = load_class_folders(root, per_class)  # DatasetError names an unreadable file
    empty = sorted(set(classes) - {item.label for item in items})
    if empty:
        raise FinetuneDataError(f"Class folder(s) {empty} in {root} hold no images with a known suffix.")
    check_items(items, classes, val_share=0.0)
    return items, classes


def check_items(items: Sequence[LabelledImage], classes: Sequence[str], val_share: float) -> None:
    """Raise FinetuneDataError unless there are >= 2 classes, every label is a class, and
    (with a validation split) every class has >= 2 images."""
    if len(set(classes)) < 2:
        raise FinetuneDataError(f"Fine-tuning needs at least 2 classes to contrast; got {list(classes)}.")
    counts = {name: 0 for name in classes}
    for item in items:
        if item.label not in counts:
            raise FinetuneDataError(f"{item.path}: label {item.label!r} is not one of the classes {list(classes)}.")
        counts[item.label] += 1
    missing = [name for name, n in counts.items() if n == 0]
    if missing:
        raise FinetuneDataError(f"Class(es) {missing} have no images.")
    single = [name for name, n in counts.items() if n < 2]
    if val_share > 0 and single:
        raise FinetuneDataError(
            f"Class(es) {single} have a single image, which cannot be split into training and validation: "
            "add images or set val_share=0."
        )


def keep_splittable(
    items: Sequence[LabelledImage], minimum: int = 2
) -> tuple[list[LabelledImage], list[str], list[str]]:
    """Drop the classes with fewer than ``minimum`` images (object crops of a dataset often have
    a few); returns (items kept, their sorted classes, the dropped classes)."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item.label] = counts.get(item.label, 0) + 1
    dropped = sorted(name for name, n in counts.items() if n < minimum)
    kept = [item for item in items if counts[item.label] >= minimum]
    return kept, sorted({item.label for item in kept}), dropped


def split_items(
    items: Sequence[LabelledImage], val_share: float, seed: int = 0
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(train, validation), stratified by class and reproducible: each class with n images gives
    round(n * val_share) of them, at least 1 and at most n - 1, to validation."""
    if val_share <= 0:
        return list(items), []
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_class.setdefault(item.label, []).append(index)
    val: set[int] = set()
    for name in sorted(by_class):
        indices = by_class[name]
        n_val = min(len(indices) - 1, max(1, round(len(indices) * val_share)))
        val.update(rng.permutation(indices)[:n_val].tolist())
    return [x for i, x in enumerate(items) if i not in val], [x for i, x in enumerate(items) if i in val]


def random_resized_crop(image: Image.Image, rng: random.Random, scale: tuple[float, float]) -> Image.Image:
    """A random box of ``scale`` of the area and aspect ratio 3/4..4/3 (torchvision's rule, our RNG)."""
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.crop((x, y, x + w, y + h))
    return image


def image_batch(
    preprocess: Callable,
    images: Sequence[Image.Image],
    rng: random.Random | None = None,
    crop_scale: tuple[float, float] = (0.8, 1.0),
) -> torch.Tensor:
    """CLIP's own ``preprocess`` of each image, after a random resized crop and a coin-flip
    horizontal flip when ``rng`` is given (training; validation passes None)."""
    out = []
    for image in images:
        if rng is not None:
            image = random_resized_crop(image, rng, crop_scale)
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(preprocess(image))
    return torch.stack(out)


def region_cutouts(
    dataset: Dataset,
    regions: RegionSettings = RegionSettings(),
    min_area: int = 200,
    names: Mapping[str, str] | None = None,
) -> list[LabelledImage]:
    """Each class present in each sample cut out by its ground-truth mask in the pipeline's own
    region mode (``regions``; default: the masked crop on neutral grey), so CLIP learns from the
    pictures SAM + CLIP will score; labelled with ``names[class]`` where given (renamed classes)."""
    names = dict(names or {})
    items = []
    for sample in dataset.samples:
        for name, mask in sample.masks.items():
            if not mask.any() or mask.sum() < min_area:
                continue
            box = MaskSet.from_masks(mask[None]).bboxes()[0]
            label = names.get(name, name)
            items.append(
                LabelledImage(extract_region(sample.image, mask, box, regions), label, f"{sample.image_id}:{name}")
            )
    return items


def rename_classes(dataset: Dataset, names: Mapping[str, str]) -> Dataset:
    """``dataset`` with its classes (masks, ignore masks, instances, class list) renamed by ``names``;
    the images and masks are shared, not copied (every sample is read: a small dataset)."""
    samples = [
        Sample(
            s.image_id,
            s.image,
            {names.get(k, k): v for k, v in s.masks.items()},
            {names.get(k, k): v for k, v in s.ignore.items()},
            [replace(i, label=names.get(i.label, i.label)) for i in s.instances],
        )
        for s in dataset.samples
    ]
    return replace(dataset, samples=samples, classes=[names.get(c, c) for c in dataset.classes])
