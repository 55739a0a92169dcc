"""Fine-tune CLIP on your own classes (the SLIP experiment), on any model ``load_clip`` returns.

Captions are the class names put into ``templates`` (SLIP: the bare name "{}" worked better than
"This is an image of {}"). The loss is CLIP's symmetric cross-entropy over the batch at CLIP's
learned temperature, except that another image of the same class (its caption is the same) is
not counted as a negative. The model is deep-copied, never changed in place; the result carries
the weights ``load_clip`` would read back from ``save_finetuned``'s file (see ``_as_loaded``).
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from clip.model import convert_weights
from PIL import Image
from tqdm.auto import tqdm

from ..checkpoints.ensure import sha256_of
from ..data import LabelledImage
from ..files import atomic_path
from ..models.loading import LoadedClip
from ..precision import native_bf16
from .data import (
    FinetuneDataError,
    check_items,
    image_batch,
    keep_splittable,
    load_finetune_folders,
    split_items,
)
from .loss import MAX_LOGIT_SCALE, Captions, clamped_scale, contrastive_loss
from .settings import FinetuneSettings, Plateau, format_lr, make_optimizer, select_trainable, step_lr

__all__ = [
    "FinetuneDataError",
    "FinetuneRun",
    "FinetuneWarning",
    "FinetuneSettings",
    "check_items",
    "contrastive_loss",
    "finetune_clip",
    "keep_splittable",
    "load_finetune_folders",
    "run_summary",
    "save_finetuned",
    "split_items",
]


class FinetuneWarning(UserWarning):
    """A fine-tuning run that returned the pretrained weights; the message says what to try."""


def _state_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _as_loaded(model: torch.nn.Module) -> torch.nn.Module:
    """Round the weights as ``load_clip`` does when it reads a checkpoint (``clip.model.build_model``
    stores linear/conv/attention weights in float16, ``load_clip`` turns them back into float32),
    so the returned model and its saved-then-reloaded copy give identical embeddings."""
    convert_weights(model)
    return model.float().eval()


class FinetuneRun:
    """One fine-tuning run's state: the model copy, its optimizer and the data as pictures (used by
    ``finetune_clip`` and the benchmark)."""

    def __init__(self, clip_model: LoadedClip, items, classes, settings: FinetuneSettings) -> None:
        self.settings, self.preprocess, self.device = settings, clip_model.preprocess, str(clip_model.device)
        self.model = copy.deepcopy(clip_model.model).float().to(self.device).eval()  # eval: ResNet BN keeps stats
        select_trainable(self.model, settings.trainable)
        self.optimizer = make_optimizer(self.model, settings)
        self.amp = settings.mixed_precision and self.device.startswith("cuda")
        self.amp_dtype = torch.bfloat16 if self.amp and native_bf16(self.device) else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.captions = Captions(self.model, classes, settings.templates, self.device)
        self.index = {name: i for i, name in enumerate(classes)}
        self.pictures = {id(item): Image.fromarray(item.image).convert("RGB") for item in items}
        self.rng, self.torch_rng = random.Random(settings.seed), torch.Generator().manual_seed(settings.seed)

    def features(self, batch: Sequence[LabelledImage], train: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image features, text features of each image's caption, and labels."""
        crop = self.rng if train and self.settings.augment else None
        images = image_batch(self.preprocess, [self.pictures[id(x)] for x in batch], crop, self.settings.crop_scale)
        labels = torch.tensor([self.index[x.label] for x in batch], device=self.device)
        if train:  # a random template per image; validation always uses the first
            templates = torch.randint(len(self.settings.templates), (len(batch),), generator=self.torch_rng)
        else:
            templates = torch.zeros(len(batch), dtype=torch.long)
        templates = templates.to(self.device)
        with torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp):
            return self.model.encode_image(images.to(self.device)), self.captions(labels, templates), labels

    def loss(self, batch: Sequence[LabelledImage], train: bool) -> torch.Tensor:
        image, text, labels = self.features(batch, train)
        return contrastive_loss(image, text, labels, clamped_scale(self.model))

    def validate(self, val: Sequence[LabelledImage]) -> tuple[float, float]:
        """(validation loss, zero-shot accuracy over all classes); NaN without validation images."""
        if not val:
            return math.nan, math.nan
        loss_sum, loss_items, hits = 0.0, 0, 0
        classes = self.captions.class_embeddings()
        with torch.no_grad():
            for start in range(0, len(val), self.settings.batch_size):
                batch = val[start : start + self.settings.batch_size]
                image, text, labels = self.features(batch, train=False)
                if len(batch) > 1:
                    loss = contrastive_loss(image, text, labels, clamped_scale(self.model))
                    loss_sum, loss_items = loss_sum + float(loss) * len(batch), loss_items + len(batch)
                hits += int(((F.normalize(image.float(), dim=-1) @ classes.T).argmax(1) == labels).sum())
        return (loss_sum / loss_items if loss_items else math.nan), hits / len(val)

    def train_epoch(self, train: Sequence[LabelledImage], step: int, total_steps: int, plateau: float) -> tuple:
        """One pass over ``train`` in shuffled batches; returns (mean loss, optimizer steps done)."""
        settings, model = self.settings, self.model
        order = self.rng.sample(list(train), len(train))
        batches = [order[s : s + settings.batch_size] for s in range(0, len(order), settings.batch_size)]
        batches = [b for b in batches if len(b) > 1]  # a lone image has nothing to contrast with
        total = seen = 0
        for i, batch in enumerate(batches):
            with torch.enable_grad():  # even when the caller turned gradients off globally
                loss = self.loss(batch, train=True)
            self.scaler.scale(loss / settings.accumulation_steps).backward()
            total, seen = total + float(loss.detach()) * len(batch), seen + len(batch)
            if (i + 1) % settings.accumulation_steps == 0 or i + 1 == len(batches):
                for group in self.optimizer.param_groups:
                    group["lr"] = step_lr(settings, step, total_steps, plateau)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
                step += 1
        return total / max(1, seen), step


