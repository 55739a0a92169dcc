"""SAM and CLIP checkpoints: where to get them and how each is verified.

Sources are tried in order: an explicit local file, the user's mirrors, a Google Drive cache
on Colab, then the official URLs and known mirrors; CLIP falls back to the open_clip copy of
the OpenAI weights when all are gone. That copy has no published sha256, so before it is
accepted its size must match what the server announced, it must be a readable torch archive,
and it must hold CLIP's state dict (``check_clip_state_dict_file``); the sha256 of the first copy
that passes is recorded and a later download that differs is reported. Downloads go through
``download`` (the registry itself is ``registry``); the command line is ``cli``.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import requests

from ..files import atomic_path, write_text
from .download import (
    ChecksumMismatchError,
    DownloadError,
    NotEnoughDiskError,
    download_file,
    file_sha256,
    is_local,
    is_verified,
    sha256_of,
)
from .download import (
    local_path as local_path_of,
)
from .registry import REGISTRY, Checkpoint, CheckpointError, UnknownModelError, get_checkpoint, register_checkpoint

__all__ = [
    "REGISTRY",
    "Checkpoint",
    "CheckpointError",
    "ChecksumMismatchError",
    "DownloadError",
    "NotEnoughDiskError",
    "UnknownModelError",
    "check_clip_state_dict_file",
    "download_file",
    "ensure_checkpoint",
    "file_sha256",
    "get_checkpoint",
    "is_verified",
    "open_clip_to_clip_state_dict",
    "register_checkpoint",
    "sha256_of",
]

CLIP_REQUIRED_KEYS = (
    "token_embedding.weight",
    "positional_embedding",
    "text_projection",
    "ln_final.weight",
    "logit_scale",
)
FIRST_SEEN = "first_seen_sha256.json"  # in the checkpoint folder: sha256 of checkpoints with none published


DEMO_HINT = "No internet at all?"  # opens the last line of a download failure's hint (the demo profile)


def open_clip_to_clip_state_dict(state: dict) -> dict:
    """Turn an open_clip / timm copy of OpenAI CLIP weights into ``build_model``'s key names.

    The OpenAI models in open_clip keep OpenAI's parameter names; the differences are a
    possible ``state_dict``/``module.`` wrapping and buffers that CLIP rebuilds itself.
    """
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {str(key).removeprefix("module."): value for key, value in state.items()}
    state = {key: value for key, value in state.items() if not key.endswith("attn_mask")}
    missing = [key for key in CLIP_REQUIRED_KEYS if key not in state]
    if missing or not any(key.startswith("visual.") for key in state):
        raise CheckpointError(
            f"Not an OpenAI-CLIP compatible state dict (missing {missing or ['visual.*']}). "
            "Use an OpenAI .pt archive or the open_clip copy of the OpenAI weights."
        )
    return state


def check_clip_state_dict_file(path: Path) -> None:
    """Raise CheckpointError unless ``path`` is a readable torch zip archive holding CLIP's state dict."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path.name} is not a zip/torch archive (an HTML page or a cut download?)")
    import torch  # here, not at import time: the command line and the downloader stay light

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # zip, pickle and torch errors alike: not a readable archive
        raise CheckpointError(f"{path.name} is not a readable torch archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    open_clip_to_clip_state_dict(state)


def _check_for(candidate: Checkpoint):
    return check_clip_state_dict_file if candidate.format == "open_clip" else None


def note_first_sha256(folder: Path, path: Path) -> str | None:
    """Record the sha256 of the first copy of ``path.name`` seen in ``folder``; return the recorded
    one when this copy differs (and warn), else None."""
    record_file = folder / FIRST_SEEN
    digest = file_sha256(path)
    try:
        known = json.loads(record_file.read_text())
    except (OSError, ValueError):
        known = {}
    first = known.get(path.name) if isinstance(known, dict) else None
    if first is None:
        known = {**(known if isinstance(known, dict) else {}), path.name: digest}
        try:
            write_text(record_file, json.dumps(known, indent=1))
        except OSError:  # a read-only folder: nothing remembered
            pass
        return None
    if first != digest:
        warnings.warn(
            f"{path} (sha256 {digest[:12]}...) differs from the first copy seen here ({first[:12]}...). If the "
            f"source did not publish a new version, this file may be damaged: delete it and download again, "
            f"or remove its entry from {record_file} to accept it.",
            stacklevel=3,
        )
        return first
    return None


def _mirror_sources(filename: str, mirrors: Sequence[str]) -> list[str]:
    sources = []
    for mirror in mirrors:
        if is_local(mirror):
            sources.append(str(local_path_of(mirror) / filename))
        else:
            sources.append(mirror.rstrip("/") + "/" + filename)
    return sources


# The settings (helpers.config reads them) that name where checkpoints come from; quoted in hints.
MIRROR_SETTING = "SAMCLIP_MIRROR"
LOCAL_SETTING = {"sam": "SAMCLIP_SAM_CHECKPOINT", "clip": "SAMCLIP_CLIP_CHECKPOINT"}


def supply_hint(checkpoint: Checkpoint, dest_dir: Path) -> str:
    """How to supply ``checkpoint`` by hand: the text appended to every download error."""
    setting = LOCAL_SETTING.get(checkpoint.family, "SAMCLIP_<FAMILY>_CHECKPOINT")
    urls, dest_dir = ", ".join(checkpoint.urls), Path(dest_dir).absolute()  # where to copy it, from any folder
    hint = (
        f"\nTo supply {checkpoint.filename} ({checkpoint.name}) yourself, any one of:\n"
        f"  - download it from {urls} on a machine with internet and copy it to {dest_dir / checkpoint.filename}\n"
        f"  - set {MIRROR_SETTING} to a folder or http(s) URL that holds {checkpoint.filename}\n"
        f"  - set {setting}=/path/to/{checkpoint.filename}"
    )
    for copy in checkpoint.alternates:
        hint += (
            f"\nThe open_clip copy of the same weights works too: get {', '.join(copy.urls)} and save it as "
            f"{dest_dir / copy.filename} (or in the mirror as {copy.filename}), or set {setting} to it."
        )
    hint += (
        f"\n{DEMO_HINT} SAMCLIP_PROFILE=demo (`make demo` in a checkout) runs the notebooks and autolabel "
        "offline with the small SAM and CLIP trained on the demo shapes, shipped in the package."
    )
    return hint


def _check_verify(verify: bool | str) -> bool:
    if verify not in (True, False, "full"):
        raise ValueError(f"verify={verify!r}: use True (checksum, remembered), 'full' (re-hash) or False.")
    return verify == "full"


def _local_file(checkpoint: Checkpoint, path: Path, verify: bool | str) -> Path:
    """A file named by the user: the official one, or (CLIP) the open_clip copy; see ensure_checkpoint."""
    if not path.is_file():
        raise CheckpointError(
            f"{LOCAL_SETTING.get(checkpoint.family)} / local_path points to {path}, which is "
            f"not a file. Fix the path or unset it to download."
        )
    if not verify or is_verified(path, checkpoint.sha256, checkpoint.size, full=verify == "full"):
        return path
    problem = ""
    if any(copy.format == "open_clip" for copy in checkpoint.alternates):
        try:
            check_clip_state_dict_file(path)
        except CheckpointError as exc:
            problem = f" nor the open_clip copy of it ({exc})"
        else:
            print(
                f"Note: {path.name} is not the official {checkpoint.filename} but holds CLIP's state dict "
                "(e.g. the open_clip copy of the OpenAI weights); it is used as such.",
                file=sys.stderr,
            )
            return path
    raise ChecksumMismatchError(
        f"{path} is not the official {checkpoint.name} checkpoint (size or sha256 differ){problem}. "
        "Pass verify=False to use your own weights on purpose, or supply the official file."
    )


def ensure_checkpoint(
    name: str,
    dest_dir: Path,
    mirrors: Sequence[str] = (),
    local_path: str | Path | None = None,
    drive_cache: str | Path | None = None,
    progress: bool = True,
    verify: bool | str = True,
    session: requests.Session | None = None,
    download_options: Mapping[str, Any] | None = None,
) -> Path:
    """Return the path of a verified checkpoint ``name``, downloading it when needed.

    ``local_path`` names a file to use in place; ``verify=False`` accepts it without a checksum
    (fine-tuned weights); for CLIP, a file that is not the official archive but holds CLIP's state
    dict is accepted with a note. ``verify="full"`` re-hashes files already present instead of
    trusting their stamp. ``mirrors`` are folders or URLs holding the files. ``drive_cache`` is a
    folder checked first and filled after a download, e.g. a Google Drive folder on Colab.
    ``download_options`` go to ``download_file`` (speed floor, retries...).
    ``helpers.config.RunConfig`` holds the run's values of ``mirrors`` and ``drive_cache``.
    """
    checkpoint = get_checkpoint(name)
    dest_dir = Path(dest_dir)
    full = _check_verify(verify)
    if local_path:
        return _local_file(checkpoint, local_path_of(str(local_path)).resolve(), verify)
    hint = supply_hint(checkpoint, dest_dir)
    errors: list[DownloadError] = []
    for candidate in (checkpoint, *checkpoint.alternates):
        dest = dest_dir / candidate.filename
        sources = _mirror_sources(candidate.filename, list(mirrors))
        if drive_cache:
            sources += _mirror_sources(candidate.filename, [str(drive_cache)])
        sources += list(candidate.urls)
        try:
            path = download_file(
                sources,
                dest,
                candidate.sha256,
                candidate.size,
                progress=progress,
                session=session,
                hint=hint,
                check=_check_for(candidate),
                full=full,
                **dict(download_options or {}),
            )
        except DownloadError as exc:
            errors.append(exc)
            continue
        if drive_cache:
            _copy_to_drive(path, Path(drive_cache), candidate.sha256)
        if not candidate.sha256:  # the first copy seen here (and on Drive, which outlives a Colab runtime)
            for folder in [dest_dir] + ([Path(drive_cache)] if drive_cache else []):
                if note_first_sha256(folder, path):
                    break
        if candidate is not checkpoint:
            print(
                f"Note: {checkpoint.filename} could not be had; using the open_clip copy of the same OpenAI "
                f"weights ({path.name}), converted when loaded.",
                file=sys.stderr,
            )
        return path
    mismatches = [e for e in errors if isinstance(e, ChecksumMismatchError)]
    raise (mismatches[0] if mismatches else errors[0])


def _copy_to_drive(path: Path, drive: Path, sha256: str | None) -> None:
    """Keep a verified copy on Drive: a damaged one is replaced; a full or broken Drive only warns."""
    target = drive / path.name
    try:
        if is_verified(target, sha256 or file_sha256(path), path.stat().st_size):
            return
        drive.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
    except OSError as exc:
        warnings.warn(
            f"Could not copy {path.name} to the Drive cache {drive} ({exc}). The checkpoint is verified "
            f"locally at {path}, so the run goes on; free space on Drive to have it cached there.",
            stacklevel=3,
        )
