"""Known SAM and CLIP checkpoints (a registry with sizes and sha256) and how to get them.

Sources are tried in order: an explicit local file, the user's mirrors, a Google Drive cache
on Colab, then the official URLs and known mirrors; CLIP falls back to the open_clip copy of
the OpenAI weights when all are gone. Downloads go through ``helpers.download``.

Command line: ``python -m helpers.checkpoints vit_b ViT-B/32``.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import requests

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

__all__ = [
    "ChecksumMismatchError",
    "DownloadError",
    "NotEnoughDiskError",
    "download_file",
    "file_sha256",
    "sha256_of",
    "is_verified",
]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; every message says what to do next."""


class UnknownModelError(CheckpointError, KeyError):
    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class Checkpoint:
    """One weight file: where it comes from and how to recognise it."""

    name: str
    family: str  # "sam" or "clip"
    filename: str
    sha256: str | None
    size: int | None
    urls: tuple[str, ...]
    format: str  # "sam" (state dict), "openai" (OpenAI TorchScript archive), "open_clip" (state dict)
    alternates: tuple["Checkpoint", ...] = field(default=(), compare=False)


_META = "https://dl.fbaipublicfiles.com/segment_anything/"
_HF_SAM = "https://huggingface.co/ybelkada/segment-anything/resolve/main/checkpoints/"
_SAM = {  # name: (file, bytes, sha256)
    "vit_h": (
        "sam_vit_h_4b8939.pth",
        2_564_550_879,
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "vit_l": (
        "sam_vit_l_0b3195.pth",
        1_249_524_607,
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_b": ("sam_vit_b_01ec64.pth", 375_042_383, "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
}
_OPENAI = "https://openaipublic.azureedge.net/clip/models/"
_CLIP = {  # name: (sha256, file, bytes or None, timm hub id of the open_clip copy)
    "RN50": (
        "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
        "RN50.pt",
        None,
        "resnet50_clip.openai",
    ),
    "RN101": (
        "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599",
        "RN101.pt",
        None,
        "resnet101_clip.openai",
    ),
    "RN50x4": (
        "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd",
        "RN50x4.pt",
        None,
        "resnet50x4_clip.openai",
    ),
    "RN50x16": (
        "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa",
        "RN50x16.pt",
        None,
        "resnet50x16_clip.openai",
    ),
    "RN50x64": (
        "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c",
        "RN50x64.pt",
        None,
        "resnet50x64_clip.openai",
    ),
    "ViT-B/32": (
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        "ViT-B-32.pt",
        353_976_522,
        "vit_base_patch32_clip_224.openai",
    ),
    "ViT-B/16": (
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        "ViT-B-16.pt",
        None,
        "vit_base_patch16_clip_224.openai",
    ),
    "ViT-L/14": (
        "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
        "ViT-L-14.pt",
        None,
        "vit_large_patch14_clip_224.openai",
    ),
    "ViT-L/14@336px": (
        "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
        "ViT-L-14-336px.pt",
        None,
        "vit_large_patch14_clip_336.openai",
    ),
}


def _build_registry() -> dict[str, Checkpoint]:
    registry = {
        name: Checkpoint(name, "sam", file, sha, size, (_META + file, _HF_SAM + file), "sam")
        for name, (file, size, sha) in _SAM.items()
    }
    for name, (sha, file, size, hub) in _CLIP.items():
        # The open_clip copy holds the same OpenAI weights under the key names that
        # clip.model.build_model expects; its checksum is not published, so it is checked by
        # structure when loaded (helpers.models.load_clip).
        open_clip_copy = Checkpoint(
            name,
            "clip",
            file.replace(".pt", ".open_clip.bin"),
            None,
            None,
            (f"https://huggingface.co/timm/{hub}/resolve/main/open_clip_pytorch_model.bin",),
            "open_clip",
        )
        registry[name] = Checkpoint(
            name, "clip", file, sha, size, (f"{_OPENAI}{sha}/{file}",), "openai", alternates=(open_clip_copy,)
        )
    return registry


REGISTRY: dict[str, Checkpoint] = _build_registry()


def register_checkpoint(checkpoint: Checkpoint) -> None:
    """Add a checkpoint (fine-tuned weights, test models) to the registry."""
    REGISTRY[checkpoint.name] = checkpoint


def get_checkpoint(name: str) -> Checkpoint:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownModelError(f"Unknown model name {name!r}. Known checkpoints: {known}.") from None


def _mirror_sources(filename: str, mirrors: list[str]) -> list[str]:
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
    setting = LOCAL_SETTING.get(checkpoint.family, "SAMCLIP_<FAMILY>_CHECKPOINT")
    urls = ", ".join(checkpoint.urls)
    return (
        f"\nTo supply {checkpoint.filename} ({checkpoint.name}) yourself, any one of:\n"
        f"  - download it from {urls} on a machine with internet and copy it to {dest_dir / checkpoint.filename}\n"
        f"  - set {MIRROR_SETTING} to a folder or http(s) URL that holds {checkpoint.filename}\n"
        f"  - set {setting}=/path/to/{checkpoint.filename}"
    )


def ensure_checkpoint(
    name: str,
    dest_dir: Path,
    mirrors: Sequence[str] = (),
    local_path: str | Path | None = None,
    drive_cache: str | Path | None = None,
    progress: bool = True,
    verify: bool = True,
    session: requests.Session | None = None,
) -> Path:
    """Return the path of a verified checkpoint ``name``, downloading it when needed.

    ``local_path`` names a file to use in place; ``verify=False`` accepts it without a checksum
    (fine-tuned weights). ``mirrors`` are folders or URLs holding the files. ``drive_cache`` is a
    folder checked first and filled after a download, e.g. a Google Drive folder on Colab.
    ``helpers.config.RunConfig`` holds the run's values of all three.
    """
    checkpoint = get_checkpoint(name)
    dest_dir = Path(dest_dir)
    if local_path:
        path = local_path_of(str(local_path)).resolve()
        if not path.is_file():
            raise CheckpointError(
                f"{LOCAL_SETTING.get(checkpoint.family)} / local_path points to {path}, which is "
                f"not a file. Fix the path or unset it to download."
            )
        if verify and not is_verified(path, checkpoint.sha256, checkpoint.size):
            raise ChecksumMismatchError(
                f"{path} is not the official {checkpoint.name} checkpoint (size or sha256 differ). "
                "Pass verify=False to use your own weights on purpose, or supply the official file."
            )
        return path
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
                sources, dest, candidate.sha256, candidate.size, progress=progress, session=session, hint=hint
            )
        except DownloadError as exc:
            errors.append(exc)
            continue
        if drive_cache:
            _copy_to_cache(path, Path(drive_cache))
        if candidate is not checkpoint:
            print(
                f"Note: {checkpoint.filename} could not be had; using the open_clip copy of the same OpenAI "
                f"weights ({path.name}), converted when loaded.",
                file=sys.stderr,
            )
        return path
    mismatches = [e for e in errors if isinstance(e, ChecksumMismatchError)]
    raise (mismatches[0] if mismatches else errors[0])


def _copy_to_cache(path: Path, cache: Path) -> None:
    target = cache / path.name
    if target.exists() and target.stat().st_size == path.stat().st_size:
        return
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    shutil.copyfile(path, tmp)
    os.replace(tmp, target)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Download and verify SAM / CLIP checkpoints.")
    parser.add_argument("names", nargs="+", help=f"any of: {', '.join(REGISTRY)}")
    parser.add_argument("--dir", default="checkpoints", help="destination folder")
    args = parser.parse_args(argv)
    try:
        for name in args.names:
            print(ensure_checkpoint(name, Path(args.dir)))
    except (CheckpointError, DownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
