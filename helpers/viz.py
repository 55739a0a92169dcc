"""Figures: the four panels per image, all SAM masks in colour, cut-outs with scores, failure
galleries and sweep plots. Every function returns a matplotlib Figure; nothing is shown here."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .files import atomic_path
from .masks import MaskSet
from .selection import SelectionSettings, TextEncoder, predict

PREDICTION_COLOUR = (255, 40, 40)


def overlay(image: np.ndarray, mask: np.ndarray, colour=PREDICTION_COLOUR, alpha: float = 0.5) -> np.ndarray:
    """``image`` with ``mask`` tinted in ``colour``."""
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)


def colour_masks(masks: MaskSet, seed: int = 0) -> np.ndarray:
    """An RGB picture of all masks, each in its own colour; smaller masks drawn on top."""
    colours = np.random.default_rng(seed).integers(40, 256, (max(len(masks), 1), 3)).astype(np.uint8)
    picture = np.zeros((*masks.shape, 3), np.uint8)
    for index in np.argsort(-masks.areas, kind="stable"):
        picture[masks.mask(index)] = colours[index]
    return picture


def draw_panels(container, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> None:
    """The four panels in a row of new axes of ``container`` (a Figure or SubFigure)."""
    panels = [
        (image, "original", None),
        (truth.astype(np.uint8), "ground truth", "gray"),
        (prediction.astype(np.uint8), "prediction", "gray"),
        (overlay(image, prediction), "overlay", None),
    ]
    for ax, (array, label, cmap) in zip(container.subplots(1, 4), panels):
        ax.imshow(array, cmap=cmap, vmin=0, vmax=1 if cmap else None, interpolation="nearest")
        ax.set_title(label)
        ax.axis("off")


def four_panel(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, title: str = "", figure: plt.Figure | None = None
) -> plt.Figure:
    """Original, ground truth, prediction and prediction over the image (axes 0-3)."""
    figure = figure or plt.figure(figsize=(14, 3.8))
    figure.clear()
    draw_panels(figure, image, truth, prediction)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def show_sample(
    image: np.ndarray, masks: dict[str, np.ndarray], title: str = "", classes: Sequence[str] | None = None
) -> plt.Figure:
    """An image beside its ground-truth classes, one colour per class, with a legend. With ``classes`` (the
    dataset's) a class keeps its colour from image to image (up to 20 classes), else colours follow this image's."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    present = [name for name, mask in masks.items() if mask.any()]
    order = list(classes) if classes and len(classes) <= 20 and set(present) <= set(classes) else present
    palette = plt.get_cmap("tab10" if len(order) <= 10 else "tab20")
    colours = {name: np.asarray(palette(order.index(name) % palette.N)[:3]) for name in present}
    picture = np.zeros_like(image)
    for name in present:
        picture[masks[name]] = (colours[name] * 255).astype(np.uint8)
    axes[0].imshow(image)
    axes[1].imshow(picture)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[name]) for name in present]
    if handles:  # beside the picture, never over it
        axes[1].legend(handles, present, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    for ax in axes:
        ax.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def show_masks(image: np.ndarray, masks: MaskSet, title: str = "") -> plt.Figure:
    """An image beside all its masks, each in its own colour."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(image // 2 + colour_masks(masks) // 2)
    axes[1].set_title(f"{len(masks)} SAM mask{'' if len(masks) == 1 else 's'}")
    for ax in axes:
        ax.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def show_regions(
    regions: Sequence[np.ndarray],
    scores: np.ndarray,
    kept: np.ndarray,
    title: str = "",
    columns: int = 8,
    limit: int = 32,
) -> plt.Figure:
    """The cut-outs CLIP saw, best score first, kept ones framed in red."""
    order = np.argsort(-scores)[:limit]
    columns = max(1, min(columns, int(np.ceil(np.sqrt(len(order))))))  # a grid, not one long strip
    rows = max(1, int(np.ceil(len(order) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(max(2.4 * columns, 4), 2.4 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, index in zip(axes.ravel(), order):
        ax.imshow(regions[index])
        ax.set_title(f"#{index}: {scores[index]:.3f}", color="red" if kept[index] else "black", fontsize=9)
        if kept[index]:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(3)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_sweep(table: pd.DataFrame, title: str = "", best: float | None = None) -> plt.Figure:
    """IoU, precision and recall against the threshold (a sweep from ``evaluation.class_sweep``),
    the best threshold dashed; a class without data says so instead of drawing empty lines."""
    figure, ax = plt.subplots(figsize=(6, 4))
    for column in ("mean_iou", "dataset_iou", "precision", "recall"):
        ax.plot(table["threshold"], table[column], label=column.replace("_", " "))
    if table[["mean_iou", "dataset_iou", "precision", "recall"]].isna().all().all():
        ax.text(0.5, 0.5, "no data for this class", ha="center", va="center", transform=ax.transAxes)
    if best is not None and np.isfinite(best):
        ax.axvline(best, color="grey", linestyle="--", label=f"best {best:.3f}")
    ax.set_xlabel("threshold")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.set_title(title)
    figure.tight_layout()
    return figure


def worst_gallery(
    per_image: pd.DataFrame,
    dataset,
    results,
    text: TextEncoder,
    selection: SelectionSettings,
    count: int = 4,
    title: str = "",
) -> plt.Figure:
    """Four panels for each of the ``count`` lowest-IoU (image, class) rows of ``per_image``
    (from ``evaluation.evaluate``), predicted again from the cached results."""
    worst = per_image.dropna(subset=["iou"]).nsmallest(count, "iou")
    ids, result_ids = dataset.ids, list(getattr(results, "ids", None) or [r.image_id for r in results])
    by_id = result_ids == ids or len(result_ids) != len(ids)  # else: results named otherwise, paired by position
    where = {image_id: i for i, image_id in enumerate(ids)}
    found = {image_id: i for i, image_id in enumerate(result_ids)}
    classes = list(per_image["class"].unique())
    rows = max(len(worst), 1)
    cases = [dataset[where[image_id]] for image_id in worst["image_id"]]  # only the images shown are read
    # each row as tall as its four panels need (width-limited at 14 in), plus its titles: no gaps between rows
    aspect = max((s.image.shape[0] / s.image.shape[1] for s in cases), default=0.75)
    row_height = (14 / 4 - 0.2) * aspect + 0.7
    header = 0.35 * (title.count("\n") + 1) + 0.1 if title else 0.1
    figure = plt.figure(figsize=(14, row_height * rows + header), layout="constrained")
    # the title gets a row of its own, so it never covers the first case's titles
    parts = figure.subfigures(rows + 1, 1, height_ratios=[header] + [row_height] * rows)
    parts[0].suptitle(title, y=0.5, va="center")
    rows_shown = worst[["image_id", "class", "iou"]].itertuples(index=False)
    for sub, sample, (image_id, name, iou) in zip(parts[1:], cases, rows_shown):
        result = results[found[image_id] if by_id else where[image_id]]
        prediction = predict(result, text, name, selection, classes).mask
        truth = sample.masks.get(name, np.zeros(sample.image.shape[:2], bool))
        draw_panels(sub, sample.image, truth, prediction)
        sub.suptitle(f"{image_id} - {name} - IoU {iou:.3f}")
    return figure


def save_figure(figure: plt.Figure, path: str | Path) -> Path:
    """Save ``figure`` at ``path`` in the format its suffix names (folders created; written in a folder beside it
    first and renamed into place, so an interrupted save leaves the earlier figure), returning the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, hidden=True) as tmp:
        figure.savefig(tmp, dpi=100, bbox_inches="tight")  # the format from the suffix: tmp has path's name
    return path


