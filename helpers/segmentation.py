"""SAM's automatic mask generator with its settings exposed, returning a ``MaskSet``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from .masks import MaskSet
from .models import LoadedSam
from .precision import autocast, check_precision


@dataclass(frozen=True)
class SamSettings:
    """Arguments of ``SamAutomaticMaskGenerator`` (same defaults) plus optional resizing."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    max_side: int | None = None  # shrink larger images to this long side before SAM

    def generator_options(self) -> dict:
        """The keyword arguments of ``SamAutomaticMaskGenerator`` (ours are not among them)."""
        options = asdict(self)
        for ours in ("max_side",):
            options.pop(ours)
        return options

    def cache_fields(self) -> dict:
        """What decides the masks (points_per_batch only trades memory for speed)."""
        fields = asdict(self)
        fields.pop("points_per_batch")
        return fields


class EncoderPrecisionPredictor(SamPredictor):
    """A ``SamPredictor`` whose image encoder (most of SAM's time) runs in ``precision``; the
    features go back to float32, so the mask decoder and post-processing stay as they are."""

    def __init__(self, model, precision: str) -> None:
        super().__init__(model)
        self.precision = precision

    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        with autocast(self.device, self.precision):
            super().set_torch_image(transformed_image, original_image_size)
        self.features = self.features.float()


def resize_long_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` shrunk so its long side is at most ``max_side`` (unchanged when None or smaller)."""
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def generate_masks(
    sam: LoadedSam, image: np.ndarray, settings: SamSettings = SamSettings(), precision: str = "float32"
) -> MaskSet:
    """All masks SAM finds in ``image`` (H x W x 3 uint8 RGB), at the image's own size."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"SAM needs an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}.")
    generator = SamAutomaticMaskGenerator(sam.model, output_mode="binary_mask", **settings.generator_options())
    if check_precision(precision) != "float32":  # the predictor's autocast checks the device supports it
        generator.predictor = EncoderPrecisionPredictor(sam.model, precision)
    small = resize_long_side(image, settings.max_side)
    with torch.inference_mode():
        records = generator.generate(small)
    height, width = image.shape[:2]
    if not records:
        return MaskSet.from_masks(np.zeros((0, height, width), bool))
    masks = np.stack([r["segmentation"] for r in records])
    if small is not image:
        masks = np.stack(
            [cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) for m in masks]
        ).astype(bool)
    return MaskSet.from_masks(masks, [r["predicted_iou"] for r in records], [r["stability_score"] for r in records])
