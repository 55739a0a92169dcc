"""Generated training scenes for the demo models: shapes, colours, occlusions, exact masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..data import DEMO_CLASSES
from ..data.demo import _background, draw_shape

TRAIN_STREAM = 0x5A3D  # training scenes draw from np.random.default_rng([TRAIN_STREAM, seed]): never a demo seed


# --- training scenes ----------------------------------------------------------------------------


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8
    kinds: list[str]  # per instance
    colours: list[tuple[int, int, int]]
    masks: np.ndarray  # instances x H x W bool, visible pixels (later shapes cover earlier ones)


def make_scene(rng: np.random.Generator, height: int = 240, width: int = 320, max_shapes: int = 6) -> Scene:
    """A ``make_demo_dataset``-style image with more variety: 1-6 shapes (kinds may repeat), radii
    0.08-0.26 of the short side, plain backgrounds as well, shapes may reach past the border."""
    if rng.random() < 0.15:
        image = np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), (height, width, 3)).copy()
    else:
        image = _background(rng, height, width)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    kinds, colours, masks = [], [], []
    for _ in range(rng.integers(1, max_shapes + 1)):
        kind = str(rng.choice(DEMO_CLASSES))
        r = rng.uniform(0.08, 0.26) * min(height, width)
        inside = rng.random() < 0.85
        lo = r if inside else 0.0
        cx, cy = rng.uniform(lo, width - lo), rng.uniform(lo, height - lo)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        layer = Image.new("1", (width, height), 0)
        draw_shape(draw, kind, cx, cy, r, colour)
        draw_shape(ImageDraw.Draw(layer), kind, cx, cy, r, 1)
        drawn = np.asarray(layer, bool)
        for mask in masks:
            mask &= ~drawn
        kinds.append(kind)
        colours.append(colour)
        masks.append(drawn.copy())
    return Scene(np.asarray(canvas).copy(), kinds, colours, np.stack(masks))


# --- SAM training -------------------------------------------------------------------------------
