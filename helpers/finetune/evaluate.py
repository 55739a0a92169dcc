"""Before/after measures for a fine-tuned CLIP, laid out like the SLIP report's table, and its
training curves (a ``matplotlib.figure.Figure``, a CSV, and a live plot for notebooks).

Everything that goes through SAM, ``helpers.pipeline`` and ``helpers.metrics`` sits in
``sam_clip_measures``, so a change of those interfaces touches one function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image

from ..clip_scoring import encode_images, encode_text
from ..data import Dataset, LabelledImage, make_mosaics
from ..files import atomic_path
from ..models.loading import LoadedClip, LoadedSam

PRETRAINED, FINETUNED = "pretrained", "fine-tuned"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _labels(items: Sequence[LabelledImage], classes: Sequence[str]) -> np.ndarray:
    return np.array([list(classes).index(item.label) for item in items])


def zero_shot_accuracy(
    clip_model: LoadedClip, items: Sequence[LabelledImage], classes: Sequence[str], templates: Sequence[str] = ("{}",)
) -> float:
    """Share of ``items`` whose best-matching class caption is their own class."""
    if not items:
        return float("nan")
    sims = encode_images(clip_model, [item.image for item in items]) @ encode_text(clip_model, classes, templates).T
    return float((sims.argmax(1) == _labels(items, classes)).mean())


def linear_probe_accuracy(
    clip_model: LoadedClip,
    train_items: Sequence[LabelledImage],
    val_items: Sequence[LabelledImage],
    classes: Sequence[str],
    steps: int = 300,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> float:
    """The supervised baseline: logistic regression (full-batch L-BFGS in torch) on the frozen,
    normalised image features of ``train_items``, scored on ``val_items``."""
    if not val_items:
        return float("nan")
    train_x = torch.from_numpy(encode_images(clip_model, [item.image for item in train_items]))
    val_x = torch.from_numpy(encode_images(clip_model, [item.image for item in val_items]))
    train_y = torch.from_numpy(_labels(train_items, classes))
    torch.manual_seed(seed)
    probe = torch.nn.Linear(train_x.shape[1], len(classes))
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(train_x), train_y) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = probe(val_x).argmax(1).numpy()
    return float((predicted == _labels(val_items, classes)).mean())


def tile_top1_accuracy(clip_model: LoadedClip, mosaics: Dataset, templates: Sequence[str] = ("{}",)) -> float:
    """Mosaic top-1 with the tiles themselves as the candidate regions (no SAM): the share of
    (mosaic, class) pairs whose best-matching tile is the class's own."""
    hits = trials = 0
    for sample in mosaics.samples:
        names = list(sample.masks)
        tiles = []
        for mask in sample.masks.values():
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            tiles.append(sample.image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
        sims = encode_images(clip_model, tiles) @ encode_text(clip_model, names, templates).T  # tiles x names
        hits += int((sims.argmax(0) == np.arange(len(names))).sum())
        trials += len(names)
    return hits / trials if trials else float("nan")


def sam_clip_measures(
    sam: LoadedSam,
    clip_model: LoadedClip,
    classes: Sequence[str],
    mosaics: Dataset | None = None,
    segmentation: Dataset | None = None,
    pipeline_settings=None,
    cache_dir: str | Path | None = None,
    selection=None,
) -> dict[str, float]:
    """SAM + CLIP measures: the SLIP mosaic top-1 (the region SAM + CLIP picks lies in the
    class's tile) and, with a segmentation dataset, mean IoU per class under ``selection``
    (default: softmax over the class list, 0.5). The only user of the pipeline/metrics API here."""
    from .. import evaluation, metrics
    from ..pipeline import Pipeline, PipelineSettings
    from ..selection import SelectionSettings

    pipe = Pipeline(sam, clip_model, pipeline_settings or PipelineSettings(), cache_dir)
    out: dict[str, float] = {}
    if mosaics is not None:
        results = pipe.process_dataset(mosaics, progress=False)
        out["mosaic top-1 (SAM + CLIP)"] = evaluation.mosaic_top1_accuracy(mosaics, results, pipe.text)
    if segmentation is not None:
        names = [name for name in classes if name in segmentation.classes]
        results = pipe.process_dataset(segmentation, progress=False)
        selection = selection or SelectionSettings("softmax", 0.5)
        per_image = evaluation.evaluate(segmentation, results, pipe.text, names, selection)
        summary = metrics.summarize(per_image)
        out.update({f"mean IoU: {name}": float(v) for name, v in zip(summary["class"], summary["mean_iou"])})
    return out


def compare_before_after(
    before: LoadedClip,
    after: LoadedClip,
    train_items: Sequence[LabelledImage],
    val_items: Sequence[LabelledImage],
    classes: Sequence[str],
    templates: Sequence[str] = ("{}",),
    sam: LoadedSam | None = None,
    segmentation: Dataset | None = None,
    pipeline_settings=None,
    cache_dir: str | Path | None = None,
    mosaic_count: int = 40,
    seed: int = 0,
) -> pd.DataFrame:
    """One table like SLIP's: a row per measure, a column per model. Zero-shot accuracy and the
    supervised baseline (linear probe) on the validation split; 4-class mosaics of validation
    images scored with the tiles as regions and, given ``sam``, with SAM's regions; mean IoU per
    class on ``segmentation`` (needs ``sam``). Captions use ``templates`` for both models."""
    mosaics = None
    if len({item.label for item in val_items}) >= 4:
        mosaics = make_mosaics(list(val_items), per_mosaic=4, tile=112, count=mosaic_count, seed=seed)
    if pipeline_settings is not None:
        from dataclasses import replace

        pipeline_settings = replace(pipeline_settings, templates=tuple(templates))
    table: dict[str, dict[str, float]] = {}
    for column, model in ((PRETRAINED, before), (FINETUNED, after)):
        row = {
            "zero-shot accuracy (validation)": zero_shot_accuracy(model, val_items, classes, templates),
            "supervised baseline: linear probe on frozen features (validation)": linear_probe_accuracy(
                model, train_items, val_items, classes, seed=seed
            ),
        }
        if mosaics is not None:
            row["mosaic top-1 (tiles as regions)"] = tile_top1_accuracy(model, mosaics, templates)
        if sam is not None and (mosaics is not None or segmentation is not None):
            row.update(sam_clip_measures(sam, model, classes, mosaics, segmentation, pipeline_settings, cache_dir))
        table[column] = row
    frame = pd.DataFrame(table)
    frame.index.name = "measure"
    frame["change"] = frame[FINETUNED] - frame[PRETRAINED]
    if mosaics is None:
        frame.attrs["note"] = "mosaic rows need >= 4 classes among the validation images"
    return frame


# --- curves -------------------------------------------------------------------------------------


def history_table(history: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """``history`` for reading: numbers rounded to ``digits``, the learning rate as ``3.0e-04``
    (rounding would show 1e-5 as 0.0)."""
    from .settings import format_lr

    table = history.round(digits)
    if "lr" in table:
        table["lr"] = [format_lr(value) for value in history["lr"]]
    return table


def plot_history(history: pd.DataFrame, title: str = "") -> Figure:
    """Loss (training, validation) and validation accuracy against the epoch, the kept epoch marked;
    a run that kept the pretrained weights says so in the title."""
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(history["epoch"], history["train_loss"], "o-", label="training (augmented)")
    loss_axes.plot(history["epoch"], history["val_loss"], "s-", label="validation")
    loss_axes.set(xlabel="epoch", ylabel="contrastive loss", title="loss")
    accuracy_axes.plot(history["epoch"], history["val_accuracy"], "s-", color="tab:green")
    accuracy_axes.set(xlabel="epoch", ylabel="zero-shot accuracy", title="validation accuracy", ylim=(0, 1.02))
    if "kept" in history and history["kept"].any():
        kept = int(history.loc[history["kept"], "epoch"].iloc[0])
        for axes in (loss_axes, accuracy_axes):
            axes.axvline(kept, color="grey", linestyle=":", label=f"kept: epoch {kept}")
    loss_axes.legend()
    if history.attrs.get("pretrained_kept"):
        title = f"{title}\n" if title else ""
        title += "pretrained weights kept: the validation loss never improved"
    if title:
        figure.suptitle(title)
    return figure


def save_history(history: pd.DataFrame, folder: str | Path, stem: str = "finetune", title: str = "") -> dict:
    """``<stem>_history.csv`` and ``<stem>_curves.png`` in ``folder`` (each written under another name and renamed
    into place); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv, png = folder / f"{stem}_history.csv", folder / f"{stem}_curves.png"
    with atomic_path(csv, hidden=True) as tmp:
        history.to_csv(tmp, index=False)
    with atomic_path(png, hidden=True) as tmp:
        plot_history(history, title).savefig(tmp, dpi=100)
    return {"csv": csv, "png": png}


def show_batch(
    clip_model: LoadedClip, items: Sequence[LabelledImage], settings, count: int = 8, title: str = ""
) -> Figure:
    """``count`` training images as the model sees them (augmented, preprocessed, un-normalised
    for display) with the caption each is paired with."""
    import random

    from .data import image_batch

    items = list(items)[:count]
    rng = random.Random(settings.seed) if settings.augment else None
    pictures = [Image.fromarray(item.image).convert("RGB") for item in items]
    batch = image_batch(clip_model.preprocess, pictures, rng, settings.crop_scale)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    figure = Figure(figsize=(2 * len(items), 2.4), layout="constrained")
    for axes, image, item in zip(np.atleast_1d(figure.subplots(1, len(items))), batch, items):
        axes.imshow((image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
        axes.set_title(repr(settings.templates[0].format(item.label)), fontsize=9)
        axes.axis("off")
    if title:
        figure.suptitle(title)
    return figure


def live_plot(title: str = "") -> Callable[[pd.DataFrame], None]:
    """A ``finetune_clip`` callback that redraws the curves in place in a notebook."""
    from IPython.display import display

    handle = None

    def update(history: pd.DataFrame) -> None:
        nonlocal handle
        figure = plot_history(history, title)
        if handle is None:
            handle = display(figure, display_id=True)
        else:
            handle.update(figure)

    return update
