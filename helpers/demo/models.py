"""A small SAM and a small CLIP trained on the demo shapes, shipped with the package.

The weights in ``helpers/demo/weights/`` come from ``python -m helpers.demo.train --out-dir helpers/demo/weights``
(seeded, CPU, offline, in a source checkout); their sha256 sums are registered here and checked on every load. They
segment and name the generated shapes of ``helpers.data.make_demo_dataset`` (circle, square, triangle, star, in any
colour): a demo that works offline, without the 400 MB-2.5 GB real checkpoints.
The settings the demo profile runs them with (``DEMO_SETTINGS``, ``DEMO_SELECTION``) live with the
other profiles in ``helpers.config``.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoints import CheckpointError, sha256_of
from ..checkpoints.stamps import remember_sha256
from ..config import (  # noqa: F401 (the demo's settings and files, public here too)
    DEMO_CLIP_FILE,
    DEMO_SAM_FILE,
    DEMO_SAM_SETTINGS,
    DEMO_SELECTION,
    DEMO_SETTINGS,
    DEMO_SHA256,
    DEMO_VOCABULARY,
    DEMO_WEIGHTS_DIR,
)
from ..models import DEMO_SAM, LoadedClip, LoadedSam, load_clip, load_sam


def demo_weight_path(name: str, folder: Path = DEMO_WEIGHTS_DIR) -> Path:
    """The path of demo weight file ``name`` after checking its sha256 against ``DEMO_SHA256``."""
    path = Path(folder) / name
    if name not in DEMO_SHA256:
        raise CheckpointError(f"{name} is not a demo weight file; known: {sorted(DEMO_SHA256)}.")
    if not path.is_file():
        raise CheckpointError(
            f"Demo weights {path} are missing: restore the shipped ones with `git checkout -- helpers/demo/weights` in "
            "a checkout, or reinstall the package (`pip install --force-reinstall --no-deps <wheel or folder>`)."
        )
    digest = sha256_of(path)
    if digest != DEMO_SHA256[name]:
        raise CheckpointError(
            f"{path} has sha256 {digest}, expected {DEMO_SHA256[name]}: the file is damaged or from another "
            "training run. Restore it with git in a checkout, or reinstall the package (`pip install "
            "--force-reinstall --no-deps <wheel or folder>`); new weights of your own: register their sum in "
            "DEMO_SHA256 (helpers/config.py)."
        )
    remember_sha256(path, digest)  # the weights' identity in cache keys reuses this hash instead of hashing again
    return path


def load_demo_models(device: str = "cpu", folder: Path = DEMO_WEIGHTS_DIR) -> tuple[LoadedSam, LoadedClip]:
    """The demo SAM and CLIP, verified and loaded through ``load_sam`` / ``load_clip``."""
    sam = load_sam(DEMO_SAM, demo_weight_path(DEMO_SAM_FILE, folder), device)
    clip = load_clip(demo_weight_path(DEMO_CLIP_FILE, folder), device, name=f"clip_demo:{DEMO_CLIP_FILE}")
    clip.vocabulary = DEMO_VOCABULARY
    return sam, clip
