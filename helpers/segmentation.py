"""SAM's automatic mask generator with its settings exposed, returning a ``MaskSet``.

Two engines give the same masks: ``fast`` (the default, ``helpers.sam``: the decoder's
prompt-independent work done once, only IoU survivors upscaled, bounded memory) and
``reference`` (segment-anything's ``SamAutomaticMaskGenerator``, for comparison).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from .masks import MaskSet
from .models.loading import LoadedSam
from .precision import autocast, check_precision
from .sam.generator import ENGINE_VERSION, check_rgb_image, generate_mask_set

ENGINES = ("fast", "reference")


@dataclass(frozen=True)
class SamSettings:
    """Arguments of ``SamAutomaticMaskGenerator`` (same defaults), ``max_side`` to shrink large
    images first, and the ``engine`` that runs them (``fast`` or ``reference``: same masks)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    max_side: int | None = None  # shrink larger images to this long side before SAM
    engine: str = "fast"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"Unknown SAM engine {self.engine!r}; use one of {ENGINES}.")

    def generator_options(self) -> dict:
        """The keyword arguments of ``SamAutomaticMaskGenerator`` (ours are not among them)."""
        options = asdict(self)
        for ours in ("max_side", "engine"):
            options.pop(ours)
        return options

    def cache_fields(self, precision: str = "float32") -> dict:
        """What decides the masks: not ``points_per_batch`` (memory against speed), and not the
        engine in float32, where both give the same masks; in 16 bits the fast engine also runs
        its decoder in 16 bits, so its masks differ from the reference's slightly."""
        fields = asdict(self)
        fields.pop("points_per_batch")
        engine = fields.pop("engine")
        if precision != "float32":
            fields["engine"] = ENGINE_VERSION if engine == "fast" else engine
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
    """Step 1: all masks SAM finds in ``image`` (H x W x 3 uint8 RGB), at the image's own size,
    with ``settings.engine``; ``precision`` "bfloat16"/"float16" runs SAM's encoder (and, in the
    fast engine, its decoder) in 16 bits."""
    check_rgb_image(image)
    small = resize_long_side(image, settings.max_side)
    with torch.inference_mode():
        if settings.engine == "fast":
            masks = generate_mask_set(sam.model, small, precision=precision, **settings.generator_options())
        else:
            masks = _reference_masks(sam, small, settings, precision)
    if small is not image:  # nearest-neighbour on the atom ids is the same resize for every mask
        height, width = image.shape[:2]
        atoms = cv2.resize(masks.atoms, (width, height), interpolation=cv2.INTER_NEAREST)
        masks = MaskSet(atoms, masks.membership, masks.predicted_iou, masks.stability)
    return masks


def _reference_masks(sam: LoadedSam, image: np.ndarray, settings: SamSettings, precision: str) -> MaskSet:
    """segment-anything's own generator, its records turned into a ``MaskSet``."""
    generator = SamAutomaticMaskGenerator(sam.model, output_mode="binary_mask", **settings.generator_options())
    if check_precision(precision) != "float32":  # the predictor's autocast checks the device supports it
        generator.predictor = EncoderPrecisionPredictor(sam.model, precision)
    records = generator.generate(image)
    if not records:
        return MaskSet.from_masks(np.zeros((0, *image.shape[:2]), bool))
    masks = np.stack([r["segmentation"] for r in records])
    return MaskSet.from_masks(masks, [r["predicted_iou"] for r in records], [r["stability_score"] for r in records])
