"""Train the demo models (a small SAM and a small CLIP) on generated shape images, offline.

``python -m helpers.train_demo`` reproduces ``helpers/demo_weights/`` (seeded, one CPU thread:
about 12 min of CPU for SAM and 2 for CLIP, then ~2 min of evaluation); ``--quick`` is a
seconds-long end-to-end run into a scratch folder. Measured results: notes/README_demo.md.

SAM is trained as in its paper, restricted to what the automatic mask generator uses: one
foreground point per prompt, three masks per point, the mask loss (focal : dice = 20 : 1) on
the best of the three only, and the IoU head regressed (MSE) on the true IoU of all three, so
that ``pred_iou_thresh`` and the stability gate mean what they mean for the real SAM.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import clip
import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from clip.model import CLIP
from PIL import Image, ImageDraw
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from tqdm.auto import tqdm

from .checkpoints import sha256_of
from .clip_scoring import encode_images, encode_text
from .data import DEMO_CLASSES, Dataset, _background, _shape_polygon, make_demo_dataset, make_mosaics, object_crops
from .demo_models import DEMO_SAM_SETTINGS
from .masks import MaskSet
from .models import LoadedClip, LoadedSam, load_clip, load_sam
from .segmentation import SamSettings, generate_masks
from .tiny_models import DEMO_SAM, DEMO_SAM_ARCHITECTURE, SamArchitecture, build_clip_demo, build_sam_small

TRAIN_STREAM = 0x5A3D  # training scenes draw from np.random.default_rng([TRAIN_STREAM, seed]): never a demo seed


# --- training scenes ----------------------------------------------------------------------------


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8
    kinds: list[str]  # per instance
    colours: list[tuple[int, int, int]]
    masks: np.ndarray  # instances x H x W bool, visible pixels (later shapes cover earlier ones)


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill) -> None:
    """One shape as ``make_demo_dataset`` draws it."""
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon(_shape_polygon(kind, cx, cy, r), fill=fill)


def make_scene(rng: np.random.Generator, height: int = 240, width: int = 320, max_shapes: int = 6) -> Scene:
    """A ``make_demo_dataset``-style image with more variety: 1-6 shapes (kinds may repeat), radii
    0.08-0.26 of the short side, plain backgrounds as well, shapes may reach past the border."""
    if rng.random() < 0.15:
        image = np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), (height, width, 3)).copy()
    else:
        image = _background(rng, height, width)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    kinds, colours, masks = [], [], []
    for _ in range(rng.integers(1, max_shapes + 1)):
        kind = str(rng.choice(DEMO_CLASSES))
        r = rng.uniform(0.08, 0.26) * min(height, width)
        inside = rng.random() < 0.85
        lo = r if inside else 0.0
        cx, cy = rng.uniform(lo, width - lo), rng.uniform(lo, height - lo)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        layer = Image.new("1", (width, height), 0)
        draw_shape(draw, kind, cx, cy, r, colour)
        draw_shape(ImageDraw.Draw(layer), kind, cx, cy, r, 1)
        drawn = np.asarray(layer, bool)
        for mask in masks:
            mask &= ~drawn
        kinds.append(kind)
        colours.append(colour)
        masks.append(drawn.copy())
    return Scene(np.asarray(canvas).copy(), kinds, colours, np.stack(masks))


# --- SAM training -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamTrainSettings:
    steps: int = 3000
    images_per_step: int = 2
    points_per_image: int = 32
    # Share of the points on the background, whose mask is then the target. 0: with background
    # prompts the outputs settle on "background" / "everything" / "nothing" and never follow the point.
    background_share: float = 0.0
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    focal_weight: float = 20.0  # SAM's 20 : 1 focal : dice
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    min_area: int = 40  # instances with fewer visible pixels get no prompt
    loss_scale: int = 2  # losses on masks at 1/loss_scale of SAM's input size (soft, area-averaged targets)
    pointer_init: bool = True  # see init_pointer_attention
    # (until step, at most this many shapes per image), e.g. ((300, 1), (600, 3)); tried, did not help
    curriculum: tuple[tuple[int, int], ...] = ()
    seed: int = 0
    threads: int = 1  # one thread: bitwise reproducible, and fair on a shared machine
    architecture: SamArchitecture = field(default_factory=lambda: DEMO_SAM_ARCHITECTURE)


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    """Per-mask mean focal loss over the last two dimensions (RetinaNet / SAM), soft targets allowed."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def _prompts(scene: Scene, rng: np.random.Generator, count: int, settings: SamTrainSettings):
    """``count`` (x, y) points in original pixels and the index of their target mask in
    ``targets`` (the visible instances, then the background)."""
    areas = scene.masks.reshape(len(scene.masks), -1).sum(1)
    targets = [m for m, a in zip(scene.masks, areas) if a >= settings.min_area]
    background = ~scene.masks.any(0)
    has_background = background.sum() >= settings.min_area
    if has_background:
        targets.append(background)
    points, owners = [], []
    for _ in range(count):
        if has_background and (rng.random() < settings.background_share or len(targets) == 1):
            owner = len(targets) - 1
        else:
            owner = int(rng.integers(len(targets) - has_background))
        ys, xs = np.nonzero(targets[owner])
        pick = rng.integers(len(xs))
        points.append((xs[pick] + rng.random(), ys[pick] + rng.random()))
        owners.append(owner)
    return np.asarray(points, np.float64), owners, targets


