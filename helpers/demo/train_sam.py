"""Training the demo SAM with point prompts (focal + dice on the best of three masks, IoU head on the true IoU)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from tqdm.auto import tqdm

from ..files import atomic_path
from ..models.tiny import DEMO_SAM_ARCHITECTURE, SamArchitecture, build_sam_small
from ..sam.allocator import reuse_freed_memory
from ..sam.decoder import PromptBatchDecoder
from .scenes import TRAIN_STREAM, Scene, make_scene, mosaic_scene, zoom_scene


@dataclass(frozen=True)
class SamTrainSettings:
    steps: int = 5000
    images_per_step: int = 8  # more images and fewer points per image than 2 x 32: 0.81 vs 0.68 point IoU
    points_per_image: int = 8
    # Share of the points on the background, whose mask is then the target. With the mask loss on them
    # the outputs settle on "background" / "everything" / "nothing" and never follow the point.
    background_share: float = 0.25
    # Background prompts teach only the IoU head (their masks get no mask loss), so that the automatic
    # generator's IoU gate drops the masks of grid points on the background instead of passing them on.
    background_iou_only: bool = True
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.01
    focal_weight: float = 20.0  # SAM's 20 : 1 focal : dice
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    min_area: int = 40  # instances with fewer visible pixels get no prompt
    loss_scale: int = 2  # losses on masks at 1/loss_scale of SAM's input size (soft, area-averaged targets)
    pointer_init: bool = True  # see init_pointer_attention
    # The scenes' random stream: 1 for training from scratch, 2 for the high-res stage that continues it, 3 for the
    # zoomed stage after that (each on fresh scenes)
    stage: int = 1
    # Of the scenes, this share zoomed in (``zoom_scene``) by a factor drawn from 1 to ``max_zoom``: the shapes of the
    # scenes are 15-50 px in radius at SAM's input, the crop layer shows them up to 1.6x larger and mosaic tiles 2x.
    zoom_share: float = 0.0
    max_zoom: float = 2.5
    # Of the scenes, this share a mosaic (``mosaic_scene``): shapes' boxes cut from other scenes and scaled up into
    # tiles, as SLIP's mosaic evaluation shows them (each shape about as large as the largest scene shapes, with soft
    # up-scaled edges, among other tiles' shapes and borders); ``zoom_share`` applies to the other scenes.
    mosaic_share: float = 0.0
    # (until step, at most this many shapes per image), e.g. ((300, 1), (600, 3)); tried, did not help
    curriculum: tuple[tuple[int, int], ...] = ()
    seed: int = 0
    # Two threads (the budget's 2 cores): 1.5x faster than one. Runs are bitwise reproducible for a given
    # thread count and CPU type (two 2-thread runs gave identical weights), not across thread counts.
    threads: int = 2
    # Data parallel: this many processes of ``threads`` threads, each on images_per_step / processes scenes of
    # its own random stream, gradients averaged every step. On 2 cores two 1-thread processes take 0.39 s per
    # step against 0.51 s for one 2-thread process (docs/performance.md); another trajectory, other weights.
    processes: int = 1
    # torch.compile the step's forward (and so its backward): 1.3x faster per step on 2 cores, after 2-4 min
    # of compiling (cached by torch for later runs); needs a C++ compiler; other weights than eager steps.
    compile: bool = False
    # Decode each scene's prompts with the fast engine's ``PromptBatchDecoder`` (``helpers.sam.decoder``: SAM's decoder
    # rearranged, the image's keys projected once, the prompt tokens projected into the image's channels instead of the
    # image tokens into the heads') and up-sample the masks for the loss by two matrix products (``upsample``): the
    # same maths and gradients to float rounding (parameters that cannot change the loss, the single-mask output's
    # hypernetwork and later layers' key biases, get no gradient where the original's is 0 or ~1e-9, so AdamW leaves
    # them as they are), 1.30x / 1.22x / 1.08x faster per step in the three stages (bench_demo_sam_steps.py
    # --fast-decoder, 6 Dec 2026); another trajectory, other weights than SAM's own decoder.
    fast_decoder: bool = False
    # the demo SAM's sizes without the high-res path, which the recipe adds in a second stage (helpers/demo/train.py)
    architecture: SamArchitecture = field(default_factory=lambda: replace(DEMO_SAM_ARCHITECTURE, high_res=False))

    def __post_init__(self) -> None:
        if self.stage not in (1, 2, 3):
            raise ValueError(f"stage={self.stage}: 1 (from scratch), 2 (the high-res stage) or 3 (the zoomed stage).")
        if not 0 <= self.zoom_share <= 1 or self.max_zoom < 1:
            raise ValueError(f"zoom_share={self.zoom_share} must lie in [0, 1] and max_zoom={self.max_zoom} be >= 1.")
        if not 0 <= self.mosaic_share <= 1:
            raise ValueError(f"mosaic_share={self.mosaic_share} must lie in [0, 1].")
        if self.processes < 1 or self.images_per_step % self.processes:
            raise ValueError(
                f"processes={self.processes} must be 1 or more and divide images_per_step={self.images_per_step}."
            )


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


def prompt_targets(scene: Scene, min_area: int) -> tuple[list[np.ndarray], bool]:
    """The masks a prompt may aim at: the visible instances of at least ``min_area`` pixels, then the background
    when it has that many; and whether it has."""
    areas = scene.masks.reshape(len(scene.masks), -1).sum(1)
    targets = [m for m, a in zip(scene.masks, areas) if a >= min_area]
    background = ~scene.masks.any(0)
    has_background = background.sum() >= min_area
    if has_background:
        targets.append(background)
    return targets, bool(has_background)


def _prompts(scene: Scene, rng: np.random.Generator, count: int, settings: SamTrainSettings):
    """``count`` (x, y) points in original pixels and the index of their target mask in
    ``targets`` (``prompt_targets``: the visible instances, then the background)."""
    targets, has_background = prompt_targets(scene, settings.min_area)
    points, owners, pixels = [], [], {}
    for _ in range(count):
        if has_background and (rng.random() < settings.background_share or len(targets) == 1):
            owner = len(targets) - 1
        else:
            owner = int(rng.integers(len(targets) - has_background))
        if owner not in pixels:  # once per target, not per point; flat indices (row-major, as np.nonzero's)
            pixels[owner] = np.flatnonzero(targets[owner])
        y, x = divmod(pixels[owner][rng.integers(len(pixels[owner]))], targets[owner].shape[1])
        points.append((x + rng.random(), y + rng.random()))
        owners.append(owner)
    return np.asarray(points, np.float64), owners, targets, (len(targets) - 1 if has_background else -1)


def _normalise(sam: Sam, small: np.ndarray, out: np.ndarray) -> None:
    """``Sam.preprocess`` in numpy into ``out`` (3 x S x S zeros; much faster on small CPU tensors): each uint8
    value's ``(value - mean) / std`` looked up in a 256-entry float32 table, the same arithmetic as on every pixel."""
    if small.dtype != np.uint8:
        raise TypeError(f"_normalise takes a uint8 image (a 256-entry table), not {small.dtype}.")
    mean = sam.pixel_mean.reshape(3).numpy()
    std = sam.pixel_std.reshape(3).numpy()
    table = (np.arange(256, dtype=np.float32)[:, None] - mean) / std  # 256 x 3
    h, w = small.shape[:2]
    for channel in range(3):
        out[channel, :h, :w] = table[small[..., channel], channel]


