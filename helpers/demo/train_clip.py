"""Training the demo CLIP from scratch on shape cut-outs captioned by shape and colour."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import clip
import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from clip.model import CLIP
from PIL import Image
from tqdm.auto import tqdm

from ..masks import MaskSet, iou_from_counts, overlap_counts
from ..models.tiny import build_clip_demo
from ..regions import RegionSettings, extract_region
from .scenes import TRAIN_STREAM, Scene, make_scene
from .train_sam import cosine_schedule

COLOUR_NAMES = {
    "red": (220, 30, 30),
    "orange": (240, 140, 20),
    "yellow": (230, 220, 30),
    "green": (40, 170, 40),
    "cyan": (30, 210, 220),
    "blue": (30, 60, 220),
    "purple": (140, 40, 170),
    "pink": (240, 130, 190),
    "brown": (130, 80, 30),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
}
CAPTION_TEMPLATES = ("{}", "a {}", "a photo of a {}.", "a {} shape")
BACKGROUND = "background"
PART = "part"  # a piece of one shape: captioned by its colour only, so no shape's name is true of it


def colour_name(rgb) -> str:
    """The nearest of ``COLOUR_NAMES`` (Euclidean RGB)."""
    names = list(COLOUR_NAMES)
    table = np.array([COLOUR_NAMES[n] for n in names], np.float32)
    return names[int(np.argmin(((table - np.asarray(rgb, np.float32)) ** 2).sum(1)))]


@dataclass(frozen=True)
class ClipTrainSettings:
    steps: int = 1500
    batch: int = 64
    scenes: int = 1500  # generated once: about 3 cut-outs each
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.05
    box_crop_share: float = 0.35  # of the cut-outs: box crops as ``object_crops`` makes them, the rest masked crops
    background_share: float = 0.08  # of the cut-outs: the background, captioned "background"
    min_area: int = 200
    # Cut-outs as the demo SAM's masks make them: of the masked crops this share with a blurred, rounded
    # boundary (SAM's coarse masks round a square's corners; a CLIP trained on exact masks then calls it a
    # circle), and in this share of the scenes a blob of background, captioned "background". 0.6 / 0.3 with
    # 1500 steps lifts the demo pipeline's IoU but drops recognition of exact cut-outs below 0.95 (README).
    jitter_share: float = 0.0
    blob_share: float = 0.0
    # The trained demo SAM's own masks on this many further training scenes join the pool: a CLIP that has
    # seen only exact outlines calls SAM's rounded squares circles. ``train_demo`` reads these two fields,
    # makes the cut-outs (``sam_mask_cutouts`` names them) and passes them to ``train_clip``, which alone
    # trains on exact cut-outs only; ``--clip-sam-scenes 0`` trains without SAM's masks.
    sam_scenes: int = 1000
    sam_min_iou: float = 0.7  # a SAM mask is named after the shape it matches at this IoU or more
    # SAM's masks lying inside one shape (>= 90 % of their pixels) that match it below this IoU are its parts: hard
    # negatives for the shapes' names (captioned by their colour alone), so that CLIP does not name a star's arm
    # "star" (issue 25's mosaics: the top region was such a fragment). 0 leaves them out.
    sam_part_max_iou: float = 0.0
    # The loss: "sigmoid", SigLIP's (Zhai et al. 2023: every image-caption pair a yes / no question, logits
    # t . cos + b with t and b learnt, from ``sigmoid_scale`` and ``sigmoid_bias``), or "contrastive", CLIP's
    # (softmax over the batch's captions and images; the recipe until 6 Dec 2026). The sigmoid loss scores each
    # pair on its own, so a region's score means the same whatever the other regions are: the pipeline compares
    # scores across regions (the threshold, the mosaics' top-1), where the softmax only ranks captions per image.
    loss: str = "sigmoid"
    sigmoid_scale: float = 10.0  # t at the start (SigLIP's); the model's logit_scale holds log t
    sigmoid_bias: float = -5.0  # b at the start (SigLIP's -10 is for one positive among 32k; here ~1 in 6)
    seed: int = 0
    threads: int = 2  # as SamTrainSettings.threads

    def __post_init__(self) -> None:
        if self.loss not in ("sigmoid", "contrastive"):
            raise ValueError(f"loss={self.loss!r}: choose 'sigmoid' (SigLIP's) or 'contrastive' (CLIP's).")
        if not self.sigmoid_scale > 0:
            raise ValueError(f"sigmoid_scale={self.sigmoid_scale} must be above 0 (it is a temperature).")
        if not 0 <= self.sam_part_max_iou <= self.sam_min_iou:
            raise ValueError(
                f"sam_part_max_iou={self.sam_part_max_iou} must lie in [0, sam_min_iou={self.sam_min_iou}]: a mask "
                "matching its shape at sam_min_iou or more is named after it, not a part of it."
            )


@dataclass
class CutOut:
    image: np.ndarray
    kind: str  # a DEMO_CLASSES name or "background"
    colour: str | None


def sam_like(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``mask`` with a coarse boundary: blurred (sigma 2-6 px) and thresholded at 0.35-0.65, which
    rounds corners and tips and shrinks or grows the shape a little, as the demo SAM does."""
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), rng.uniform(2, 6))
    return soft > rng.uniform(0.35, 0.65)


