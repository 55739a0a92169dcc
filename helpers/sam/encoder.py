"""SAM's image encoder with its global attention run one head at a time (same embeddings, less memory).

segment-anything's ``Attention`` builds the attention map of every head at once: for vit_b's 64 x 64
tokens that is 12 x 4096 x 4096 floats (805 MB), and the relative-position sum and the softmax each
allocate another such tensor, so a global-attention block peaks at about 2.4 GB whatever the image
size. ``encode_image`` runs the same blocks with the same operations, but the global-attention maps one
head at a time (67 MB each); windowed blocks, the patch embedding and the neck are SAM's own modules.
The embeddings equal ``model.image_encoder(x)`` bit for bit (``tests/test_mask_upscale.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import (
    Attention,
    Block,
    ImageEncoderViT,
    add_decomposed_rel_pos,
)
from segment_anything.utils.transforms import ResizeLongestSide

from ..models.high_res import HighResImageEncoder


def _attention_per_head(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """``attn(x)`` for global attention, with the attention maps built one head at a time."""
    b, h, w, _ = x.shape
    qkv = attn.qkv(x).reshape(b, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * attn.num_heads, h * w, -1).unbind(0)
    out = torch.empty_like(q)
    for i in range(len(q)):
        qi = q[i : i + 1]
        scores = (qi * attn.scale) @ k[i : i + 1].transpose(-2, -1)
        if attn.use_rel_pos:
            scores = add_decomposed_rel_pos(scores, qi, attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w))
        out[i : i + 1] = scores.softmax(dim=-1) @ v[i : i + 1]
        del scores
    x = out.view(b, attn.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attn.proj(x)


def _global_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` for a block without windows (``Block.forward``'s operations, attention per head)."""
    shortcut = x
    x = _attention_per_head(block.attn, block.norm1(x))
    x = shortcut + x
    return x + block.mlp(block.norm2(x))


def encode(model: Sam, x: torch.Tensor) -> torch.Tensor:
    """``model.image_encoder(x)`` for a preprocessed batch (B x 3 x S x S); global attention per head."""
    encoder = model.image_encoder
    if not isinstance(encoder, ImageEncoderViT):
        return encoder(x)
    image = x
    x = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for block in encoder.blocks:
        x = _global_block(block, x) if block.window_size == 0 else block(x)
    x = encoder.neck(x.permute(0, 3, 1, 2))
    return encoder.with_high_res(x, image) if isinstance(encoder, HighResImageEncoder) else x


def embed_image(model: Sam, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """What ``SamPredictor.set_image(image)`` computes: the image embedding (1 x C x h x w) and the
    resized input size (before padding)."""
    if model.image_format != "RGB":
        image = image[..., ::-1]
    resized = ResizeLongestSide(model.image_encoder.img_size).apply_image(image)
    tensor = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).contiguous()[None, :, :, :]
    return encode(model, model.preprocess(tensor)), tuple(tensor.shape[-2:])
