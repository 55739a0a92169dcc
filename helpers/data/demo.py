"""A generated demo set: coloured shapes on varied backgrounds, with exact masks, no download."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..instances import from_masks
from .types import Dataset, Sample

DEMO_CLASSES = ["circle", "square", "triangle", "star"]
MIN_VISIBLE = 0.1  # a shape covered but for less than this share of its pixels is not in the ground truth


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A plain-coloured background with a gradient, stripes, a checker or noise. Each pattern is computed at the
    size it varies over (a row for the gradient, a column for the stripes) and broadcast: the same pixels as over
    the whole grid, faster (a share of the demo SAM's training steps; tests/test_demo_training.py)."""
    kind = rng.integers(4)
    base = rng.integers(60, 200, 3)
    yy, xx = np.arange(height)[:, None, None], np.arange(width)[None, :, None]
    if kind == 0:  # gradient
        ramp = (xx / width) * rng.integers(-60, 60, 3)
        image = base + ramp
    elif kind == 1:  # stripes
        image = base + ((yy // rng.integers(6, 20)) % 2) * 40
    elif kind == 2:  # checker
        step = rng.integers(10, 30)
        image = base + (((yy // step) + (xx // step)) % 2) * 35
    else:  # noise, in place: base + noise, as above
        image = rng.normal(0, 18, (height, width, 3))
        image += base
    return np.broadcast_to(np.clip(image, 0, 255).astype(np.uint8), (height, width, 3)).copy()


def _shape_polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        angles = np.deg2rad([90, 210, 330])
    elif kind == "star":
        angles = np.deg2rad(np.arange(10) * 36 + 90)
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return [(cx + q * np.cos(a), cy - q * np.sin(a)) for a, q in zip(angles, radii)]
    else:
        raise ValueError(kind)
    return [(cx + r * np.cos(a), cy - r * np.sin(a)) for a in angles]


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill) -> None:
    """One shape of radius ``r`` centred at (cx, cy), as the demo set draws it."""
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon(_shape_polygon(kind, cx, cy, r), fill=fill)


def make_demo_dataset(n_images: int = 8, height: int = 240, width: int = 320, seed: int = 0) -> Dataset:
    """Coloured shapes (circle, square, triangle, star) on varied backgrounds, with exact masks.

    Deterministic for a given seed; needs no download. Shapes may overlap: a later shape
    covers an earlier one, and the earlier mask loses those pixels. A shape covered but for less than
    ``MIN_VISIBLE`` of its pixels (from a star's two pixels beside a circle to a thin crescent of a
    few hundred) is no object anyone would mark: its class counts as absent from that image and those
    pixels go to ``Sample.ignore`` (neither right nor wrong, as a COCO crowd region).
    """
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(n_images):
        canvas = Image.fromarray(_background(rng, height, width))
        draw = ImageDraw.Draw(canvas)
        masks = {name: np.zeros((height, width), bool) for name in DEMO_CLASSES}
        drawn_area = {}
        for kind in rng.choice(DEMO_CLASSES, rng.integers(2, 4), replace=False):
            r = rng.uniform(0.12, 0.22) * min(height, width)
            cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
            layer = Image.new("1", (width, height), 0)
            pen = ImageDraw.Draw(layer)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            for target, fill in ((draw, colour), (pen, 1)):
                draw_shape(target, kind, cx, cy, r, fill)
            drawn = np.asarray(layer, bool)
            for name in masks:
                masks[name] &= ~drawn
            masks[kind] |= drawn
            drawn_area[kind] = drawn.sum()
        hidden = {str(k): masks[k].copy() for k, area in drawn_area.items() if 0 < masks[k].sum() < MIN_VISIBLE * area}
        for kind in hidden:
            masks[kind][:] = False
        # each kind is drawn at most once per image, so a class's visible mask is one object
        samples.append(
            Sample(f"demo_{index:03d}", np.asarray(canvas).copy(), masks, instances=from_masks(masks), ignore=hidden)
        )
    return Dataset("demo", samples, list(DEMO_CLASSES))
