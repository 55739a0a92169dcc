"""The trained demo models: a small SAM and CLIP for the synthetic shapes, shipped in ``weights/`` and
sha256-checked (``models``), and their seeded offline training (``python -m helpers.demo.train``)."""

from .models import DEMO_CLIP_FILE, DEMO_SAM_FILE, DEMO_SHA256, demo_weight_path, load_demo_models

__all__ = ["DEMO_CLIP_FILE", "DEMO_SAM_FILE", "DEMO_SHA256", "demo_weight_path", "load_demo_models"]
