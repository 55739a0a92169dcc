"""SAM's mask decoder for many point prompts on one image, with the prompt-independent work done once.

Same weights and same maths as ``segment_anything.modeling.MaskDecoder`` (multimask output),
rearranged for a grid of single-point prompts:

* layer 0 of the two-way transformer sees the same image keys for every prompt: their key, value
  and query projections are computed once per image instead of once per prompt;
* in later layers the 4,096 image tokens are never projected: the few prompt tokens are projected
  back into the image's channel space instead (``q . Wk x == (Wk^T q) . x``; softmax rows sum to 1
  so the value projection moves after the weighted sum, the output projection folds into values);
* the IoU head only needs the tokens, so predicted IoU is known before any upscaling: prompts whose
  three masks all fail the IoU gate are never upscaled, and only the wanted masks are produced;
* transposed convolutions (kernel 2, stride 2) are matrix products in channels-last layout with
  one pixel shuffle at the end, on the 3 output masks instead of the 32-channel features.

Results equal the original's to float32 rounding (the benchmark and tests state by how much). The demo SAM's
training step decodes through it too (``helpers.demo.train_sam``, ``SamTrainSettings.fast_decoder``): autograd gives
the original's gradients to float rounding, and none for what cannot change the multimask outputs (the single-mask
hypernetwork, later layers' key biases), where the original's are 0 or ~1e-9.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention

from ..models.high_res import HighResMaskDecoder, split_high_res


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., T, heads * d) -> (..., heads, T, d)."""
    *lead, t, c = x.shape
    return x.reshape(*lead, t, heads, c // heads).transpose(-3, -2)


def _head_weights(linear: torch.nn.Linear, heads: int) -> torch.Tensor:
    """An input projection's weight (heads * d, C) as (heads, d, C)."""
    out, c = linear.weight.shape
    return linear.weight.reshape(heads, out // heads, c)


def _tokens_to_image(attn: Attention, tokens_q: torch.Tensor, xp: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``attn(q=tokens_q, k=xp, v=x)`` for per-prompt image tokens ``xp``/``x`` (B, N, C), without
    projecting the N image tokens. The key bias is constant along the softmax axis and drops out."""
    h = attn.num_heads
    b, t, _ = tokens_q.shape
    q = _heads(attn.q_proj(tokens_q), h)  # B h T d
    scale = 1.0 / math.sqrt(q.shape[-1])
    qk = torch.einsum("bhtd,hdc->bhtc", q * scale, _head_weights(attn.k_proj, h))
    weights = torch.softmax(qk.reshape(b, h * t, -1) @ xp.transpose(1, 2), dim=-1)  # B hT N
    pooled = (weights @ x).reshape(b, h, t, -1)  # B h T C
    v = torch.einsum("bhtc,hdc->bhtd", pooled, _head_weights(attn.v_proj, h)) + attn.v_proj.bias.reshape(h, 1, -1)
    return attn.out_proj(v.transpose(1, 2).reshape(b, t, -1))


def _image_to_tokens_values(attn: Attention, tokens: torch.Tensor) -> torch.Tensor:
    """Values already multiplied by the output projection, (B, heads * T, C); each head's share of the
    output bias is added to its values (every head's attention weights sum to 1)."""
    h = attn.num_heads
    b, t, _ = tokens.shape
    v = _heads(attn.v_proj(tokens), h)  # B h T d
    wo = attn.out_proj.weight.reshape(-1, h, v.shape[-1]).permute(1, 2, 0)  # h d C
    return (torch.einsum("bhtd,hdc->bhtc", v, wo) + attn.out_proj.bias / h).reshape(b, h * t, -1)


def _image_to_tokens(
    attn: Attention, residual: torch.Tensor, xp: torch.Tensor, tokens_k: torch.Tensor, tokens_v: torch.Tensor
) -> torch.Tensor:
    """``residual + attn(q=xp, k=tokens_k, v=tokens_v)`` for per-prompt image tokens ``xp`` (B, N, C)."""
    h = attn.num_heads
    b, t, _ = tokens_k.shape
    k = _heads(attn.k_proj(tokens_k), h)  # B h T d
    scale = 1.0 / math.sqrt(k.shape[-1])
    kq = torch.einsum("bhtd,hdc->bhtc", k * scale, _head_weights(attn.q_proj, h))
    bias = (k * scale) @ attn.q_proj.bias.reshape(h, -1, 1)  # B h T 1
    logits = torch.baddbmm(bias.reshape(b, h * t, 1), kq.reshape(b, h * t, -1), xp.transpose(1, 2))  # B hT N
    weights = torch.softmax(logits.reshape(b, h, t, -1), dim=2).reshape(b, h * t, -1)  # over T, N innermost
    return torch.baddbmm(residual, weights.transpose(1, 2), _image_to_tokens_values(attn, tokens_v))


def _token_order(features: torch.Tensor, levels: int) -> torch.Tensor:
    """Features at 2^levels x the token grid (C x 2^levels h x 2^levels w) as rows in ``masks()``'s order:
    (h w di1 dj1 [di2 dj2]) x C, where pixel row = 2^levels * i + 2^(levels-1) * di1 + ... ."""
    c, h, w = features.shape[0], features.shape[1] >> levels, features.shape[2] >> levels
    x = features.reshape(c, h, *([2] * levels), w, *([2] * levels))  # C h di1 [di2] w dj1 [dj2]
    order = [1, 2 + levels] + [axis for level in range(levels) for axis in (2 + level, 3 + levels + level)] + [0]
    return x.permute(*order).reshape(-1, c)


class PromptBatchDecoder:
    """Decodes batches of single-point prompts against one image embedding."""

    def __init__(self, model: Sam, features: torch.Tensor) -> None:
        """``features``: the image encoder's output for one image (1, C, h, w)."""
        decoder = model.mask_decoder
        self.model, self.decoder, self.transformer = model, decoder, decoder.transformer
        self.s8 = self.s4 = None
        if isinstance(decoder, HighResMaskDecoder):  # the stride-8 / stride-4 features, in masks()'s token order
            features, s8, s4 = split_high_res(features, decoder.transformer_dim)
            self.s8, self.s4 = _token_order(s8[0], 1), _token_order(s4[0], 2)
        _, c, self.h, self.w = features.shape
        dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, c)
        self.x0 = features[0].flatten(1).T + dense  # N C: image tokens + "no mask" embedding
        self.pe = model.prompt_encoder.get_dense_pe()[0].flatten(1).T.contiguous()  # N C
        self.xp0 = self.x0 + self.pe
        layer0 = self.transformer.layers[0]
        heads = layer0.cross_attn_token_to_image.num_heads
        t2i, i2t = layer0.cross_attn_token_to_image, layer0.cross_attn_image_to_token
        self.k0 = _heads(t2i.k_proj(self.xp0), heads)  # h N d, shared by every prompt
        self.v0 = _heads(t2i.v_proj(self.x0), heads)
        self.q0 = _heads(i2t.q_proj(self.xp0), heads)
        self.first_mask = 1  # multimask output: mask tokens 1..3 (token 0 is the single-mask output)
        self.output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)

    def _shared_tokens_to_image(self, attn: Attention, queries: torch.Tensor) -> torch.Tensor:
        """``attn(q=queries, k=x0 + pe, v=x0)`` with the image keys and values projected once."""
        b, t, _ = queries.shape
        q = _heads(attn.q_proj(queries), attn.num_heads)  # B h T d
        q = q.permute(1, 0, 2, 3).reshape(attn.num_heads, b * t, -1) / math.sqrt(q.shape[-1])
        out = torch.softmax(q @ self.k0.transpose(1, 2), dim=-1) @ self.v0  # h BT d
        return attn.out_proj(out.reshape(attn.num_heads, b, t, -1).permute(1, 2, 0, 3).reshape(b, t, -1))

    def _shared_image_to_tokens(self, attn: Attention, tokens_k: torch.Tensor, tokens_v: torch.Tensor) -> torch.Tensor:
        """``x0 + attn(q=x0 + pe, k=tokens_k, v=tokens_v)`` with the image queries projected once."""
        h = attn.num_heads
        b, t, _ = tokens_k.shape
        k = _heads(attn.k_proj(tokens_k), h)  # B h T d
        k = k.transpose(0, 1).reshape(h, b * t, -1) / math.sqrt(k.shape[-1])  # h BT d
        logits = (k @ self.q0.transpose(1, 2)).reshape(h, b, t, -1)  # h B T N
        weights = torch.softmax(logits, dim=2).transpose(0, 1).reshape(b, h * t, -1)  # B hT N
        values = _image_to_tokens_values(attn, tokens_v)
        return torch.baddbmm(self.x0.expand(b, -1, -1), weights.transpose(1, 2), values)

    def tokens(self, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the two-way transformer. ``sparse``: the prompt encoder's point embeddings (B, P, C).
        Returns (output tokens B x T x C, image tokens B x N x C, predicted IoU B x masks)."""
        b = sparse.shape[0]
        prompt = torch.cat([self.output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        queries, keys = prompt, None
        for i, layer in enumerate(self.transformer.layers):
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + prompt
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            q = queries + prompt
            if keys is None:
                queries = layer.norm2(queries + self._shared_tokens_to_image(layer.cross_attn_token_to_image, q))
            else:
                xp = keys + self.pe
                queries = layer.norm2(queries + _tokens_to_image(layer.cross_attn_token_to_image, q, xp, keys))
            queries = layer.norm3(queries + layer.mlp(queries))
            q = queries + prompt
            if keys is None:
                keys = layer.norm4(self._shared_image_to_tokens(layer.cross_attn_image_to_token, q, queries))
            else:
                keys = layer.norm4(_image_to_tokens(layer.cross_attn_image_to_token, keys, xp, q, queries))
        final = self.transformer.final_attn_token_to_image
        out = _tokens_to_image(final, queries + prompt, keys + self.pe, keys)
        queries = self.transformer.norm_final_attn(queries + out)
        iou = self.decoder.iou_prediction_head(queries[:, 0, :])[:, self.first_mask :]
        return queries, keys, iou

    def masks(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Low-resolution logits of the multimask outputs (B, masks, 4h, 4w) for the prompts whose
        output and image tokens are ``queries`` and ``keys`` (from ``tokens``)."""
        decoder = self.decoder
        conv1, norm, act1, conv2, act2 = decoder.output_upscaling
        b, n, c = keys.shape
        c1, c2 = conv1.out_channels, conv2.out_channels
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)  # C -> (di1 dj1 C1)
        y = torch.addmm(conv1.bias.repeat(4), keys.reshape(b * n, c), w1).reshape(b, n, 4, c1)
        if self.s8 is not None:
            y = y + self.s8.reshape(n, 4, c1)
        y = act1(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps))
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        z = torch.addmm(conv2.bias.repeat(4), y.reshape(-1, c1), w2)
        z = z.reshape(b, n * 16, c2)  # B (N di1 dj1 di2 dj2) C2
        z = act2(z if self.s4 is None else z + self.s4)
        hyper = torch.stack(
            [mlp(queries[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps) if i >= self.first_mask],
            dim=2,
        )  # B C2 masks
        logits = (z @ hyper).reshape(b, self.h, self.w, 2, 2, 2, 2, -1)  # B h w di1 dj1 di2 dj2 masks
        return logits.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, -1, 4 * self.h, 4 * self.w)
