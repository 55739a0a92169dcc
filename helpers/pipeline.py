"""The text-prompted segmentation pipeline: SAM masks -> filters -> regions -> CLIP -> selection.

SAM masks and region embeddings are cached per image; a new prompt, threshold or selection
mode only costs a matrix product. ``process_dataset`` resumes after an interruption. SAM may
be given unloaded (a ``models.SamSource``): it is loaded only when an image misses the cache,
so evaluating cached results never loads it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from .cache import ResultCache, image_key, settings_key
from .clip_scoring import DEFAULT_TEMPLATES, TextEmbeddings, encode_masks
from .data import Dataset
from .instances import Instance, from_result
from .masks import FilterSettings, MaskSet, apply_filters
from .models.loading import LoadedClip, LoadedSam, SamSource
from .precision import check_precision
from .regions import RegionSettings
from .regions import cache_fields as region_cache_fields
from .segmentation import SamSettings, generate_masks
from .selection import ImageResult, Prediction, SelectionSettings, predict

__all__ = ["CachedResults", "ImageResult", "Pipeline", "PipelineSettings", "Prediction", "load_cached"]


@dataclass(frozen=True)
class PipelineSettings:
    """``sam``: SAM's generator; ``filters``: post-filters on its masks; ``regions``: how each
    mask is cut out for CLIP; ``templates``: prompt templates averaged per name; ``batch_size``:
    regions per CLIP pass (None: 16 on CPU, 64 on GPU); ``precision``: float32 (exact), or
    bfloat16 / float16 for SAM's and CLIP's image encoders (faster; scores move ~1e-3)."""

    sam: SamSettings = field(default_factory=SamSettings)
    filters: FilterSettings = field(default_factory=FilterSettings)
    regions: RegionSettings = field(default_factory=RegionSettings)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    batch_size: int | None = None
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_precision(self.precision)


def load_cached(
    cache: ResultCache, filters: FilterSettings, key: str, sam_key: str, embedding_key: str, image_id: str = ""
) -> ImageResult | None:
    """The result ``Pipeline.process`` returns for image ``key`` when both its masks and its
    embeddings are cached under these keys; None otherwise. Never runs a model."""
    masks = cache.load_masks(key, sam_key)
    embeddings = cache.load_embeddings(key, embedding_key)
    if masks is None or embeddings is None:
        return None
    masks = apply_filters(masks, filters)
    return ImageResult(image_id or key, masks, embeddings) if len(masks) == len(embeddings) else None


class Pipeline:
    """Holds the models, the settings and the cache; counts how often SAM really runs."""

    def __init__(
        self,
        sam: LoadedSam | SamSource,
        clip: LoadedClip,
        settings: PipelineSettings = PipelineSettings(),
        cache_dir=None,
    ) -> None:
        self.sam, self.clip, self.settings = sam, clip, settings
        self.cache = ResultCache(cache_dir) if cache_dir else None
        self.text = TextEmbeddings(clip, settings.templates)
        self.sam_runs = 0
        self.clip_image_runs = 0
        sam_fields = settings.sam.cache_fields(settings.precision)
        self.sam_key = settings_key(model=sam.identity, precision=settings.precision, **sam_fields)
        self.embedding_key = settings_key(
            sam=self.sam_key,
            filters=asdict(settings.filters),
            clip=clip.identity,
            regions=region_cache_fields(settings.regions),
            precision=settings.precision,
        )

    @property
    def sam_loaded(self) -> bool:
        """True once SAM is loaded (it is loaded only when an image misses the cache)."""
        return isinstance(self.sam, LoadedSam)

    def segment(self, image: np.ndarray, key: str | None = None) -> MaskSet:
        """SAM's raw masks for ``image``, from the cache when there (SAM is loaded on a miss)."""
        key = key or image_key(image)
        masks = self.cache.load_masks(key, self.sam_key) if self.cache else None
        if masks is None:
            if not self.sam_loaded:
                if self.cache is not None:  # say so up front: notebooks 03-04 expect notebook 02's cache
                    tqdm.write(
                        f"An image is not in the cache {self.cache.root} with these settings: loading SAM to compute "
                        "its masks here (and those of any other image missing there)."
                    )
                self.sam = self.sam.load()
            masks = generate_masks(self.sam, image, self.settings.sam, self.settings.precision)
            self.sam_runs += 1
            if self.cache:
                self.cache.save_masks(key, self.sam_key, masks)
        return masks

    def process(self, image: np.ndarray, image_id: str = "", key: str | None = None) -> ImageResult:
        """Filtered masks and their embeddings; runs SAM and the CLIP image encoder only on a miss.
        ``key``: the image's ``image_key`` when already known."""
        key = key or image_key(image)
        if self.cache:
            hit = load_cached(self.cache, self.settings.filters, key, self.sam_key, self.embedding_key, image_id)
            if hit is not None:
                return hit
        masks = apply_filters(self.segment(image, key), self.settings.filters)
        embeddings = encode_masks(
            self.clip, image, masks, self.settings.regions, self.settings.batch_size, self.settings.precision
        )
        self.clip_image_runs += 1
        if self.cache:
            self.cache.save_embeddings(key, self.embedding_key, embeddings)
        return ImageResult(image_id or key, masks, embeddings)

    def process_dataset(self, dataset: Dataset, progress: bool = True) -> Sequence[ImageResult]:
        """Every image of ``dataset``, one at a time; each result is cached as soon as it is made, so
        an interrupted run (a Colab disconnect) resumes where it stopped.

        For a dataset read from disk (``dataset.lazy``) with a cache, the results come back as
        ``CachedResults``, read from the cache when touched, so memory does not grow with the
        dataset; otherwise as a list. A sample that turned unreadable is dropped and listed in
        ``dataset.skipped`` (see ``helpers.data.lazy``)."""
        streamed = dataset.lazy and self.cache is not None
        entries: list = []
        for sample in tqdm(dataset, total=len(dataset), desc="SAM + CLIP", disable=not progress):
            key = image_key(sample.image)
            result = self.process(sample.image, sample.image_id, key)
            keys = (key, self.sam_key, self.embedding_key, sample.image_id)
            entries.append(keys if streamed and self.cache.writable else result)
        if not streamed:
            return entries

        def recompute(image_id: str) -> ImageResult:
            return self.process(dataset[dataset.ids.index(image_id)].image, image_id)

        return CachedResults(self.cache, self.settings.filters, entries, recompute)

    def predict(
        self,
        result: ImageResult,
        prompt: str,
        selection: SelectionSettings = SelectionSettings(),
        classes: Sequence[str] | None = None,
    ) -> Prediction:
        """The mask for ``prompt`` (``selection.predict`` with this pipeline's text encoder)."""
        return predict(result, self.text, prompt, selection, classes)

    def instances(
        self,
        result: ImageResult,
        classes: Sequence[str],
        selection: SelectionSettings = SelectionSettings(),
        nms_iou: float = 0.5,
        max_instances: int = 100,
    ) -> list[Instance]:
        """One image's objects for a whole class list, from its cached result (``instances.from_result``:
        each mask to its best class, negatives such as "background" drop it, mask NMS per class)."""
        return from_result(result, self.text, classes, selection, nms_iou, max_instances)

    def segment_by_text(
        self,
        image: np.ndarray,
        prompt: str,
        selection: SelectionSettings = SelectionSettings(),
        classes: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Type a word, get its mask: the one-call entry point (a word the demo CLIP never read is warned about)."""
        self.clip.check_prompt(prompt)
        return self.predict(self.process(image), prompt, selection, classes).mask


class CachedResults(Sequence[ImageResult]):
    """Results read back from a cache when touched (the last few kept), so memory does not grow with
    the number of images. An entry is an ``ImageResult`` or the cache keys it was stored under,
    ``(image key, sam_key, embedding_key, image id)``, captured when it was made. An entry gone from
    the cache meanwhile is made again by ``recompute(image_id)``; without one it is an error."""

    def __init__(
        self,
        cache: ResultCache | None,
        filters: FilterSettings | None,
        entries: list,
        recompute: Callable[[str], ImageResult] | None = None,
    ) -> None:
        self.cache, self.filters, self.recompute = cache, filters, recompute
        self.entries = list(entries)
        self._recent: OrderedDict[int, ImageResult] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        return [e.image_id if isinstance(e, ImageResult) else e[3] for e in self.entries]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return CachedResults(self.cache, self.filters, self.entries[index], self.recompute)
        entry = self.entries[index]
        if isinstance(entry, ImageResult):
            return entry
        index = range(len(self.entries))[index]
        if index in self._recent:
            self._recent.move_to_end(index)
            return self._recent[index]
        result = load_cached(self.cache, self.filters, *entry)
        if result is None:  # removed or corrupted since: the same computation again
            if self.recompute is None:
                root = self.cache.root if self.cache else None
                raise RuntimeError(
                    f"The cache entry of image {entry[3]} in {root} is gone since the run; run it again."
                )
            result = self.recompute(entry[3])
        self._recent[index] = result
        while len(self._recent) > 4:
            self._recent.popitem(last=False)
        return result