def _batch(rng: np.random.Generator, sam: Sam, settings: SamTrainSettings, max_shapes: int = 6):
    """Images (B x 3 x S x S, SAM-normalised), and per image: points, labels, soft targets."""
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    size = sam.image_encoder.img_size
    images, prompts = np.zeros((settings.images_per_step, 3, size, size), np.float32), []
    for index in range(settings.images_per_step):
        if settings.mosaic_share and rng.random() < settings.mosaic_share:  # no draw without mosaics: earlier streams
            scene = mosaic_scene(rng)
        else:
            scene = make_scene(rng, max_shapes=max_shapes)
            if settings.zoom_share and rng.random() < settings.zoom_share:  # no draw without zoom: earlier streams
                scene = zoom_scene(scene, rng, rng.uniform(1, settings.max_zoom))
        points, owners, targets, background = _prompts(scene, rng, settings.points_per_image, settings)
        small = transform.apply_image(scene.image)
        h, w = small.shape[:2]
        lh, lw = h // settings.loss_scale, w // settings.loss_scale
        resized = {
            o: cv2.resize(targets[o].astype(np.float32), (lw, lh), interpolation=cv2.INTER_AREA) for o in set(owners)
        }
        soft = np.stack([resized[o] for o in owners])
        _normalise(sam, small, images[index])
        coords = torch.as_tensor(transform.apply_coords(points, scene.image.shape[:2]), dtype=torch.float32)
        foreground = torch.as_tensor([not settings.background_iou_only or o != background for o in owners])
        labels = torch.ones(len(points), 1, dtype=torch.int)
        prompts.append((coords[:, None, :], labels, torch.as_tensor(soft), foreground))
    return torch.from_numpy(images), prompts


