"""A faster ``SamAutomaticMaskGenerator`` with the same masks, in bounded memory.

Same model, point grid, crops, gates, NMS and output order as segment-anything's generator
(``output_mode="binary_mask"``); what changes is where the work goes:

* the mask decoder does the prompt-independent work once per image (``decoder``);
* the IoU gate runs on the tokens, before any upscaling: only surviving masks are upscaled, and
  prompts with no survivor are never upscaled at all;
* survivors are upscaled to full size in chunks sized by pixels, binarised, boxed and gated; only
  their 256 x 256 logits are kept, and the final masks are rendered again one chunk at a time
  straight into a ``MaskSet`` (no RLE round trip, no N x H x W stack), so an 8000 x 6000 image runs
  in a few GB.

Masks equal the reference's up to float32 rounding of the decoder's logits (about 1e-6).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_all_layer_point_grids,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
    uncrop_boxes_xyxy,
)
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.ops.boxes import batched_nms, box_area

from ..masks import MaskSet, mask_set_from_stream
from ..precision import autocast, check_precision
from .allocator import reuse_freed_memory, trim_if_over
from .decoder import PromptBatchDecoder
from .encoder import embed_image
from .upscale import Upscaler

ENGINE_VERSION = "fast-1"
UPSCALE_PROMPTS = 16  # prompts upscaled together (the 256 x 256 x 32 features: 8 MB each)
CHUNK_BYTES = 128 << 20  # full-size float logits held at once


@dataclass
class GateCounts:
    """How many candidate masks each stage let through (summed over crops)."""

    candidates: int = 0  # points x 3 masks
    iou_gate: int = 0  # predicted IoU > pred_iou_thresh
    stability_gate: int = 0  # stability score >= stability_score_thresh
    crop_edge: int = 0  # not cut by a crop's inner edge
    box_nms: int = 0  # after NMS within each crop
    crop_nms: int = 0  # after NMS between crops
    final: int = 0  # after small-region removal and its NMS


@dataclass
class _Crop:
    box: list[int]  # x0, y0, x1, y1 in the image
    upscaler: Upscaler  # postprocess_masks to the crop's size, and exact gate statistics without it


@dataclass
class _Candidates:
    """Masks kept so far, as their low-resolution logits (the full-size mask is re-rendered)."""

    low_res: torch.Tensor  # n x 256 x 256
    iou: torch.Tensor  # n
    stability: torch.Tensor  # n
    boxes: torch.Tensor  # n x 4, xyxy
    crop: torch.Tensor  # n, index of the crop

    @classmethod
    def cat(cls, parts: list[_Candidates], low_res_side: int, device: torch.device) -> _Candidates:
        """The parts one after the other, on ``device`` (also when there are none: a crop without
        candidates must not put CPU tensors beside a GPU's)."""
        if not parts:
            empty = torch.zeros(0, device=device)
            side = low_res_side
            return cls(
                torch.zeros(0, side, side, device=device),
                empty,
                empty,
                torch.zeros(0, 4, device=device),
                torch.zeros(0, dtype=torch.long, device=device),
            )
        fields = ("low_res", "iou", "stability", "boxes", "crop")
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in fields))

    def filter(self, keep: torch.Tensor) -> _Candidates:
        return _Candidates(self.low_res[keep], self.iou[keep], self.stability[keep], self.boxes[keep], self.crop[keep])


