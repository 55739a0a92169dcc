"""A high-resolution path for a small SAM: image features at strides 4 and 8 added into the mask decoder's
upscaling, as SAM 2 does (``MaskDecoder(use_high_res_features=True)``), on segment_anything's own classes.

SAM 1's decoder upscales its 16 x 16 image tokens to 64 x 64 masks from the tokens alone: an edge inside a
token's 16 x 16 pixels can only be guessed. SAM 2 adds the backbone's stride-8 and stride-4 features after each
transposed convolution. A ViT has no such stages, so ``HighResImageEncoder`` computes them with a small
convolutional stem on the preprocessed image, and hands them on inside the image embedding: the stride-8 and
stride-4 maps are pixel-unshuffled to the token grid and concatenated after the embedding's channels. Every
interface that carries the embedding (``SamPredictor``, segment-anything's generator, the project's fast engine,
the training step) carries them unchanged; ``HighResMaskDecoder`` splits them off again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder
from torch import nn


class HighResStem(nn.Module):
    """Stride-8 (``dim / 4`` channels) and stride-4 (``dim / 8``) features of a preprocessed image, packed onto
    the ``stride`` token grid: B x (dim / 4 * (stride / 8)^2 + dim / 8 * (stride / 4)^2) x S/stride x S/stride."""

    def __init__(self, dim: int, stride: int = 16, width: int = 32) -> None:
        super().__init__()
        if dim % 8 or stride % 8:
            raise ValueError(f"dim={dim} must be a multiple of 8 and stride={stride} of 8.")
        self.stride = stride
        self.to_s4 = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.GELU(),
        )
        self.to_s8 = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU())
        self.proj_s4 = nn.Conv2d(width, dim // 8, 1)  # SAM 2's conv_s0
        self.proj_s8 = nn.Conv2d(width, dim // 4, 1)  # SAM 2's conv_s1
        for proj in (self.proj_s4, self.proj_s8):  # a new model starts as SAM 1's decoder (its output is zero)
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s4 = self.to_s4(x)
        s8 = self.to_s8(s4)
        return torch.cat(
            [
                F.pixel_unshuffle(self.proj_s8(s8), self.stride // 8),
                F.pixel_unshuffle(self.proj_s4(s4), self.stride // 4),
            ],
            dim=1,
        )


class HighResImageEncoder(ImageEncoderViT):
    """``ImageEncoderViT`` whose output carries, after its ``out_chans`` channels, ``HighResStem``'s features."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.high_res = HighResStem(self.neck[0].out_channels, self.patch_embed.proj.stride[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.with_high_res(super().forward(x), x)

    def with_high_res(self, embedding: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The ViT's ``embedding`` of the preprocessed images ``x`` with the stem's features appended."""
        return torch.cat([embedding, self.high_res(x)], dim=1)


def split_high_res(embedding: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``HighResImageEncoder``'s output (B x C x h x w) as the embedding (B x dim x h x w), the stride-8
    features (B x dim/4 x rh x rw) and the stride-4 features (B x dim/8 x 2rh x 2rw), r = patch / 8
    (2 for 16-px patches), read from the channel count."""
    c = embedding.shape[1]
    extra = c - dim  # dim/4 * r^2 + dim/8 * (2r)^2 = 3/4 * dim * r^2 channels
    r8 = round((max(extra, 0) / (0.75 * dim)) ** 0.5)
    if r8 < 1 or 0.75 * dim * r8 * r8 != extra:
        raise ValueError(
            f"A high-res mask decoder needs HighResImageEncoder's output: {dim} + 3/4 x {dim} x r^2 channels "
            f"(r = patch / 8), got {c}. Build the SAM with SamArchitecture(high_res=True) and load weights trained so."
        )
    n8 = dim // 4 * r8 * r8
    s8 = F.pixel_shuffle(embedding[:, dim : dim + n8], r8)
    s4 = F.pixel_shuffle(embedding[:, dim + n8 :], 2 * r8)
    return embedding[:, :dim], s8, s4


class HighResMaskDecoder(MaskDecoder):
    """``MaskDecoder`` that adds the stride-8 and stride-4 features after its two transposed convolutions
    (SAM 2's ``act1(ln1(dc1(src) + feat_s1))``, ``act2(dc2(...) + feat_s0)``); otherwise SAM's decoder."""

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, s8, s4 = split_high_res(image_embeddings, self.transformer_dim)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        repeats = tokens.shape[0]  # one image's embedding per call, as in MaskDecoder.predict_masks
        src = torch.repeat_interleave(embedding, repeats, dim=0) + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, repeats, dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]
        src = src.transpose(1, 2).view(b, c, h, w)
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        upscaled = act1(norm(conv1(src) + torch.repeat_interleave(s8, repeats, dim=0)))
        upscaled = act2(conv2(upscaled) + torch.repeat_interleave(s4, repeats, dim=0))
        mlps = self.output_hypernetworks_mlps
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(mlps)], dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)
