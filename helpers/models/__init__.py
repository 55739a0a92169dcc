"""Loading SAM and CLIP through their own libraries (``loading``), and small models built from the
real classes for tests, the smoke profile and the demo (``tiny``)."""

from .loading import (
    SAM_BUILDERS,
    LoadedClip,
    LoadedSam,
    SamSource,
    is_torchscript_archive,
    load_clip,
    load_sam,
    weights_identity,
)
from .tiny import DEMO_SAM, TINY_CLIP, TINY_SAM, build_clip_tiny, build_sam_tiny, write_tiny_checkpoints

__all__ = [
    "DEMO_SAM",
    "SAM_BUILDERS",
    "TINY_CLIP",
    "TINY_SAM",
    "LoadedClip",
    "LoadedSam",
    "SamSource",
    "build_clip_tiny",
    "build_sam_tiny",
    "is_torchscript_archive",
    "load_clip",
    "load_sam",
    "weights_identity",
    "write_tiny_checkpoints",
]