def _normalise(sam: Sam, small: np.ndarray, out: np.ndarray) -> None:
    """``Sam.preprocess`` in numpy into ``out`` (3 x S x S zeros; much faster on small CPU tensors)."""
    mean = sam.pixel_mean.reshape(3).numpy()
    std = sam.pixel_std.reshape(3).numpy()
    out[:, : small.shape[0], : small.shape[1]] = ((small.astype(np.float32) - mean) / std).transpose(2, 0, 1)


def _batch(rng: np.random.Generator, sam: Sam, settings: SamTrainSettings, max_shapes: int = 6):
    """Images (B x 3 x S x S, SAM-normalised), and per image: points, labels, soft targets."""
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    size = sam.image_encoder.img_size
    images, prompts = np.zeros((settings.images_per_step, 3, size, size), np.float32), []
    for index in range(settings.images_per_step):
        scene = make_scene(rng, max_shapes=max_shapes)
        points, owners, targets = _prompts(scene, rng, settings.points_per_image, settings)
        small = transform.apply_image(scene.image)
        h, w = small.shape[:2]
        lh, lw = h // settings.loss_scale, w // settings.loss_scale
        soft = np.stack(
            [cv2.resize(targets[o].astype(np.float32), (lw, lh), interpolation=cv2.INTER_AREA) for o in owners]
        )
        _normalise(sam, small, images[index])
        coords = torch.as_tensor(transform.apply_coords(points, scene.image.shape[:2]), dtype=torch.float32)
        prompts.append((coords[:, None, :], torch.ones(len(points), 1, dtype=torch.int), torch.as_tensor(soft)))
    return torch.from_numpy(images), prompts


def _decode(sam: Sam, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor):
    sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
    )


