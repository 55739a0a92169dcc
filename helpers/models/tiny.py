"""Tiny, randomly initialised SAM and CLIP built from the libraries' own classes.

They exercise every code path (saving, loading, automatic mask generation, CLIP encoders) in
well under a second on a CPU; their outputs are noise. Used by the tests and by the notebooks'
smoke profile.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import clip
import torch
from clip.model import CLIP
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from ..files import atomic_path
from .high_res import HighResImageEncoder, HighResMaskDecoder

TINY_SAM = "sam_tiny"
TINY_CLIP = "clip_tiny"
TINY_SAM_FILE = "sam_tiny_random.pth"
TINY_CLIP_FILE = "clip_tiny_random.pt"  # a TorchScript archive, like OpenAI's files
TINY_SAM_IMAGE_SIZE = 256
DEMO_SAM = "sam_demo"


@dataclass(frozen=True)
class SamArchitecture:
    """The sizes of a small SAM built from segment_anything's own classes (with ``high_res``, subclasses of its
    image encoder and mask decoder that add SAM 2's high-resolution path)."""

    image_size: int = 256
    patch: int = 16
    dim: int = 96
    depth: int = 4
    heads: int = 3
    window: int = 8
    global_attn: tuple[int, ...] = (1, 3)
    decoder_dim: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp: int = 256
    # Stride-8 and stride-4 image features into the decoder's upscaling (SAM 2's high-res path, models/high_res.py)
    high_res: bool = False


# The decoder twice SAM's default width here: its masks read each token through decoder_dim / 8 = 16 channels instead
# of 8, which lifted shapes that touch others; and SAM 2's high-res path, which lifted them again (docs/demo-models.md).
DEMO_SAM_ARCHITECTURE = SamArchitecture(decoder_dim=128, high_res=True)


def build_sam_small(arch: SamArchitecture) -> Sam:
    """A randomly initialised SAM of the given sizes (ViT image encoder, two-way decoder, 3 masks)."""
    grid = arch.image_size // arch.patch
    encoder, decoder = (HighResImageEncoder, HighResMaskDecoder) if arch.high_res else (ImageEncoderViT, MaskDecoder)
    return Sam(
        image_encoder=encoder(
            depth=arch.depth,
            embed_dim=arch.dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.heads,
            patch_size=arch.patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.global_attn,
            window_size=arch.window,
            out_chans=arch.decoder_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.decoder_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=decoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.decoder_dim,
                mlp_dim=arch.decoder_mlp,
                num_heads=arch.decoder_heads,
            ),
            transformer_dim=arch.decoder_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.decoder_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def build_sam_demo(checkpoint: str | None = None) -> Sam:
    """The demo SAM (``DEMO_SAM_ARCHITECTURE``), trained on generated shapes by ``helpers.demo.train``;
    same signature as the ``sam_model_registry`` builders."""
    sam = build_sam_small(DEMO_SAM_ARCHITECTURE)
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam.eval()


def build_sam_tiny(checkpoint: str | None = None) -> Sam:
    """A SAM with a 2-block, 32-wide image encoder working at 256 px (same signature as
    ``sam_model_registry`` builders; the checkpoint is loaded by ``helpers.models.load_sam``)."""
    dim, patch = 32, 16
    grid = TINY_SAM_IMAGE_SIZE // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=dim,
            img_size=TINY_SAM_IMAGE_SIZE,
            mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(1,),
            window_size=4,
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(TINY_SAM_IMAGE_SIZE, TINY_SAM_IMAGE_SIZE),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam.eval()


def build_clip_tiny() -> CLIP:
    """A CLIP ViT with one 64-wide block per tower, 32 px input, 32-d embeddings. Widths are
    multiples of 64 because ``clip.model.build_model`` infers the head count as width // 64."""
    return CLIP(
        embed_dim=32,
        image_resolution=32,
        vision_layers=1,
        vision_width=64,
        vision_patch_size=16,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=1,
    ).eval()


def build_clip_demo() -> CLIP:
    """The demo CLIP: CLIP's ModifiedResNet (the RN50 family's image tower) 16 wide with one bottleneck per stage
    at 64 px (its attention pool over 2 x 2 cells, 512 wide, 8 heads), and a 2-block, 64-wide text transformer over
    CLIP's own 49408-token vocabulary, 64-d embeddings; trained on shape cut-outs by ``helpers.demo.train``. Saved as a
    float16 state dict (``load_clip`` reads it). Convolutions read a shape's outline from fewer examples than the
    2-block ViT it replaced (5 Dec 2026: a 48 px ViT with 8 px patches; docs/demo-models.md)."""
    return CLIP(
        embed_dim=64,
        image_resolution=64,
        vision_layers=(1, 1, 1, 1),
        vision_width=16,
        vision_patch_size=None,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
    ).eval()


def save_clip_archive(model: CLIP, path: Path) -> None:
    """Save like OpenAI did: a traced TorchScript archive that ``clip.load(path, jit=False)`` reads."""
    resolution = model.visual.input_resolution
    image = torch.zeros(1, 3, resolution, resolution)
    text = clip.tokenize(["a photo"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about Python control flow, jit deprecation
        traced = torch.jit.trace(model, (image, text), check_trace=False)
        torch.jit.save(traced, str(path))


def write_tiny_checkpoints(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Build the tiny checkpoints in ``folder`` once (seeded; written under a temporary name and
    renamed, so a reader never sees half a file); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sam_path, clip_path = folder / TINY_SAM_FILE, folder / TINY_CLIP_FILE
    if not sam_path.is_file() or not clip_path.is_file():
        torch.manual_seed(seed)
        with atomic_path(sam_path) as tmp:  # two runs building at once never share a temporary file
            torch.save(build_sam_tiny().state_dict(), tmp)
        with atomic_path(clip_path) as tmp:
            save_clip_archive(build_clip_tiny(), tmp)
    return {"sam": sam_path, "clip": clip_path}


def steepen_random_sam(model: Sam, logit_gain: float = 2000.0, iou_shift: float = 0.88) -> Sam:
    """Random SAMs give flat mask logits and predicted IoU near 0, so SAM's default gates (IoU 0.88,
    stability 0.95) drop every mask. Steeper logits (the hypernetworks' last layer scaled) and a
    shifted IoU head let a share through, as with trained weights; the compute is unchanged."""
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(logit_gain)
            mlp.layers[-1].bias.mul_(logit_gain)
        model.mask_decoder.iou_prediction_head.layers[-1].bias.add_(iou_shift)
    return model