def finetune_clip(
    clip_model: LoadedClip,
    train_items: Sequence[LabelledImage],
    classes: Sequence[str],
    settings: FinetuneSettings = FinetuneSettings(),
    callback: Callable[[pd.DataFrame], None] | None = None,
    progress: bool = True,
) -> tuple[LoadedClip, pd.DataFrame]:
    """Fine-tune a copy of ``clip_model`` on ``train_items``, which are split with ``split_items``
    (rebuild the validation part with the same share and seed). Returns the new model and one
    history row per epoch (epoch 0: before training; ``kept`` marks the epoch whose weights are
    returned); ``callback(history)`` runs after each."""
    classes = list(classes)
    check_items(train_items, classes, settings.val_share)
    train, val = split_items(train_items, settings.val_share, settings.seed)
    val = [val[i] for i in np.random.default_rng(settings.seed).permutation(len(val))]  # classes mixed in batches
    run, started = FinetuneRun(clip_model, train_items, classes, settings), time.perf_counter()
    batches = max(1, math.ceil(len(train) / settings.batch_size))
    total_steps = settings.epochs * math.ceil(batches / settings.accumulation_steps)
    plateau, step, rows = Plateau(settings.plateau_factor, settings.plateau_patience), 0, []
    best_loss, best_state, best_epoch, stale = math.inf, None, 0, 0
    bar = tqdm(range(settings.epochs + 1), desc="CLIP epochs", disable=not progress)  # short: no wrap in a widget
    for epoch in bar:
        train_loss = math.nan
        if epoch:
            train_loss, step = run.train_epoch(train, step, total_steps, plateau.scale)
        val_loss, val_accuracy = run.validate(val)
        lr = run.optimizer.param_groups[0]["lr"] if epoch else 0.0
        scale, seconds = float(clamped_scale(run.model).detach()), time.perf_counter() - started
        rows.append(dict(epoch=epoch, step=step, lr=lr, train_loss=train_loss, val_loss=val_loss,
                         val_accuracy=val_accuracy, logit_scale=scale, seconds=seconds))  # fmt: skip
        bar.set_postfix(lr=format_lr(lr), val_loss=f"{val_loss:.3f}", val_acc=f"{val_accuracy:.2f}")
        if callback:
            callback(pd.DataFrame(rows))
        if not epoch:
            best_loss = val_loss
            continue
        if settings.scheduler == "plateau":
            plateau.step(val_loss if val else train_loss)
        if val and val_loss < best_loss:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            if settings.restore_best:
                best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        else:
            stale += 1
        out_of_time = settings.time_limit_s is not None and seconds > settings.time_limit_s
        if (settings.early_stopping and stale >= settings.early_stopping) or out_of_time:
            break
    bar.close()
    history = pd.DataFrame(rows)
    kept = rows[-1]["epoch"]
    if settings.restore_best and val and best_epoch != kept:  # epoch 0: the pretrained weights were best
        run.model.load_state_dict(best_state if best_epoch else clip_model.model.state_dict())
        kept = best_epoch
    history["kept"] = history["epoch"] == kept
    history.attrs.update(settings=asdict(settings), classes=classes, train_images=len(train), val_images=len(val))
    history.attrs["pretrained_kept"] = bool(settings.restore_best and val and kept == 0 and len(rows) > 1)
    history.attrs["summary"] = run_summary(history)
    if history.attrs["pretrained_kept"]:
        warnings.warn(history.attrs["summary"], FinetuneWarning, stacklevel=2)
    model = _as_loaded(run.model.requires_grad_(False))
    digest = _state_digest(model)
    name, identity = f"{clip_model.name}+finetuned:{digest[:12]}", f"{clip_model.identity}+finetuned:{digest}"
    return LoadedClip(model, clip_model.preprocess, name, str(clip_model.device), identity), history