def sam_step_loss(sam: Sam, images: torch.Tensor, prompts, settings: SamTrainSettings) -> tuple[torch.Tensor, dict]:
    """The loss of one batch and its parts (for the progress bar)."""
    size = sam.image_encoder.img_size // settings.loss_scale
    embeddings = sam.image_encoder(images)
    mask_losses, iou_losses, best_ious = [], [], []
    for embedding, (coords, labels, soft) in zip(embeddings, prompts):
        low_res, iou_pred = _decode(sam, embedding[None], coords, labels)
        h, w = soft.shape[-2:]
        logits = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)[..., :h, :w]
        target = soft[:, None].expand_as(logits)
        per_output = settings.focal_weight * sigmoid_focal_loss(logits, target) + settings.dice_weight * dice_loss(
            logits, target
        )
        best = per_output.argmin(dim=1)
        mask_losses.append(per_output.gather(1, best[:, None]).mean())
        with torch.no_grad():
            pred, truth = logits > 0, target > 0.5
            inter = (pred & truth).flatten(-2).sum(-1).float()
            union = (pred | truth).flatten(-2).sum(-1).float()
            true_iou = inter / union.clamp(min=1)
        iou_losses.append(F.mse_loss(iou_pred, true_iou))
        best_ious.append(true_iou.gather(1, best[:, None]).mean())
    mask_loss, iou_loss = torch.stack(mask_losses).mean(), torch.stack(iou_losses).mean()
    loss = mask_loss + settings.iou_weight * iou_loss
    parts = {"mask": mask_loss.item(), "iou_mse": iou_loss.item(), "iou": torch.stack(best_ious).mean().item()}
    return loss, parts