def _decode(
    sam: Sam,
    embedding: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    fixed: bool = False,
    fast: bool = False,
):
    """Low-resolution logits of the three masks (prompts x 3 x 64 x 64) and their predicted IoU for single-point
    prompts on one image's ``embedding`` (1 x C x h x w): SAM's own decoder, or with ``fast`` ``PromptBatchDecoder``."""
    if fast:
        decoder = PromptBatchDecoder(sam, embedding)
        queries, keys, iou = decoder.tokens(point_embeddings(sam, coords, labels)[0])
        return decoder.masks(queries, keys), iou
    if fixed:
        sparse, dense = point_embeddings(sam, coords, labels)
    else:
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
    )


def upsample(low_res: torch.Tensor, size: int, h: int, w: int, by_products: bool = False) -> torch.Tensor:
    """``F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)[..., :h, :w]``; with
    ``by_products`` as two matrix products with the 1-d interpolation's matrices (bilinear is separable: the same
    values to float rounding, without the gathers a compiled loss would otherwise fuse)."""
    if not by_products:
        return F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)[..., :h, :w]
    n = low_res.shape[-1]
    if low_res.shape[-2] != n:
        raise ValueError(f"upsample takes square masks, not {tuple(low_res.shape[-2:])}.")
    basis = torch.eye(n, dtype=low_res.dtype, device=low_res.device)[:, None, :]
    weights = F.interpolate(basis, size, mode="linear", align_corners=False)[:, 0, :].T  # size x n
    return weights[:h] @ low_res @ weights[:w].T


