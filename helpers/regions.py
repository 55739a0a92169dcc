"""Cut each mask out of the image as a picture CLIP can score."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .masks import MaskSet

NEUTRAL_GREY = (122, 116, 104)  # CLIP's mean pixel: a background that carries no content
REGION_MODES = ("masked_crop", "masked_full", "crop")


@dataclass(frozen=True)
class RegionSettings:
    """``masked_crop``: the mask's box, pixels outside the mask painted ``background``;
    ``masked_full``: the whole image with everything outside the mask black;
    ``crop``: the mask's box as it is. ``margin`` widens the box by that share of its size.
    ``mirror``: CLIP also sees each cut-out mirrored left to right and the region's embedding is the
    normalised mean of the two (test-time augmentation: twice the CLIP passes; the demo profile's)."""

    mode: str = "masked_crop"
    margin: float = 0.1
    background: tuple[int, int, int] = NEUTRAL_GREY
    mirror: bool = False

    def __post_init__(self) -> None:
        if self.mode not in REGION_MODES:
            raise ValueError(f"Unknown region mode {self.mode!r}; use one of {REGION_MODES}.")


def cache_fields(settings: RegionSettings) -> dict:
    """The fields that key cached embeddings: ``mirror`` only when on, so caches made before it existed stay valid."""
    fields = asdict(settings)
    if not settings.mirror:
        del fields["mirror"]
    return fields


def padded_box(box: np.ndarray, margin: float, height: int, width: int) -> tuple[int, int, int, int]:
    """``box`` (x0, y0, x1, y1) widened by ``margin`` of its size on each side, clipped to the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    dx, dy = round((x1 - x0) * margin), round((y1 - y0) * margin)
    return max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy)


def extract_region(image: np.ndarray, mask: np.ndarray, box: np.ndarray, settings: RegionSettings) -> np.ndarray:
    """One mask cut out of ``image`` as ``settings.mode`` says (see ``RegionSettings``)."""
    if settings.mode == "masked_full":
        return np.where(mask[..., None], image, 0).astype(np.uint8)
    x0, y0, x1, y1 = padded_box(box, settings.margin, *image.shape[:2])
    if x1 <= x0 or y1 <= y0:  # empty mask: one background pixel
        return np.full((1, 1, 3), settings.background, np.uint8)
    crop = image[y0:y1, x0:x1]
    if settings.mode == "crop":
        return crop.copy()
    return np.where(mask[y0:y1, x0:x1, None], crop, np.array(settings.background, np.uint8)).astype(np.uint8)


def extract_regions(image: np.ndarray, masks: MaskSet, settings: RegionSettings = RegionSettings()) -> list[np.ndarray]:
    """Step 3: every mask of ``masks`` cut out of ``image``, in mask order, as RGB uint8 pictures for CLIP."""
    if masks.shape != image.shape[:2]:
        raise ValueError(f"Masks are {masks.shape} but the image is {image.shape[:2]}.")
    boxes = masks.bboxes()
    return [extract_region(image, masks.mask(i), boxes[i], settings) for i in range(len(masks))]