def plot_error_breakdown(table: pd.DataFrame, title: str = "") -> plt.Figure:
    """Per class, three bars: the pipeline's mean IoU, SAM's ceiling (best union of its masks) and
    the IoU with perfect (ground-truth) masks as proposals, i.e. CLIP's and selection's share."""
    bars = [("pipeline_iou", "SAM + CLIP"), ("sam_best_union", "SAM ceiling"), ("clip_on_truth_iou", "perfect masks")]
    figure, ax = plt.subplots(figsize=(max(6, 1.4 * len(table)), 4))
    x = np.arange(len(table))
    for k, (column, label) in enumerate(bars):
        ax.bar(x + (k - 1) * 0.27, table[column].fillna(0), width=0.27, label=label)
    ax.set_xticks(x, table["class"], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean IoU")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title)
    figure.tight_layout()
    return figure


def show_instances(image: np.ndarray, instances: Sequence, title: str = "", columns: int = 2) -> plt.Figure:
    """An image beside its objects (``helpers.instances.Instance``): each mask in its class's
    colour with its box and "label score" written over it."""
    labels = list(dict.fromkeys(instance.label for instance in instances))
    palette = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    colours = {name: np.asarray(palette(i % palette.N)[:3]) for i, name in enumerate(labels)}
    picture = image.copy()
    for instance in sorted(instances, key=lambda i: -i.area):  # small objects on top
        picture = overlay(picture, instance.mask, tuple(colours[instance.label] * 255), alpha=0.55)
    figure, axes = plt.subplots(1, columns, figsize=(5 * columns, 4))
    axes = np.atleast_1d(axes)
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[-1].imshow(picture)
    axes[-1].set_title(f"{len(instances)} object{'' if len(instances) == 1 else 's'}")
    placed: list[tuple[float, float]] = []
    for instance in sorted(instances, key=lambda i: (i.box[1], i.box[0])):
        x0, y0, x1, y1 = instance.box
        colour = colours[instance.label]
        axes[-1].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color=colour, lw=1.5))
        ty = y0 - 2
        while any(abs(ty - py) < 0.05 * image.shape[0] and abs(x0 - px) < 0.2 * image.shape[1] for px, py in placed):
            ty += 0.05 * image.shape[0]  # below a label already written there, never over it
        placed.append((x0, ty))
        axes[-1].text(
            x0,
            ty,
            f"{instance.label} {instance.score:.2f}",
            color="white",
            fontsize=8,
            bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "lw": 0},
        )
    for ax in axes:
        ax.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    return figure