def point_embeddings(sam: Sam, coords: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)`` with the label embeddings
    added by multiplying with 0/1 instead of boolean indexing: the same values, and tensors of fixed
    shapes, so that ``torch.compile`` needs no graph break for it (gradients summed in another order)."""
    encoder = sam.prompt_encoder
    coords = torch.cat([coords + 0.5, torch.zeros_like(coords[:, :1])], dim=1)
    labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)[..., None]
    pe = encoder.pe_layer.forward_with_coords(coords, encoder.input_image_size)
    sparse = (
        pe * (labels != -1)
        + (labels == -1) * encoder.not_a_point_embed.weight
        + (labels == 0) * encoder.point_embeddings[0].weight
        + (labels == 1) * encoder.point_embeddings[1].weight
    )
    dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
        len(coords), -1, encoder.image_embedding_size[0], encoder.image_embedding_size[1]
    )
    return sparse, dense


def sam_step_loss(sam: Sam, images: torch.Tensor, prompts, settings: SamTrainSettings) -> tuple[torch.Tensor, dict]:
    """The loss of one batch and its parts (for the progress bar): the eager step (``--no-sam-compile``;
    ``step_loss_tensors`` is the compiled step's twin, tested equal to it)."""
    size = sam.image_encoder.img_size // settings.loss_scale
    embeddings = sam.image_encoder(images)
    mask_losses, iou_losses, best_ious = [], [], []
    for embedding, (coords, labels, soft, foreground) in zip(embeddings, prompts):
        low_res, iou_pred = _decode(sam, embedding[None], coords, labels, fast=settings.fast_decoder)
        h, w = soft.shape[-2:]
        logits = upsample(low_res, size, h, w, settings.fast_decoder)
        target = soft[:, None].expand_as(logits)
        per_output = settings.focal_weight * sigmoid_focal_loss(logits, target) + settings.dice_weight * dice_loss(
            logits, target
        )
        best = per_output.argmin(dim=1)
        if foreground.any():
            mask_losses.append(per_output.gather(1, best[:, None])[foreground].mean())
        with torch.no_grad():
            pred, truth = logits > 0, target > 0.5
            inter = (pred & truth).flatten(-2).sum(-1).float()
            union = (pred | truth).flatten(-2).sum(-1).float()
            true_iou = inter / union.clamp(min=1)
        iou_losses.append(F.mse_loss(iou_pred, true_iou))
        if foreground.any():
            best_ious.append(true_iou.gather(1, best[:, None])[foreground].mean())
    mask_loss = torch.stack(mask_losses).mean() if mask_losses else embeddings.sum() * 0
    iou_loss = torch.stack(iou_losses).mean()
    loss = mask_loss + settings.iou_weight * iou_loss
    iou = torch.stack(best_ious).mean().item() if best_ious else float("nan")
    parts = {"mask": mask_loss.item(), "iou_mse": iou_loss.item(), "iou": iou}
    return loss, parts


def step_loss_tensors(sam: Sam, images: torch.Tensor, prompts, settings: SamTrainSettings, fixed: bool = False):
    """The loss of one batch and its parts as tensors: the mask loss is the mean over the images with a
    shape prompt of each image's mean over its shape prompts, the IoU head's MSE the mean over all images,
    ``iou`` the best output's true IoU on shape prompts (nan without any). No branch on the data and no
    ``.item()``, so that ``torch.compile`` takes it as one graph (``SamTrainSettings.compile``)."""
    size = sam.image_encoder.img_size // settings.loss_scale
    embeddings = sam.image_encoder(images)
    mask_losses, iou_losses, best_ious, weights = [], [], [], []
    for embedding, (coords, labels, soft, foreground) in zip(embeddings, prompts):
        low_res, iou_pred = _decode(sam, embedding[None], coords, labels, fixed, settings.fast_decoder)
        h, w = soft.shape[-2:]
        logits = upsample(low_res, size, h, w, settings.fast_decoder)
        target = soft[:, None].expand_as(logits)
        per_output = settings.focal_weight * sigmoid_focal_loss(logits, target) + settings.dice_weight * dice_loss(
            logits, target
        )
        best = per_output.argmin(dim=1, keepdim=True)
        shape = foreground.to(per_output.dtype)
        count = shape.sum()
        mask_losses.append((per_output.gather(1, best)[:, 0] * shape).sum() / count.clamp(min=1))
        weights.append((count > 0).to(per_output.dtype))
        with torch.no_grad():
            pred, truth = logits > 0, target > 0.5
            inter = (pred & truth).flatten(-2).sum(-1).float()
            union = (pred | truth).flatten(-2).sum(-1).float()
            true_iou = inter / union.clamp(min=1)
            best_ious.append((true_iou.gather(1, best)[:, 0] * shape).sum() / count)  # nan without shapes
        iou_losses.append(F.mse_loss(iou_pred, true_iou))
    weight = torch.stack(weights)
    mask_loss = (torch.stack(mask_losses) * weight).sum() / weight.sum().clamp(min=1)
    iou_loss = torch.stack(iou_losses).mean()
    loss = mask_loss + settings.iou_weight * iou_loss
    with torch.no_grad():
        ious = torch.stack(best_ious)
        iou = (torch.nan_to_num(ious) * weight).sum() / weight.sum()
    return loss, mask_loss, iou_loss, iou


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


def resize_start(sam: Sam, start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``start``, the weights of a SAM trained at another input size, with its image encoder's position tensors
    resized to ``sam``'s token grid: the absolute position embedding (bicubic, as timm resamples a ViT's) and the
    global-attention blocks' relative positions (linear, as segment_anything's ``get_rel_pos`` resizes them at run
    time); windowed blocks' relative positions depend on the window only. Every other tensor as it was, so that
    weights of other sizes (another window layout, another width) still fail to load."""
    own, key = sam.state_dict(), "image_encoder.pos_embed"
    if key not in start or start[key].shape == own[key].shape:
        return start  # the same token grid: nothing to resize (other mismatches are load_start's to refuse)
    resized = dict(start)  # 1 x H x W x C
    moved = F.interpolate(start[key].permute(0, 3, 1, 2), size=own[key].shape[1:3], mode="bicubic", align_corners=False)
    resized[key] = moved.permute(0, 2, 3, 1).contiguous()
    for index, block in enumerate(sam.image_encoder.blocks):
        if block.window_size:  # windowed: its tables span the window, at any input size
            continue
        for axis in ("h", "w"):  # L x C
            name = f"image_encoder.blocks.{index}.attn.rel_pos_{axis}"
            if name in start and start[name].shape != own[name].shape:
                moved = F.interpolate(start[name].T[None], size=own[name].shape[0], mode="linear", align_corners=False)
                resized[name] = moved[0].T.contiguous()
    return resized


def load_start(sam: Sam, start: dict[str, torch.Tensor]) -> None:
    """Load ``start`` into ``sam``: every tensor of a SAM of the same sizes; a high-res SAM may start from a plain
    one's weights (its stem, absent from them, keeps its zero start: the model then computes what they did), and a SAM
    from one trained at another input size (its position tensors resized, ``resize_start``)."""
    start = resize_start(sam, start)
    try:
        missing, unexpected = sam.load_state_dict(start, strict=False)
    except RuntimeError as error:  # tensors of other shapes
        raise ValueError(f"The starting weights do not fit this SAM; start from a SAM of the same sizes. {error}")
    if unexpected or any(not name.startswith("image_encoder.high_res.") for name in missing):
        raise ValueError(
            f"The starting weights do not fit this SAM: {len(missing)} tensors missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); start from a SAM of the same sizes."
        )


def train_sam(
    settings: SamTrainSettings = SamTrainSettings(),
    progress: bool = True,
    snapshot: Path | None = None,
    start: dict[str, torch.Tensor] | None = None,
) -> tuple[Sam, pd.DataFrame]:
    """A demo SAM trained from scratch, or from the weights ``start`` (``load_start``) instead of the pointer
    initialisation; returns the model (eval mode) and the per-step history. With ``snapshot``, the weights are
    also saved there every 200 steps. With ``settings.processes`` > 1 the steps run data parallel in that many
    processes (``train_sam_rank``)."""
    if settings.processes == 1:
        return train_sam_rank(settings, progress, snapshot, start=start)
    with torch.random.fork_rng():  # the caller's random state untouched by this model
        model = build_sam_small(settings.architecture)
    if start is not None:  # weights that do not fit are refused here, before the processes start
        load_start(model, start)
    exchange = SharedGradients(list(model.parameters()), settings.processes)
    with tempfile.TemporaryDirectory(prefix="sam_dp_") as scratch:
        result = Path(scratch) / "rank0.pt"
        torch.multiprocessing.spawn(
            _data_parallel_worker,
            args=(settings, progress, snapshot, Path(scratch) / "rendezvous", result, start, exchange),
            nprocs=settings.processes,
        )
        state, history = torch.load(result, weights_only=False)
    with torch.random.fork_rng():  # the caller's random state as after the one-process path's own seeding
        sam = build_sam_small(settings.architecture)
    sam.load_state_dict(state)
    return sam.eval(), history


def _data_parallel_worker(
    rank: int, settings, progress, snapshot, rendezvous: Path, result: Path, start, exchange: SharedGradients
) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=settings.processes)
    try:
        sam, history = train_sam_rank(
            settings, progress and rank == 0, snapshot if rank == 0 else None, rank, start, exchange
        )
        if rank == 0:
            torch.save((sam.state_dict(), history), result)
    finally:
        dist.destroy_process_group()


def scene_stream(seed: int, rank: int = 0, processes: int = 1, stage: int = 1) -> list[int]:
    """The entropy of the training scenes' random stream of one process. Data parallel: 3 is the marker of
    these streams (CLIP's scenes use 1, SAM's cut-outs 2), and rank + 1 keeps the list from ending in a zero,
    which numpy would pad into another list's stream. Stage 2 (the high-res stage): marker 4, stage 3 (the zoomed
    stage): marker 5, any processes."""
    if stage in (2, 3):
        return [TRAIN_STREAM, stage + 2, seed, rank + 1]
    return [TRAIN_STREAM, 3, seed, rank + 1] if processes > 1 else [TRAIN_STREAM, seed]


class SharedGradients:
    """The data-parallel processes' gradients averaged through shared memory, ``average_gradients`` at a fraction of
    its cost (one step's exchange of this SAM's 1.4 M gradients took 17 ms through gloo, about half of it the
    all-reduce itself). Each process writes its flat gradients, and whether it has each, into its row of a buffer,
    all wait at one barrier, and each adds the rows up in rank order; for two processes that is gloo's sum bit for
    bit (a + b = b + a exactly in floating point), so the weights trained are the same. Two buffers alternate by
    step: a process writes one only after the next step's barrier, which the others pass only once they have read
    it. Made before the processes start (``share_memory_``) and handed to each."""

    def __init__(self, parameters: list[torch.nn.Parameter], processes: int):
        self.sizes, self.dtype = [p.numel() for p in parameters], parameters[0].dtype
        rows = sum(self.sizes) + len(self.sizes)
        self.buffers = torch.zeros(2, processes, rows, dtype=self.dtype).share_memory_()

    def average(self, parameters: list[torch.nn.Parameter], rank: int, step: int) -> None:
        """Every process's gradients replaced by their mean, as ``average_gradients`` does."""
        if [p.numel() for p in parameters] != self.sizes or any(p.dtype != self.dtype for p in parameters):
            raise ValueError("These parameters are not the ones the shared buffers were made for (sizes, dtype).")
        rows = self.buffers[step % 2]
        mine, has = rows[rank].split([sum(self.sizes), len(self.sizes)])
        for p, part, flag in zip(parameters, mine.split(self.sizes), has):
            flag.fill_(p.grad is not None)
            part.copy_(p.grad.reshape(-1)) if p.grad is not None else part.zero_()
        dist.barrier()
        total = rows[0].clone()
        for row in rows[1:]:
            total += row
        total /= len(rows)
        parts = total.split([*self.sizes, len(self.sizes)])
        for p, g, anyone in zip(parameters, parts[:-1], parts[-1]):
            p.grad = g.view_as(p) if anyone > 0 else None