def init_pointer_attention(sam: Sam, gain: float = 2.5) -> None:
    """Start the decoder's prompt-to-image attentions as a position match: each head compares
    the sine/cosine pairs of four of the prompt encoder's frequencies, so q.k is a sum of
    cos(f.(point - patch)) and the point's token reads the image where the point is. From a random
    start this small SAM learnt to segment foreground and background in a few hundred steps but
    had not learnt to follow the point after 600 (outputs independent of the prompt)."""
    half = sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.shape[1]
    attentions = [layer.cross_attn_token_to_image for layer in sam.mask_decoder.transformer.layers]
    attentions.append(sam.mask_decoder.transformer.final_attn_token_to_image)
    with torch.no_grad():
        for attention in attentions:
            weight = torch.zeros_like(attention.q_proj.weight)  # internal x embedding
            for row in range(0, min(weight.shape[0], 2 * half), 2):
                weight[row, row // 2] = gain  # sin of frequency row // 2
                weight[row + 1, half + row // 2] = gain  # its cos
            for proj in (attention.q_proj, attention.k_proj):
                proj.weight.copy_(weight)
                proj.bias.zero_()
        # What would drown the position match at the start: the first self-attention's output
        # (it replaces the prompt tokens, SAM skips the residual there), the label embeddings
        # added to every point, and the image features added to the image's position codes.
        first = sam.mask_decoder.transformer.layers[0].self_attn
        first.out_proj.weight.zero_()
        first.out_proj.bias.zero_()
        for embedding in [*sam.prompt_encoder.point_embeddings, sam.prompt_encoder.not_a_point_embed]:
            embedding.weight.mul_(0.1)
        sam.image_encoder.neck[-1].weight.mul_(0.1)


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed blocks instead of unmapping them: training allocates the same large
    tensors every step, and re-faulting them costs more than the arithmetic on a busy machine."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD (32 MB, glibc's maximum)
    except (OSError, AttributeError):
        pass


def train_sam(
    settings: SamTrainSettings = SamTrainSettings(), progress: bool = True, snapshot: Path | None = None
) -> tuple[Sam, pd.DataFrame]:
    """A demo SAM trained from scratch; returns the model (eval mode) and the per-step history.
    With ``snapshot``, the weights are also saved there every 200 steps."""
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    _keep_freed_memory()
    rng = np.random.default_rng([TRAIN_STREAM, settings.seed])
    sam = build_sam_small(settings.architecture).train()
    if settings.pointer_init:
        init_pointer_attention(sam)
    optimiser = torch.optim.AdamW(sam.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _cosine(settings.steps, settings.warmup))
    history = []
    bar = tqdm(range(settings.steps), desc="SAM", disable=not progress)
    for step in bar:
        max_shapes = next((n for until, n in settings.curriculum if step < until), 6)
        images, prompts = _batch(rng, sam, settings, max_shapes)
        loss, parts = sam_step_loss(sam, images, prompts, settings)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        history.append({"step": step, "loss": loss.item(), **parts})
        if snapshot is not None and (step + 1) % 200 == 0:
            torch.save(sam.state_dict(), snapshot.with_name(f"{snapshot.stem}_{step + 1}.pth"))
        if step % 10 == 0:
            recent = pd.DataFrame(history[-50:]).mean()
            bar.set_postfix(loss=f"{recent['loss']:.3f}", iou=f"{recent['iou']:.3f}", mse=f"{recent['iou_mse']:.4f}")
    return sam.eval(), pd.DataFrame(history)


# --- CLIP training ------------------------------------------------------------------------------

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


def colour_name(rgb) -> str:
    """The nearest of ``COLOUR_NAMES`` (Euclidean RGB)."""
    names = list(COLOUR_NAMES)
    table = np.array([COLOUR_NAMES[n] for n in names], np.float32)
    return names[int(np.argmin(((table - np.asarray(rgb, np.float32)) ** 2).sum(1)))]


@dataclass(frozen=True)
class ClipTrainSettings:
    steps: int = 1000
    batch: int = 64
    scenes: int = 1500  # generated once: about 3 cut-outs each
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.05
    box_crop_share: float = 0.35  # of the cut-outs: box crops as ``object_crops`` makes them, the rest masked crops
    background_share: float = 0.08  # of the cut-outs: the background, captioned "background"
    min_area: int = 200
    seed: int = 0
    threads: int = 1


@dataclass
class CutOut:
    image: np.ndarray
    kind: str  # a DEMO_CLASSES name or "background"
    colour: str | None


def scene_cutouts(scene: Scene, rng: np.random.Generator, settings: ClipTrainSettings) -> list[CutOut]:
    """Each visible shape of ``scene`` cut out as the pipeline (masked crop) or ``object_crops``
    (box crop) would; sometimes the background too."""
    from .regions import RegionSettings, extract_region

    masked, boxed = RegionSettings(), RegionSettings(mode="crop")
    cutouts = []
    boxes = MaskSet.from_masks(scene.masks).bboxes() if len(scene.masks) else []
    for mask, box, kind, colour in zip(scene.masks, boxes, scene.kinds, scene.colours):
        if mask.sum() < settings.min_area:
            continue
        mode = boxed if rng.random() < settings.box_crop_share else masked
        cutouts.append(CutOut(extract_region(scene.image, mask, box, mode), kind, colour_name(colour)))
    if rng.random() < settings.background_share * 4:
        background = ~scene.masks.any(0)
        if background.sum() >= settings.min_area:
            box = MaskSet.from_masks(background[None]).bboxes()[0]
            cutouts.append(CutOut(extract_region(scene.image, background, box, masked), BACKGROUND, None))
    return cutouts


def _caption(cut: CutOut, rng: np.random.Generator) -> tuple[str, str | None, str | None]:
    """A caption naming the shape, the colour or both, and the (kind, colour) it claims."""
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    if cut.kind == BACKGROUND:
        return template.format(BACKGROUND), BACKGROUND, None
    choice = rng.integers(3)
    if choice == 0:
        return template.format(cut.kind), cut.kind, None
    if choice == 1:
        return template.format(cut.colour), None, cut.colour
    return template.format(f"{cut.colour} {cut.kind}"), cut.kind, cut.colour


def cutout_pool(rng: np.random.Generator, preprocess, settings: ClipTrainSettings) -> tuple[torch.Tensor, list]:
    """``settings.scenes`` scenes cut out once and preprocessed for CLIP: (images, cut-outs)."""
    cutouts = [c for _ in range(settings.scenes) for c in scene_cutouts(make_scene(rng), rng, settings)]
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


def multi_positive_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss where every caption true of an image counts as its
    positive ("circle", "red circle" and "red" all describe a red circle)."""
    log_i2t = logits.log_softmax(dim=1)
    log_t2i = logits.log_softmax(dim=0)
    masked = torch.tensor(float("-inf"))
    i2t = -torch.logsumexp(torch.where(truth, log_i2t, masked), dim=1).mean()
    t2i = -torch.logsumexp(torch.where(truth, log_t2i, masked), dim=0).mean()
    return (i2t + t2i) / 2


def train_clip(settings: ClipTrainSettings = ClipTrainSettings(), progress: bool = True) -> tuple[CLIP, pd.DataFrame]:
    """The demo CLIP trained from scratch on shape cut-outs with shape / colour captions."""
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _cosine(settings.steps, settings.warmup))
    pool, cutouts = cutout_pool(rng, preprocess, settings)
    history = []
    bar = tqdm(range(settings.steps), desc="CLIP", disable=not progress)
    for step in bar:
        images, tokens, truth = _clip_batch(rng, pool, cutouts, settings)
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(encode_text_prefix(model, tokens), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image_features @ text_features.T
        loss = multi_positive_loss(logits, truth)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        with torch.no_grad():
            hit = truth[torch.arange(len(truth)), logits.argmax(1)].float().mean().item()
        history.append({"step": step, "loss": loss.item(), "batch_top1": hit})
        if step % 10 == 0:
            recent = pd.DataFrame(history[-50:]).mean()
            bar.set_postfix(loss=f"{recent['loss']:.3f}", top1=f"{recent['batch_top1']:.3f}")
    return model.eval(), pd.DataFrame(history)


def _cosine(steps: int, warmup: int):
    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, steps - warmup)))

    return schedule


# --- evaluation ---------------------------------------------------------------------------------


def ceiling_table(sam: LoadedSam, dataset: Dataset, settings: SamSettings = DEMO_SAM_SETTINGS) -> pd.DataFrame:
    """Per ground-truth shape: the best single SAM mask's IoU and the best union's IoU (the union
    of the masks lying more than half inside the shape), i.e. what a perfect selector could reach."""
    rows = []
    for sample in dataset.samples:
        masks = generate_masks(sam, sample.image, settings)
        dense = masks.to_dense() if len(masks) else np.zeros((0, *sample.image.shape[:2]), bool)
        for name, truth in sample.masks.items():
            if not truth.any():
                continue
            inter = (dense & truth).sum((1, 2))
            areas = dense.sum((1, 2))
            union = areas + truth.sum() - inter
            single = float((inter / np.maximum(union, 1)).max()) if len(dense) else 0.0
            inside = inter > 0.5 * areas
            merged = dense[inside].any(0) if inside.any() else np.zeros_like(truth)
            union_iou = float((merged & truth).sum() / max(1, (merged | truth).sum()))
            rows.append(
                {
                    "image_id": sample.image_id,
                    "class": name,
                    "area": int(truth.sum()),
                    "best_mask_iou": single,
                    "best_union_iou": max(single, union_iou),
                    "masks": len(masks),
                }
            )
    return pd.DataFrame(rows)


def evaluate_sam(sam: Sam, seeds=(101, 202), images: int = 6, settings: SamSettings = DEMO_SAM_SETTINGS):
    """The SAM ceiling on fresh demo images (``make_demo_dataset`` seeds never used in training)."""
    loaded = LoadedSam(sam.eval(), "sam_demo:training")
    tables = [ceiling_table(loaded, make_demo_dataset(images, seed=seed), settings) for seed in seeds]
    return pd.concat(tables, ignore_index=True)


def gt_cutouts(dataset: Dataset, mode: str = "masked_crop", min_area: int = 200) -> tuple[list[np.ndarray], list[str]]:
    """Each ground-truth shape cut out as the pipeline cuts out SAM's masks (``masked_crop``)."""
    from .regions import RegionSettings, extract_region

    crops, labels = [], []
    for sample in dataset.samples:
        for name, mask in sample.masks.items():
            if mask.sum() >= min_area:
                box = MaskSet.from_masks(mask[None]).bboxes()[0]
                crops.append(extract_region(sample.image, mask, box, RegionSettings(mode=mode)))
                labels.append(name)
    return crops, labels


def evaluate_clip(clip_model: LoadedClip, seeds=(303,), images: int = 12) -> dict:
    """Top-1 over DEMO_CLASSES (prompt template "a photo of a {}.") of fresh ground-truth cut-outs,
    masked (as the pipeline sees SAM's masks) and as box crops (``data.object_crops``)."""
    text = encode_text(clip_model, DEMO_CLASSES)
    result = {}
    for seed in seeds:
        dataset = make_demo_dataset(images, seed=seed)
        masked, labels = gt_cutouts(dataset)
        boxes = object_crops(dataset, min_area=200)
        for key, crops, truth in (
            ("masked", masked, labels),
            ("box", [b.image for b in boxes], [b.label for b in boxes]),
        ):
            guess = (encode_images(clip_model, crops) @ text.T).argmax(1)
            hits = [DEMO_CLASSES[g] == t for g, t in zip(guess, truth)]
            result.setdefault(f"{key}_hits", []).extend(hits)
    return {
        "recognition_masked": float(np.mean(result["masked_hits"])),
        "recognition_box": float(np.mean(result["box_hits"])),
        "cutouts": len(result["masked_hits"]),
    }


def evaluate_pipeline(
    sam: LoadedSam, clip_model: LoadedClip, seed: int = 404, images: int = 6, mosaics: int = 6
) -> dict:
    """End to end with the demo settings: mosaic top-1 (SLIP's measure; tiles cut from 12 fresh
    demo images) and the mean IoU of prompting each class by name on ``images`` fresh images."""
    from .demo_models import DEMO_SELECTION, DEMO_SETTINGS
    from .metrics import iou, mosaic_top1_accuracy
    from .pipeline import Pipeline

    pipeline = Pipeline(sam, clip_model, DEMO_SETTINGS)
    dataset = make_demo_dataset(max(images, 12), seed=seed)
    tiles = make_mosaics(object_crops(dataset, min_area=200), count=mosaics, seed=seed)
    results = [pipeline.process(sample.image) for sample in tiles.samples]
    ious = []
    for sample in dataset.samples[:images]:
        result = pipeline.process(sample.image)
        for name, truth in sample.masks.items():
            if truth.any():
                ious.append(iou(pipeline.predict(result, name, DEMO_SELECTION, DEMO_CLASSES).mask, truth))
    return {
        "mosaic_top1": mosaic_top1_accuracy(tiles, results, pipeline),
        "prompt_mean_iou": float(np.mean(ious)),
        "prompts": len(ious),
    }


def oracle_prompt_iou(clip_model: LoadedClip, selection, seed: int = 505, images: int = 12) -> float:
    """Mean IoU of prompting each present class by name when the masks are perfect (the ground-truth
    shapes plus the background): CLIP and the selection settings alone, whatever SAM does."""
    from .demo_models import DEMO_SETTINGS
    from .metrics import iou
    from .pipeline import ImageResult, Pipeline
    from .regions import extract_regions

    pipeline = Pipeline(LoadedSam(None, "ground truth"), clip_model, DEMO_SETTINGS)
    ious = []
    for sample in make_demo_dataset(images, seed=seed).samples:
        shapes = [mask for mask in sample.masks.values() if mask.any()]
        masks = MaskSet.from_masks(np.stack([*shapes, ~np.any(shapes, axis=0)]))
        embeddings = encode_images(clip_model, extract_regions(sample.image, masks, DEMO_SETTINGS.regions))
        result = ImageResult(sample.image_id, masks, embeddings)
        for name, truth in sample.masks.items():
            if truth.any():
                ious.append(iou(pipeline.predict(result, name, selection, DEMO_CLASSES).mask, truth))
    return float(np.mean(ious))


def save_clip_state(model: CLIP, path: Path) -> None:
    """A float16 state dict (half the size; ``load_clip`` returns float32 either way)."""
    torch.save({key: value.half() for key, value in model.state_dict().items()}, path)


def main(argv: list[str] | None = None) -> dict:
    """Train (or, with ``--only``, train one of) the demo models, save them, evaluate, summarise."""
    from .demo_models import DEMO_CLIP_FILE, DEMO_SAM_FILE, DEMO_SELECTION, DEMO_SHA256, DEMO_WEIGHTS_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: helpers/demo_weights (a temp dir with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="a few steps of each, seconds: checks the code path")
    parser.add_argument("--only", choices=("sam", "clip"), help="train this one; evaluate with the other from out-dir")
    parser.add_argument("--sam-steps", type=int, default=SamTrainSettings.steps)
    parser.add_argument("--clip-steps", type=int, default=ClipTrainSettings.steps)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    sam_settings = SamTrainSettings(steps=args.sam_steps)
    clip_settings = ClipTrainSettings(steps=args.clip_steps)
    if args.quick:
        sam_settings = replace(sam_settings, steps=2, images_per_step=1, points_per_image=4, warmup=1)
        clip_settings = replace(clip_settings, steps=2, batch=8, scenes=4, warmup=1)
    out = args.out_dir or (Path(tempfile.mkdtemp(prefix="demo_weights_")) if args.quick else DEMO_WEIGHTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    sam_path, clip_path = out / DEMO_SAM_FILE, out / DEMO_CLIP_FILE
    progress = not args.no_progress
    summary: dict = {"threads": sam_settings.threads, "cpus": os.cpu_count()}
    if args.only != "clip":
        clock = time.perf_counter(), time.process_time()
        sam, history = train_sam(sam_settings, progress)
        summary["sam_train_wall_s"] = time.perf_counter() - clock[0]
        summary["sam_train_cpu_s"] = time.process_time() - clock[1]
        summary["sam_final_train_iou"] = float(history["iou"].tail(50).mean())
        torch.save(sam.state_dict(), sam_path)
        summary["sam_settings"] = asdict(sam_settings)
    if args.only != "sam":
        clock = time.perf_counter(), time.process_time()
        clip_model, history = train_clip(clip_settings, progress)
        summary["clip_train_wall_s"] = time.perf_counter() - clock[0]
        summary["clip_train_cpu_s"] = time.process_time() - clock[1]
        summary["clip_final_batch_top1"] = float(history["batch_top1"].tail(50).mean())
        save_clip_state(clip_model, clip_path)
        summary["clip_settings"] = asdict(clip_settings)
    summary["sha256"] = {path.name: sha256_of(path) for path in (sam_path, clip_path) if path.is_file()}
    summary["matches_registry"] = {name: DEMO_SHA256.get(name) == digest for name, digest in summary["sha256"].items()}
    if sam_path.is_file() and clip_path.is_file():
        sam_loaded = load_sam(DEMO_SAM, sam_path)
        clip_loaded = load_clip(clip_path, name=f"clip_demo:{clip_path.name}")
        images = 1 if args.quick else 6
        table = evaluate_sam(sam_loaded.model, images=images, seeds=(101,) if args.quick else (101, 202))
        summary["sam_ceiling_per_class"] = table.groupby("class")[["best_mask_iou", "best_union_iou"]].mean().to_dict()
        summary["sam_ceiling"] = table[["best_mask_iou", "best_union_iou"]].mean().to_dict()
        summary["sam_ceiling_shapes"] = len(table)
        summary["clip"] = evaluate_clip(clip_loaded, images=2 if args.quick else 12)
        summary["clip"]["oracle_prompt_iou"] = oracle_prompt_iou(
            clip_loaded, DEMO_SELECTION, images=2 if args.quick else 12
        )
        summary["pipeline"] = evaluate_pipeline(
            sam_loaded, clip_loaded, images=1 if args.quick else 6, mosaics=1 if args.quick else 6
        )
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({k: v for k, v in summary.items() if not k.endswith("_settings")}, indent=1, default=str))
    print(f"weights in {out}")
    return summary


if __name__ == "__main__":
    main()
