"""Generated training scenes for the demo models: shapes, colours, occlusions, exact masks."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

from ..data import DEMO_CLASSES
from ..data.class_folders import crop_box
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


def zoom_scene(scene: Scene, rng: np.random.Generator, zoom: float) -> Scene:
    """A window of 1 / ``zoom`` of ``scene``'s size at a random place, scaled back up to that size (image and masks
    bilinear, masks cut at one half): shapes ``zoom`` times larger, as SAM's crop layer and mosaic tiles show them."""
    h, w = scene.image.shape[:2]
    ch, cw = max(1, round(h / zoom)), max(1, round(w / zoom))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    window = np.s_[y : y + ch, x : x + cw]
    image = cv2.resize(scene.image[window], (w, h), interpolation=cv2.INTER_LINEAR)
    masks = [cv2.resize(m[window].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for m in scene.masks]
    return Scene(image, list(scene.kinds), list(scene.colours), np.stack(masks) > 0.5)


def mosaic_scene(
    rng: np.random.Generator, height: int = 240, width: int = 320, tile: int = 160, margin: float = 0.1
) -> Scene:
    """A grid of ``tile`` px tiles seen through a ``height`` x ``width`` window at a random offset (the scenes' size,
    so that SAM's inputs keep one size), each tile the box of one shape of a fresh ``make_scene`` (one of >= 100
    visible px clear of the scene's border; else the whole scene) cut as ``object_crops`` cuts (``crop_box``),
    scaled to the tile (image bicubic as ``make_mosaics``, masks bilinear cut at one half): large, up-scaled shapes
    beside other tiles, as SLIP's mosaics show them (a 160 px tile here is a mosaic's 112 px tile at SAM's input:
    128 px). Every shape part in the window is an instance."""
    rows, cols = -(-height // tile) + 1, -(-width // tile) + 1
    y0, x0 = int(rng.integers(0, rows * tile - height + 1)), int(rng.integers(0, cols * tile - width + 1))
    window = np.s_[y0 : y0 + height, x0 : x0 + width]
    canvas = np.zeros((rows * tile, cols * tile, 3), np.uint8)
    kinds, colours, masks = [], [], []
    for slot in range(rows * cols):
        scene = make_scene(rng)
        edge = scene.masks[:, [0, -1]].any((1, 2)) | scene.masks[:, :, [0, -1]].any((1, 2))
        whole = np.flatnonzero((scene.masks.reshape(len(scene.masks), -1).sum(1) >= 100) & ~edge)
        chosen = scene.masks[int(rng.choice(whole))] if len(whole) else np.ones(scene.masks.shape[1:], bool)
        box = crop_box(chosen, margin)
        y, x = divmod(slot, cols)
        place = np.s_[y * tile : (y + 1) * tile, x * tile : (x + 1) * tile]
        canvas[place] = np.asarray(Image.fromarray(scene.image[box]).resize((tile, tile), Image.BICUBIC))
        for kind, colour, mask in zip(scene.kinds, scene.colours, scene.masks):
            full = np.zeros(canvas.shape[:2], bool)
            full[place] = cv2.resize(mask[box].astype(np.float32), (tile, tile), interpolation=cv2.INTER_LINEAR) > 0.5
            if full[window].any():
                kinds.append(kind)
                colours.append(colour)
                masks.append(full[window])
    return Scene(canvas[window].copy(), kinds, colours, np.stack(masks))


# --- SAM training -------------------------------------------------------------------------------
