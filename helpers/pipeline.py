"""The text-prompted segmentation pipeline: SAM masks -> filters -> regions -> CLIP -> selection.

SAM masks and region embeddings are cached per image; a new prompt, threshold or selection
mode only costs a matrix product. ``process_dataset`` resumes after an interruption.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .cache import ResultCache, image_key, settings_key
from .clip_scoring import DEFAULT_TEMPLATES, TextEmbeddings, encode_images
from .data import Dataset
from .masks import FilterSettings, MaskSet, apply_filters
from .models import LoadedClip, LoadedSam
from .precision import check_precision
from .regions import RegionSettings, extract_regions
from .segmentation import SamSettings, generate_masks
from .selection import SelectionSettings, mask_scores, prompt_columns, similarities


@dataclass(frozen=True)
class PipelineSettings:
    sam: SamSettings = field(default_factory=SamSettings)
    filters: FilterSettings = field(default_factory=FilterSettings)
    regions: RegionSettings = field(default_factory=RegionSettings)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    batch_size: int | None = None  # regions per CLIP pass; None: 16 on CPU, 64 on GPU
    clip_precision: str = "float32"  # "bfloat16" / "float16": faster image encoder, scores change ~1e-3

    def __post_init__(self) -> None:
        check_precision(self.clip_precision)


@dataclass
class ImageResult:
    """What the cache holds for one image: its filtered masks and their CLIP embeddings."""

    image_id: str
    masks: MaskSet
    embeddings: np.ndarray  # len(masks) x D, float32, unit length


@dataclass
class Prediction:
    mask: np.ndarray  # H x W bool: union of the kept masks
    keep: np.ndarray  # N bool
    scores: np.ndarray  # N float32: the selection mode's score for the target
    similarities: np.ndarray  # N x K cosine similarities to ``names``
    names: list[str]


class Pipeline:
    """Holds the models, the settings and the cache; counts how often SAM really runs."""

    def __init__(
        self, sam: LoadedSam, clip: LoadedClip, settings: PipelineSettings = PipelineSettings(), cache_dir=None
    ) -> None:
        self.sam, self.clip, self.settings = sam, clip, settings
        self.cache = ResultCache(cache_dir) if cache_dir else None
        self.text = TextEmbeddings(clip, settings.templates)
        self.sam_runs = 0
        self.clip_image_runs = 0
        self.sam_key = settings_key(model=sam.name, **settings.sam.cache_fields())
        self.embedding_key = settings_key(
            sam=self.sam_key,
            filters=asdict(settings.filters),
            clip=clip.name,
            regions=asdict(settings.regions),
            precision=settings.clip_precision,
        )

    def segment(self, image: np.ndarray, key: str | None = None) -> MaskSet:
        """SAM's raw masks for ``image``, from the cache when there."""
        key = key or image_key(image)
        masks = self.cache.load_masks(key, self.sam_key) if self.cache else None
        if masks is None:
            masks = generate_masks(self.sam, image, self.settings.sam)
            self.sam_runs += 1
            if self.cache:
                self.cache.save_masks(key, self.sam_key, masks)
        return masks

    def process(self, image: np.ndarray, image_id: str = "") -> ImageResult:
        """Filtered masks and their embeddings; runs SAM and the CLIP image encoder only on a miss."""
        key = image_key(image)
        embeddings = self.cache.load_embeddings(key, self.embedding_key) if self.cache else None
        masks = apply_filters(self.segment(image, key), self.settings.filters)
        if embeddings is None or len(embeddings) != len(masks):
            regions = extract_regions(image, masks, self.settings.regions)
            embeddings = encode_images(self.clip, regions, self.settings.batch_size, self.settings.clip_precision)
            self.clip_image_runs += 1
            if self.cache:
                self.cache.save_embeddings(key, self.embedding_key, embeddings)
        return ImageResult(image_id or key, masks, embeddings)

    def process_dataset(self, dataset: Dataset, progress: bool = True) -> list[ImageResult]:
        """Every image of ``dataset``; each result is cached as soon as it is made, so an
        interrupted run (a Colab disconnect) resumes where it stopped."""
        return [
            self.process(sample.image, sample.image_id)
            for sample in tqdm(dataset.samples, desc="SAM + CLIP", disable=not progress)
        ]

    def predict(
        self,
        result: ImageResult,
        prompt: str,
        selection: SelectionSettings = SelectionSettings(),
        classes: Sequence[str] | None = None,
    ) -> Prediction:
        """The mask for ``prompt``. ``classes`` is the list the softmax mode competes over
        (the prompt is added when missing); negative prompts are appended to it."""
        names = prompt_columns(prompt, classes, selection.negatives)
        sims = similarities(result.embeddings, self.text(names))
        scores = mask_scores(sims, names.index(prompt), selection.mode, len(selection.negatives))
        keep = scores >= selection.threshold
        return Prediction(result.masks.union(keep), keep, scores, sims, names)

    def segment_by_text(
        self,
        image: np.ndarray,
        prompt: str,
        selection: SelectionSettings = SelectionSettings(),
        classes: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Type a word, get its mask: the one-call entry point."""
        return self.predict(self.process(image), prompt, selection, classes).mask


def default_settings(config) -> PipelineSettings:
    """The pipeline settings for a run: SAM's defaults (loosened in the smoke profile so that
    random tiny models still return masks), small masks and masks inside larger ones dropped,
    both image encoders in the run's precision."""
    return PipelineSettings(
        sam=replace(SamSettings(precision=config.precision), **config.sam_overrides),
        filters=FilterSettings(min_area=100, max_inside=0.9),
        clip_precision=config.precision,
    )