def background_blob(background: np.ndarray, rng: np.random.Generator, cell: int = 24) -> np.ndarray:
    """A smooth random blob of the background, like the masks SAM proposes for grid points there."""
    h, w = background.shape
    field = cv2.resize(rng.normal(0, 1, (h // cell + 2, w // cell + 2)).astype(np.float32), (w, h))
    return (field > np.quantile(field, rng.uniform(0.7, 0.95))) & background


def scene_cutouts(scene: Scene, rng: np.random.Generator, settings: ClipTrainSettings) -> list[CutOut]:
    """Each visible shape of ``scene`` cut out as the pipeline (masked crop, exact or SAM-like) or
    ``object_crops`` (box crop) would; sometimes the background, whole or a blob of it."""
    masked, boxed = RegionSettings(), RegionSettings(mode="crop")
    cutouts = []
    boxes = MaskSet.from_masks(scene.masks).bboxes() if len(scene.masks) else []
    for mask, box, kind, colour in zip(scene.masks, boxes, scene.kinds, scene.colours):
        if mask.sum() < settings.min_area:
            continue
        mode = boxed if rng.random() < settings.box_crop_share else masked
        if mode is masked and settings.jitter_share and rng.random() < settings.jitter_share:
            mask = sam_like(mask, rng)
            if mask.sum() < settings.min_area:
                continue
            box = MaskSet.from_masks(mask[None]).bboxes()[0]
        cutouts.append(CutOut(extract_region(scene.image, mask, box, mode), kind, colour_name(colour)))
    background = ~scene.masks.any(0)
    regions = []
    if rng.random() < settings.background_share * 4:
        regions.append(background)
    if settings.blob_share and rng.random() < settings.blob_share:
        regions.append(background_blob(background, rng))
    for region in regions:
        if region.sum() >= settings.min_area:
            box = MaskSet.from_masks(region[None]).bboxes()[0]
            cutouts.append(CutOut(extract_region(scene.image, region, box, masked), BACKGROUND, None))
    return cutouts


PART_MIN_INSIDE = 0.9  # of a part's pixels inside its shape


def sam_mask_cutouts(
    scene: Scene,
    masks: MaskSet,
    min_iou: float,
    min_area: int = 200,
    regions: RegionSettings = RegionSettings(),
    part_max_iou: float = 0.0,
) -> list[CutOut]:
    """SAM's masks of ``scene`` cut out as the pipeline cuts them (``regions``: its cut-out settings),
    named after the shape each matches at IoU >= ``min_iou``, or "background" when at least 80 % of it lies
    on the background, or ``PART`` (with the shape's colour) when at least 90 % of it lies in one shape that
    it matches below ``part_max_iou``; other masks (merges, near misses) are left out: no name fits them."""
    if not len(masks):
        return []
    dense = masks.to_dense()
    areas = dense.sum((1, 2))
    inside = overlap_counts(dense, scene.masks)  # pixels of each mask in each shape (masks x shapes)
    ious = iou_from_counts(inside, areas, scene.masks.sum((1, 2)))
    background = ~scene.masks.any(0)
    cutouts = []
    for i, box in enumerate(masks.bboxes()):
        mask, area = dense[i], int(areas[i])
        if area < min_area:
            continue
        best = int(np.argmax(ious[i]))
        if ious[i, best] >= min_iou:
            kind, colour = scene.kinds[best], colour_name(scene.colours[best])
        elif (mask & background).sum() >= 0.8 * area:
            kind, colour = BACKGROUND, None
        elif ious[i, host := int(np.argmax(inside[i]))] < part_max_iou and inside[i, host] >= PART_MIN_INSIDE * area:
            kind, colour = PART, colour_name(scene.colours[host])  # host: the shape holding most of it
        else:
            continue
        cutouts.append(CutOut(extract_region(scene.image, mask, box, regions), kind, colour))
    return cutouts


def _caption(cut: CutOut, rng: np.random.Generator) -> tuple[str, str | None, str | None]:
    """A caption naming the shape, the colour or both, and the (kind, colour) it claims."""
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    if cut.kind == BACKGROUND:
        return template.format(BACKGROUND), BACKGROUND, None
    if cut.kind == PART:
        return template.format(cut.colour), None, cut.colour
    choice = rng.integers(3)
    if choice == 0:
        return template.format(cut.kind), cut.kind, None
    if choice == 1:
        return template.format(cut.colour), None, cut.colour
    return template.format(f"{cut.colour} {cut.kind}"), cut.kind, cut.colour


def cutout_pool(
    rng: np.random.Generator, preprocess, settings: ClipTrainSettings, extra: list[CutOut] = ()
) -> tuple[torch.Tensor, list]:
    """``settings.scenes`` scenes cut out once, with the ``extra`` cut-outs, preprocessed for CLIP:
    (images, cut-outs)."""
    cutouts = [c for _ in range(settings.scenes) for c in scene_cutouts(make_scene(rng), rng, settings)]
    cutouts += list(extra)
    return torch.stack([preprocess(Image.fromarray(c.image)) for c in cutouts]), cutouts


@lru_cache(maxsize=None)
def _tokens(text: str) -> torch.Tensor:
    return clip.tokenize([text])


def _clip_batch(rng, images: torch.Tensor, cutouts: list[CutOut], settings: ClipTrainSettings):
    chosen = rng.choice(len(cutouts), settings.batch, replace=False)
    captions = [_caption(cutouts[i], rng) for i in chosen]
    tokens = torch.cat([_tokens(text) for text, _, _ in captions])
    truth = torch.tensor(
        [
            [
                (k is None or k == cutouts[i].kind) and (col is None or col == cutouts[i].colour)
                for _, k, col in captions
            ]
            for i in chosen
        ]
    )
    return images[torch.as_tensor(chosen)], tokens, truth


def encode_text_prefix(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on the first L token positions only (L = the longest caption): the
    text transformer is causal and reads its output at the end token, so the result is the same
    as over all 77 positions, at a fraction of the cost."""
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = x.permute(1, 0, 2)
    mask = torch.full((length, length), float("-inf")).triu_(1)
    for block in model.transformer.resblocks:
        x = x + block.attn(*(block.ln_1(x),) * 3, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(len(x)), tokens.argmax(dim=-1)] @ model.text_projection


def sigmoid_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss, summed over the batch's image-caption pairs and divided by the images:
    each pair a binary question, "is this caption true of this image?", every caption true of an image a
    positive. ``logits`` already hold the scale and the bias (t . cos + b)."""
    signs = truth.float() * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / len(truth)


def multi_positive_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss where every caption true of an image counts as its
    positive ("circle", "red circle" and "red" all describe a red circle)."""
    log_i2t = logits.log_softmax(dim=1)
    log_t2i = logits.log_softmax(dim=0)
    masked = torch.tensor(float("-inf"))
    i2t = -torch.logsumexp(torch.where(truth, log_i2t, masked), dim=1).mean()
    t2i = -torch.logsumexp(torch.where(truth, log_t2i, masked), dim=0).mean()
    return (i2t + t2i) / 2


def train_clip(
    settings: ClipTrainSettings = ClipTrainSettings(),
    progress: bool = True,
    sam_cutouts: list[CutOut] = (),
) -> tuple[CLIP, pd.DataFrame]:
    """The demo CLIP trained from scratch on shape cut-outs with shape / colour captions, the
    ground truth's and ``sam_cutouts`` (``sam_mask_cutouts`` of the demo SAM's masks)."""
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng([TRAIN_STREAM, 1, settings.seed])
    model = build_clip_demo().train()
    preprocess = clip.clip._transform(model.visual.input_resolution)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    bias = None
    if settings.loss == "sigmoid":  # SigLIP's start: t (as CLIP's log t) and a bias, learnt without weight decay
        with torch.no_grad():
            model.logit_scale.fill_(float(np.log(settings.sigmoid_scale)))
        bias = torch.nn.Parameter(torch.tensor(settings.sigmoid_bias))
        optimiser.add_param_group({"params": [bias], "weight_decay": 0.0})
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, cosine_schedule(settings.steps, settings.warmup))
    pool, cutouts = cutout_pool(rng, preprocess, settings, sam_cutouts)
    history = []
    bar = tqdm(range(settings.steps), desc="CLIP", disable=not progress)
    for step in bar:
        images, tokens, truth = _clip_batch(rng, pool, cutouts, settings)
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(encode_text_prefix(model, tokens), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image_features @ text_features.T
        loss = multi_positive_loss(logits, truth) if bias is None else sigmoid_loss(logits + bias, truth)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the model's (SigLIP's bias is not in the norm)
        optimiser.step()
        scheduler.step()
        with torch.no_grad():
            hit = truth[torch.arange(len(truth)), logits.argmax(1)].float().mean().item()
        history.append({"step": step, "loss": loss.item(), "batch_top1": hit})
        if bias is not None:  # SigLIP's learnt scale and bias (the summary states where they end)
            history[-1].update(scale=model.logit_scale.exp().item(), bias=bias.item())
        if progress and step % 10 == 0:  # the bar's figures only
            recent = pd.DataFrame(history[-50:]).mean()
            bar.set_postfix(loss=f"{recent['loss']:.3f}", top1=f"{recent['batch_top1']:.3f}")
    return model.eval(), pd.DataFrame(history)
