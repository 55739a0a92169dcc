"""CLIP embeddings of regions and prompts, always returned as float32 on the CPU."""

from __future__ import annotations

from typing import Sequence

import clip
import numpy as np
import torch
from PIL import Image

from .masks import MaskSet
from .models.loading import LoadedClip
from .precision import autocast
from .regions import RegionSettings, extract_regions
from .selection import CLIP_LOGIT_SCALE

DEFAULT_TEMPLATES = ("a photo of a {}.",)
# A small ensemble in the spirit of CLIP's ImageNet prompt engineering.
ENSEMBLE_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a low resolution photo of a {}.",
    "a rendering of a {}.",
)


def check_prompts(names: Sequence[str]) -> list[str]:
    """The prompts stripped; an empty one is a ValueError that says what to type."""
    if isinstance(names, str):
        names = [names]
    cleaned = [str(n).strip() for n in names]
    if not cleaned or any(not n for n in cleaned):
        raise ValueError("The prompt is empty: type what to find, for example 'chair'.")
    return cleaned


def _normalise(embeddings: torch.Tensor) -> np.ndarray:
    embeddings = embeddings.float()
    return (embeddings / embeddings.norm(dim=-1, keepdim=True)).cpu().numpy().astype(np.float32)


def encode_text(model: LoadedClip, names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
    """One unit vector per name: the normalised mean of its normalised template embeddings."""
    names = check_prompts(names)
    tokens = clip.tokenize([t.format(n) for n in names for t in templates]).to(model.device)
    with torch.inference_mode():
        per_template = torch.from_numpy(_normalise(model.model.encode_text(tokens)))
    mean = per_template.reshape(len(names), len(templates), -1).mean(dim=1)
    return _normalise(mean)


def preprocess_regions(model: LoadedClip, regions: Sequence[np.ndarray]) -> torch.Tensor:
    """CLIP's own preprocessing of each region, stacked into one batch tensor."""
    return torch.stack([model.preprocess(Image.fromarray(region)) for region in regions])


def default_batch_size(device: str) -> int:
    """Regions per forward pass. On a GPU large batches are nearly free; on a CPU 16
    ViT-B/32 regions already run at >90 % of the float32 matrix-multiply peak (the benchmark's
    batch-size table), so larger batches only cost memory."""
    return 64 if str(device).startswith("cuda") else 16


def encode_images(
    model: LoadedClip,
    regions: Sequence[np.ndarray],
    batch_size: int | None = None,
    precision: str = "float32",
    mirror: bool = False,
) -> np.ndarray:
    """Unit embeddings of all ``regions`` (RGB uint8 arrays), ``batch_size`` at a time
    (default: ``default_batch_size`` of the model's device), the encoder run in ``precision``.
    ``mirror``: each region is also encoded mirrored left to right and its embedding is the
    normalised mean of the two (``RegionSettings.mirror``)."""
    if mirror:
        both = encode_images(
            model, [*regions, *(np.ascontiguousarray(r[:, ::-1]) for r in regions)], batch_size, precision
        )
        if len(regions) == 0:
            return both
        mean = torch.from_numpy(both[: len(regions)] + both[len(regions) :])
        return _normalise(mean)
    width = model.model.visual.output_dim
    batch_size = batch_size or default_batch_size(model.device)
    if len(regions) == 0:
        return np.zeros((0, width), np.float32)
    chunks = []
    for start in range(0, len(regions), batch_size):
        batch = preprocess_regions(model, regions[start : start + batch_size]).to(model.device)
        with torch.inference_mode(), autocast(model.device, precision):
            chunks.append(_normalise(model.model.encode_image(batch)))
    return np.concatenate(chunks)


def encode_masks(
    model: LoadedClip,
    image: np.ndarray,
    masks: MaskSet,
    regions: RegionSettings = RegionSettings(),
    batch_size: int | None = None,
    precision: str = "float32",
) -> np.ndarray:
    """Steps 3 and 4 together: every mask of ``masks`` cut out of ``image`` as ``regions`` says and embedded by
    ``encode_images`` (mirrored too when ``regions.mirror``), so each caller embeds masks as the pipeline does."""
    return encode_images(model, extract_regions(image, masks, regions), batch_size, precision, regions.mirror)


class TextEmbeddings:
    """Prompt embeddings computed once per (name, templates) and reused."""

    def __init__(self, model: LoadedClip, templates: Sequence[str] = DEFAULT_TEMPLATES) -> None:
        self.model, self.templates = model, tuple(templates)
        self._cache: dict[str, np.ndarray] = {}

    @property
    def logit_scale(self) -> float:
        """The temperature this CLIP learnt, for the softmax over prompts (``selection.logit_scale``): 100 for OpenAI's;
        the demo CLIP's is about 14 (at 100 its probabilities were all 1.0). Read from the model each time."""
        scale = getattr(self.model.model, "logit_scale", None)
        return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else CLIP_LOGIT_SCALE

    def __call__(self, names: Sequence[str]) -> np.ndarray:
        names = check_prompts(names)
        missing = [n for n in dict.fromkeys(names) if n not in self._cache]
        if missing:
            self._cache.update(zip(missing, encode_text(self.model, missing, self.templates)))
        return np.stack([self._cache[n] for n in names])
