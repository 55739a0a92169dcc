"""SAM and CLIP checkpoints: the registry of known files, downloads that verify and resume, hashes.
``python -m helpers.checkpoints`` downloads the run's models (``--verify`` re-hashes a folder)."""

from .download import download_file, file_sha256, is_verified, sha256_of
from .ensure import (
    check_clip_state_dict_file,
    ensure_checkpoint,
    note_first_sha256,
    open_clip_to_clip_state_dict,
    supply_hint,
)
from .http_source import ChecksumMismatchError, DownloadError, NotEnoughDiskError
from .registry import (
    REGISTRY,
    Checkpoint,
    CheckpointError,
    UnknownModelError,
    checkpoint_table,
    get_checkpoint,
    register_checkpoint,
)

__all__ = [
    "REGISTRY",
    "Checkpoint",
    "CheckpointError",
    "ChecksumMismatchError",
    "DownloadError",
    "NotEnoughDiskError",
    "UnknownModelError",
    "check_clip_state_dict_file",
    "checkpoint_table",
    "download_file",
    "ensure_checkpoint",
    "file_sha256",
    "get_checkpoint",
    "is_verified",
    "note_first_sha256",
    "open_clip_to_clip_state_dict",
    "register_checkpoint",
    "sha256_of",
    "supply_hint",
]
