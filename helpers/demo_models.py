"""A small SAM and a small CLIP trained on the demo shapes, shipped with the package.

The weights in ``helpers/demo_weights/`` come from ``python -m helpers.train_demo`` (seeded, CPU,
offline); their sha256 sums are registered here and checked on every load. They segment and
name the generated shapes of ``helpers.data.make_demo_dataset`` (circle, square, triangle,
star, in any colour): a demo that works offline, without the 400 MB-2.5 GB real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoints import CheckpointError, sha256_of
from .masks import FilterSettings
from .models import LoadedClip, LoadedSam, load_clip, load_sam
from .pipeline import PipelineSettings
from .segmentation import SamSettings
from .selection import SelectionSettings
from .tiny_models import DEMO_SAM

DEMO_WEIGHTS_DIR = Path(__file__).resolve().parent / "demo_weights"
DEMO_SAM_FILE = "sam_demo.pth"  # a state dict for tiny_models.build_sam_demo
DEMO_CLIP_FILE = "clip_demo.pt"  # a float16 state dict for tiny_models.build_clip_demo (clip.model.build_model)
DEMO_SHA256 = {
    DEMO_SAM_FILE: "13a25d64bae8ed050725273408b9ea693eb62738bb1dbb90ffbd030ff23e449a",
    DEMO_CLIP_FILE: "b6c2d0325748f92abeec6b516ddebced13c28440c5984f8823b7fe017e76cf98",
}

# 16 x 16 points suffice for shapes of radius >= 29 px on 320 x 240 images (every shape holds several
# grid points) and take a quarter of 32 x 32's time. The demo SAM's IoU head was trained on background
# points too, so predicted IoU >= 0.5 drops the blobs it proposes there (~28 -> 8 masks per image without
# the crop layer below); its masks are not good enough for SAM's 0.88 IoU gate (README, "Trained demo models").
# One crop layer (SAM's own: the image again as 2 x 2 overlapping crops, each at the model's full input
# size) shows the shapes 1.6x larger, on a finer token grid: the best mask per shape rises from 0.76 to
# 0.83 (seed 9090, 8 images) for 4x the generator's time.
# Stability gate 0.75 (SAM's is 0.95, which keeps nothing here: these logits are less steep): it drops
# the parts and merges of shapes CLIP would name wrongly (~15 -> ~4 masks per image) at some cost to the
# best mask per shape (0.83 -> 0.80 on seed 9090), and raises the pipeline's mean IoU (seed 9090: 0.53 -> 0.64).
# (The CLIP's SAM cut-outs are made without the crop layer and the stability gate:
# train_demo.CUTOUT_SAM_SETTINGS.)
DEMO_SAM_SETTINGS = SamSettings(points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.75, crop_n_layers=1)
DEMO_SETTINGS = PipelineSettings(sam=DEMO_SAM_SETTINGS, filters=FilterSettings(min_area=100))
# This CLIP's cosine similarities run higher than OpenAI's (a wrong shape often scores 0.3-0.6), so the
# threshold is 0.4 rather than the pipeline's 0.25 (the best of 0.4-0.8 on demo seed 404; re-checked with the
# stability gate: 0.3-0.45 within 0.03 of each other on four seeds, README).
DEMO_SELECTION = SelectionSettings(mode="threshold", threshold=0.4, negatives=("background",))


def demo_weight_path(name: str, folder: Path = DEMO_WEIGHTS_DIR) -> Path:
    """The path of demo weight file ``name`` after checking its sha256 against ``DEMO_SHA256``."""
    path = Path(folder) / name
    if name not in DEMO_SHA256:
        raise CheckpointError(f"{name} is not a demo weight file; known: {sorted(DEMO_SHA256)}.")
    if not path.is_file():
        raise CheckpointError(
            f"Demo weights {path} are missing. Reinstall the package or run `python -m helpers.train_demo`."
        )
    digest = sha256_of(path)
    if digest != DEMO_SHA256[name]:
        raise CheckpointError(
            f"{path} has sha256 {digest}, expected {DEMO_SHA256[name]}: the file is damaged or from another "
            "training run. Restore it with git, or register the new sum in helpers/demo_models.py."
        )
    return path


def load_demo_models(device: str = "cpu", folder: Path = DEMO_WEIGHTS_DIR) -> tuple[LoadedSam, LoadedClip]:
    """The demo SAM and CLIP, verified and loaded through ``load_sam`` / ``load_clip``."""
    sam = load_sam(DEMO_SAM, demo_weight_path(DEMO_SAM_FILE, folder), device)
    clip = load_clip(demo_weight_path(DEMO_CLIP_FILE, folder), device, name=f"clip_demo:{DEMO_CLIP_FILE}")
    return sam, clip