def _chunk_size(crop: _Crop, side: int, full: bool) -> int:
    """Masks upscaled at once: full-size logits within CHUNK_BYTES or, for the exact statistics
    (``full=False``, not 1024 px long: ``Upscaler.stats``, which bounds its own full-size work by
    ``DENSE_BYTES``), about 8 stage-1 maps (1024 x 1024) per mask."""
    x0, y0, x1, y1 = crop.box
    full = full or crop.upscaler.kind in (None, "identity")
    per_mask = (x1 - x0) * (y1 - y0) if full else 8 * crop.upscaler.side**2
    return int(max(1, min(64, CHUNK_BYTES // (4 * (per_mask + side * side)))))


def _render(model: Sam, low_res: torch.Tensor, crop: _Crop, image_size: tuple[int, int]) -> list[np.ndarray]:
    """Binary full-image masks (the crop's mask placed at the crop's position)."""
    x0, y0, x1, y1 = crop.box
    masks = (crop.upscaler.full(low_res) > model.mask_threshold).cpu().numpy()
    if (x0, y0, x1, y1) == (0, 0, image_size[1], image_size[0]):
        return list(masks)
    out = []
    for mask in masks:
        full = np.zeros(image_size, bool)
        full[y0:y1, x0:x1] = mask
        out.append(full)
    return out


def _gate(
    model: Sam, low_res: torch.Tensor, crop: _Crop, image_size: tuple[int, int], options: dict, counts: GateCounts
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stability gate, boxes and crop-edge filter of the full-size masks, a chunk at a time, exactly as
    ``amg.calculate_stability_score`` and ``amg.batched_mask_to_box`` compute them on the full-size
    logits (``Upscaler.stats``). Returns the survivors' indices in ``low_res``, their stability scores
    and boxes (crop coordinates)."""
    threshold, offset = model.mask_threshold, options["stability_score_offset"]
    parts = []
    step = _chunk_size(crop, low_res.shape[-1], full=False)
    for start in range(0, len(low_res), step):
        chunk = low_res[start : start + step]
        above, boxes = crop.upscaler.stats(chunk, [threshold + offset, threshold - offset], threshold)
        stability = above[:, 0] / above[:, 1]  # int32 / int32, as calculate_stability_score divides
        keep = torch.ones(len(chunk), dtype=torch.bool, device=chunk.device)
        if options["stability_score_thresh"] > 0.0:
            keep = stability >= options["stability_score_thresh"]
        index = torch.nonzero(keep).flatten()
        counts.stability_gate += len(index)
        boxes = boxes[index]
        near = is_box_near_crop_edge(boxes, crop.box, [0, 0, image_size[1], image_size[0]])
        index, boxes = index[~near], boxes[~near]
        counts.crop_edge += len(index)
        parts.append((index + start, stability[index], boxes))
    index = torch.cat([p[0] for p in parts])
    return index, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]).reshape(-1, 4)


def _process_crop(
    model: Sam,
    image: np.ndarray,
    crop_box: list[int],
    points: np.ndarray,
    options: dict,
    counts: GateCounts,
) -> tuple[_Candidates, _Crop]:
    """Encode one crop, decode its point grid in batches, gate the candidates and run the box NMS."""
    x0, y0, x1, y1 = crop_box
    cropped = image[y0:y1, x0:x1, :]
    device, precision = model.device, options["precision"]
    with autocast(device, precision):
        features, input_size = embed_image(model, cropped)
    crop = _Crop(list(crop_box), Upscaler(model.image_encoder.img_size, input_size, (y1 - y0, x1 - x0), device))
    decoder = PromptBatchDecoder(model, features.float())
    del features
    trim_if_over()
    transform = ResizeLongestSide(model.image_encoder.img_size)
    points = points * np.array(cropped.shape[:2])[None, ::-1]
    parts: list[_Candidates] = []
    iou_thresh = options["pred_iou_thresh"]
    for begin in range(0, len(points), options["points_per_batch"]):
        batch = points[begin : begin + options["points_per_batch"]]
        coords = torch.as_tensor(transform.apply_coords(batch, cropped.shape[:2]), device=device)
        labels = torch.ones(len(batch), dtype=torch.int, device=device)
        with autocast(device, precision):
            sparse, _ = model.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
            queries, keys, iou = decoder.tokens(sparse)
        iou = iou.float()
        wanted = iou > iou_thresh if iou_thresh > 0.0 else torch.ones_like(iou, dtype=torch.bool)
        counts.candidates += wanted.numel()
        counts.iou_gate += int(wanted.sum())
        prompts = torch.nonzero(wanted.any(dim=1)).flatten()
        for start in range(0, len(prompts), UPSCALE_PROMPTS):
            rows = prompts[start : start + UPSCALE_PROMPTS]
            with autocast(device, precision):
                low_res = decoder.masks(queries[rows], keys[rows])
            low_res, kept_iou = low_res.float()[wanted[rows]], iou[rows][wanted[rows]]
            index, stability, boxes = _gate(model, low_res, crop, image.shape[:2], options, counts)
            trim_if_over()
            crop_index = torch.zeros(len(index), dtype=torch.long, device=device)
            parts.append(_Candidates(low_res[index], kept_iou[index], stability, boxes, crop_index))
        del queries, keys
    data = _Candidates.cat(parts, 4 * decoder.h, device)
    keep = batched_nms(data.boxes.float(), data.iou, torch.zeros_like(data.iou), options["box_nms_thresh"])
    data = data.filter(keep)
    counts.box_nms += len(keep)
    data.boxes = uncrop_boxes_xyxy(data.boxes, crop_box)
    return data, crop


def _remove_small_regions(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    mask, holes = remove_small_regions(mask, min_area, mode="holes")
    mask, islands = remove_small_regions(mask, min_area, mode="islands")
    return mask, holes or islands


def _stream_masks(
    model: Sam, data: _Candidates, crops: list[_Crop], image_size: tuple[int, int], min_area: int
) -> Iterator[np.ndarray]:
    """The final masks in order, rendered a chunk at a time (small regions removed when asked)."""
    start, crop_of = 0, data.crop.tolist()  # one copy from the GPU, not one per mask
    while start < len(crop_of):
        crop_index = crop_of[start]
        crop = crops[crop_index]
        step = _chunk_size(crop, data.low_res.shape[-1], full=True)
        stop = start
        while stop < len(crop_of) and stop - start < step and crop_of[stop] == crop_index:
            stop += 1
        for mask in _render(model, data.low_res[start:stop], crop, image_size):
            yield _remove_small_regions(mask, min_area)[0] if min_area > 0 else mask
        start = stop


def check_rgb_image(image: np.ndarray) -> None:
    """SAM takes an H x W x 3 uint8 RGB array; anything else is a ValueError saying so."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"SAM needs an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}.")


def sam_module(model) -> Sam:
    """segment_anything's ``Sam`` itself, or the one inside a ``LoadedSam`` (``load_sam``'s result); a TypeError
    naming what to pass for anything else."""
    if isinstance(model, Sam):
        return model
    if isinstance(getattr(model, "model", None), Sam):
        return model.model
    raise TypeError(
        f"Expected segment_anything's Sam model (or helpers.models.load_sam's result), got {type(model).__name__}: "
        "load one with helpers.models.load_sam(...) or segment_anything.sam_model_registry[...](checkpoint)."
    )


def generate_mask_set_with_counts(model: Sam, image: np.ndarray, **options) -> tuple[MaskSet, GateCounts]:
    """``generate_mask_set`` (same keyword options) plus how many candidates each gate let through."""
    counts = GateCounts()
    return generate_mask_set(model, image, counts=counts, **options), counts


def generate_mask_set(
    model: Sam,
    image: np.ndarray,
    *,
    points_per_side: int = 32,
    points_per_batch: int = 64,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    stability_score_offset: float = 1.0,
    box_nms_thresh: float = 0.7,
    crop_n_layers: int = 0,
    crop_nms_thresh: float = 0.7,
    crop_overlap_ratio: float = 512 / 1500,
    crop_n_points_downscale_factor: int = 1,
    min_mask_region_area: int = 0,
    precision: str = "float32",
    counts: GateCounts | None = None,
) -> MaskSet:
    """The masks of ``SamAutomaticMaskGenerator(model, **same options).generate(image)`` in the same
    order, with their predicted IoU and stability score, as a ``MaskSet`` at the image's size.
    ``precision`` "bfloat16"/"float16" runs encoder and decoder in autocast (masks change slightly).
    ``counts``, when given, is filled with how many candidates each gate let through. ``model``: segment_anything's
    ``Sam``, or what ``helpers.models.load_sam`` returns (its ``.model`` is taken)."""
    model = sam_module(model)
    check_precision(precision, model.device)
    check_rgb_image(image)
    options = dict(
        points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        stability_score_offset=stability_score_offset,
        box_nms_thresh=box_nms_thresh,
        precision=precision,
    )
    image_size = image.shape[:2]
    grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
    crop_boxes, layers = generate_crop_boxes(image_size, crop_n_layers, crop_overlap_ratio)
    counts = counts if counts is not None else GateCounts()
    parts, crops = [], []
    with reuse_freed_memory(), torch.inference_mode():
        for index, (crop_box, layer) in enumerate(zip(crop_boxes, layers)):
            data, crop = _process_crop(model, image, crop_box, grids[layer], options, counts)
            data.crop[:] = index
            parts.append(data)
            crops.append(crop)
        side = 4 * model.prompt_encoder.image_embedding_size[0]
        data = _Candidates.cat(parts, side, model.device)
        if len(crop_boxes) > 1:
            crop_areas = box_area(torch.tensor(crop_boxes, dtype=torch.float)[data.crop.cpu()])
            scores = (1 / crop_areas).to(data.boxes.device)
            keep = batched_nms(data.boxes.float(), scores, torch.zeros_like(scores), crop_nms_thresh)
            data = data.filter(keep)
        counts.crop_nms = len(data.iou)
        if min_mask_region_area > 0 and len(data.iou):
            data = _small_region_nms(model, data, crops, image_size, min_mask_region_area, crop_nms_thresh, options)
        counts.final = len(data.iou)
        masks = _stream_masks(model, data, crops, image_size, min_mask_region_area)
        iou, stability = data.iou.cpu().numpy(), data.stability.cpu().numpy()
        return mask_set_from_stream(masks, image_size, iou, stability)


def _small_region_nms(
    model: Sam,
    data: _Candidates,
    crops: list[_Crop],
    image_size: tuple[int, int],
    min_area: int,
    crop_nms_thresh: float,
    options: dict,
) -> _Candidates:
    """The reference's NMS after removing small regions: boxes of the cleaned masks, unchanged ones first."""
    boxes, scores = [], []
    for mask in _stream_masks(model, data, crops, image_size, 0):
        cleaned, changed = _remove_small_regions(mask, min_area)
        boxes.append(batched_mask_to_box(torch.as_tensor(cleaned)[None])[0])
        scores.append(float(not changed))
    nms_thresh = max(options["box_nms_thresh"], crop_nms_thresh)
    keep = batched_nms(torch.stack(boxes).float(), torch.as_tensor(scores), torch.zeros(len(boxes)), nms_thresh)
    return data.filter(keep)
