"""What CLIP is fine-tuned against: the contrastive loss with same-class pairs masked, CLIP's
clamped temperature, and the caption features of every (class, template)."""

from __future__ import annotations

from typing import Sequence

import clip
import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = 100.0  # CLIP clamps its learned temperature here


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric cross-entropy for B (image, caption) pairs. Pair i's positive is its own
    caption (image) on the diagonal; pairs of the same class are masked out, so they count
    neither as positives nor as negatives. ``logit_scale`` is the temperature (not its log)."""
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    logits = logit_scale.float() * image_features @ text_features.T
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    targets = torch.arange(len(labels), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def clamped_scale(model: torch.nn.Module) -> torch.Tensor:
    return model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


class Captions:
    """Text features of (class, template) captions; computed once when the text tower is frozen."""

    def __init__(self, model, classes: Sequence[str], templates: Sequence[str], device: str) -> None:
        self.model, self.classes, self.templates, self.device = model, list(classes), tuple(templates), device
        self.frozen = not model.token_embedding.weight.requires_grad
        self.table = self._encode(range(len(classes) * len(self.templates))) if self.frozen else None

    def _encode(self, keys) -> torch.Tensor:
        keys = list(keys)
        texts = [self.templates[k % len(self.templates)].format(self.classes[k // len(self.templates)]) for k in keys]
        tokens = clip.tokenize(texts, context_length=self.model.context_length, truncate=True).to(self.device)
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            return self.model.encode_text(tokens)

    def __call__(self, labels: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
        keys = labels * len(self.templates) + templates
        if self.table is not None:
            return self.table[keys]
        unique, inverse = torch.unique(keys, return_inverse=True)
        return self._encode(unique.tolist())[inverse]

    def class_embeddings(self) -> torch.Tensor:
        """One unit vector per class: the mean of its normalised template embeddings (as in encode_text)."""
        with torch.no_grad():
            table = (
                self.table if self.table is not None else self._encode(range(len(self.classes) * len(self.templates)))
            )
            per = F.normalize(table.float(), dim=-1).reshape(len(self.classes), len(self.templates), -1)
            return F.normalize(per.mean(1), dim=-1)