def run_summary(history: pd.DataFrame) -> str:
    """What a ``finetune_clip`` run returned, in one plain sentence: the kept epoch and what it
    changed, or that the pretrained weights were kept and what to try instead."""
    settings = history.attrs.get("settings", {})
    first, last = history.iloc[0], history.iloc[-1]
    kept = history[history["kept"]].iloc[0] if "kept" in history and history["kept"].any() else last
    epochs = int(last["epoch"])
    if history.attrs.get("pretrained_kept", False) or (int(kept["epoch"]) == 0 and epochs > 0):
        later = history.iloc[1:]
        best = later.loc[later["val_loss"].idxmin()]
        lr, trainable = settings.get("learning_rate", float("nan")), settings.get("trainable", "all")
        what = (
            f"The pretrained weights were kept: validation loss never improved on epoch 0's {first['val_loss']:.4f} "
            f"in {epochs} epoch(s) (lowest later: {best['val_loss']:.4f} at epoch {int(best['epoch'])}). "
        )
        if best["val_loss"] <= first["val_loss"] * 1.02:  # the weights barely moved
            more = (
                "" if trainable == "all" else f", or more trainable parameters (now {trainable!r}; 'all': everything)"
            )
            return what + (
                f"Try a larger learning_rate (now {format_lr(lr)}, e.g. {format_lr(lr * 10)}), more epochs "
                f"or more images per class{more}."
            )
        return what + (
            f"Training made it worse: try a smaller learning_rate (now {format_lr(lr)}, e.g. {format_lr(lr / 10)}), "
            "more images per class, or fewer trainable parameters."
        )
    if np.isnan(first["val_loss"]):
        return f"Trained {epochs} epoch(s) without validation images: the last epoch's weights are returned."
    return (
        f"Kept epoch {int(kept['epoch'])} of {epochs} (lowest validation loss): validation loss "
        f"{first['val_loss']:.4f} -> {kept['val_loss']:.4f}, validation zero-shot accuracy "
        f"{first['val_accuracy']:.3f} -> {kept['val_accuracy']:.3f}."
    )


def save_finetuned(clip_model: LoadedClip, path: str | Path, model_name: str, metadata: dict | None = None) -> str:
    """Write ``{"state_dict", "model_name", "metadata"}`` (which ``load_clip`` reads like the
    open_clip copies of the official weights) atomically; returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in clip_model.model.state_dict().items()}
    record = {"state_dict": state, "model_name": model_name, "metadata": dict(metadata or {})}
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    return sha256_of(path)