def average_gradients(parameters: list[torch.nn.Parameter], processes: int) -> None:
    """Every process's gradients replaced by their mean over the processes (one all-reduce). A parameter
    that no process has a gradient for keeps none (so the optimiser skips it, as in one process). The
    reference for ``SharedGradients``, and the exchange of a ``train_sam_rank`` given none."""
    has = torch.tensor([float(p.grad is not None) for p in parameters])
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters]
    flat = torch.cat([*grads, has])
    dist.all_reduce(flat)
    flat /= processes
    parts = flat.split([*(p.numel() for p in parameters), len(parameters)])
    for p, g, anyone in zip(parameters, parts[:-1], parts[-1]):
        p.grad = g.view_as(p).clone() if anyone > 0 else None


def train_sam_rank(
    settings: SamTrainSettings,
    progress: bool = True,
    snapshot: Path | None = None,
    rank: int = 0,
    start: dict[str, torch.Tensor] | None = None,
    exchange: SharedGradients | None = None,
) -> tuple[Sam, pd.DataFrame]:
    """The training loop of one process: all of it with ``settings.processes == 1``, else process ``rank``'s
    share (its own scenes, gradients averaged with the others through ``exchange``, or gloo's all-reduce
    without one; every process starts from the same weights and so keeps the same weights)."""
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    parallel = settings.processes > 1
    rng = np.random.default_rng(scene_stream(settings.seed, rank, settings.processes, settings.stage))
    local = replace(settings, images_per_step=settings.images_per_step // settings.processes, processes=1)
    sam = build_sam_small(settings.architecture).train()
    if start is not None:
        load_start(sam, start)
    elif settings.pointer_init:
        init_pointer_attention(sam)
    parameters = list(sam.parameters())
    # foreach: the same updates bit for bit as the per-tensor loop (the same operations), 1.2x faster for these 200
    optimiser = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, cosine_schedule(settings.steps, settings.warmup))
    compiled = torch.compile(step_loss_tensors, dynamic=False) if settings.compile else None
    history = []
    # the same large tensors every step: freed memory is reused, not faulted in again (allocator.py)
    with reuse_freed_memory():
        bar = tqdm(range(settings.steps), desc="SAM", disable=not progress)
        for step in bar:
            max_shapes = next((n for until, n in settings.curriculum if step < until), 6)
            images, prompts = _batch(rng, sam, local, max_shapes)
            if compiled is None:
                loss, parts = sam_step_loss(sam, images, prompts, settings)
            else:
                loss, *tensors = compiled(sam, images, prompts, settings, True)
                parts = dict(zip(("mask", "iou_mse", "iou"), (part.item() for part in tensors)))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if parallel and exchange is not None:
                exchange.average(parameters, rank, step)
            elif parallel:
                average_gradients(parameters, settings.processes)
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimiser.step()
            scheduler.step()
            history.append({"step": step, "loss": loss.item(), **parts})
            if snapshot is not None and (step + 1) % 200 == 0:
                with atomic_path(snapshot.with_name(f"{snapshot.stem}_{step + 1}.pth")) as tmp:
                    torch.save(sam.state_dict(), tmp)
            if progress and step % 10 == 0:  # the bar's figures only
                recent = pd.DataFrame(history[-50:]).mean()
                mse = f"{recent['iou_mse']:.4f}"
                bar.set_postfix(loss=f"{recent['loss']:.3f}", iou=f"{recent['iou']:.3f}", mse=mse)
    return sam.eval(), pd.DataFrame(history)


# --- CLIP training ------------------------------------------------------------------------------


def cosine_schedule(steps: int, warmup: int):
    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, steps - warmup)))

    return schedule


# --- evaluation ---------------------------------------------------------------------------------
