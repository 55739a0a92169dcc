"""Known SAM and CLIP checkpoints and a careful downloader.

A download streams into ``<file>.part`` (resumed with an HTTP Range request after an
interruption), is checked against its size and sha256, and only then renamed into place, so a
file under its final name is always complete. A file that fails its checksum is moved to
``<file>.corrupt`` and never loaded. Sources are tried in order: an explicit local file, the
user's mirrors (``SAMCLIP_MIRROR``), a Google Drive cache on Colab, then the official URLs and
known mirrors; CLIP falls back to the open_clip copy of the OpenAI weights when all are gone.

Command line: ``python -m helpers.checkpoints vit_b ViT-B/32``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests
from tqdm.auto import tqdm

MIRROR_ENV = "SAMCLIP_MIRROR"
LOCAL_ENV = {"sam": "SAMCLIP_SAM_CHECKPOINT", "clip": "SAMCLIP_CLIP_CHECKPOINT"}
DRIVE_CACHE_ENV = "SAMCLIP_DRIVE_CACHE"
DISK_MARGIN_BYTES = 200 * 2**20
CHUNK_BYTES = 2**20


class CheckpointError(RuntimeError):
    """Base class: every message says what to do next."""


class UnknownModelError(CheckpointError, KeyError):
    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class DownloadError(CheckpointError):
    pass


class ChecksumMismatchError(CheckpointError):
    pass


class NotEnoughDiskError(CheckpointError):
    pass


class SourceMissing(Exception):
    """A source answered that it does not have the file (HTTP 404/410, no such local file)."""


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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES * 8), b""):
            digest.update(block)
    return digest.hexdigest()


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def is_verified(path: Path, sha256: str | None, size: int | None = None) -> bool:
    """True when ``path`` exists and matches size and sha256; the hash is remembered in a marker
    file (keyed by size and mtime) so a 2.5 GB file is hashed once, not on every run."""
    path = Path(path)
    if not path.is_file():
        return False
    stat = path.stat()
    if size is not None and stat.st_size != size:
        return False
    if sha256 is None:
        return True
    stamp = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        if json.loads(_marker(path).read_text()) == stamp:
            return True
    except (OSError, ValueError):
        pass
    if sha256_of(path) != sha256:
        return False
    try:
        _marker(path).write_text(json.dumps(stamp))
    except OSError:
        pass  # a read-only folder (e.g. a shared mirror) still verifies, just not remembered
    return True


def _is_local(source: str) -> bool:
    return urlparse(source).scheme in ("", "file") or Path(source).exists()


def _local_path(source: str) -> Path:
    parsed = urlparse(source)
    return Path(parsed.path if parsed.scheme == "file" else source).expanduser()


def _check_disk(folder: Path, needed: int | None) -> None:
    if not needed:
        return
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_MARGIN_BYTES:
        raise NotEnoughDiskError(
            f"Not enough free disk in {folder}: {needed / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free. "
            "Free some space or set SAMCLIP_CHECKPOINT_DIR to a larger disk (on Colab, a Drive folder)."
        )


def _write_stream(chunks, part: Path, mode: str, total: int | None, initial: int, label: str, progress: bool) -> None:
    try:
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=initial,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                disable=not progress,
            ) as bar,
        ):
            for chunk in chunks:
                f.write(chunk)
                bar.update(len(chunk))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NotEnoughDiskError(
                f"The disk filled up while writing {part}. The partial file is kept and the download resumes "
                "once space is free (or set SAMCLIP_CHECKPOINT_DIR to a larger disk)."
            ) from exc
        raise


def _fetch_local(source: str, part: Path, progress: bool) -> None:
    path = _local_path(source)
    if not path.is_file():
        raise SourceMissing(f"no file at {path}")
    _check_disk(part.parent, path.stat().st_size)
    with open(path, "rb") as f:
        _write_stream(iter(lambda: f.read(CHUNK_BYTES), b""), part, "wb", path.stat().st_size, 0, path.name, progress)


def _fetch_http(
    url: str, part: Path, session: requests.Session, size: int | None, progress: bool, timeout: float
) -> None:
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start >= size:
        return  # already complete; the checksum decides
    headers = {"Range": f"bytes={start}-"} if start else {}
    with session.get(url, stream=True, timeout=timeout, headers=headers) as response:
        if response.status_code in (404, 410):
            raise SourceMissing(f"HTTP {response.status_code}")
        if response.status_code == 416 and start:
            return  # the server says the part already holds every byte
        response.raise_for_status()
        if start and response.status_code != 206:
            start = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = size if size is not None else (int(length) + start if length else None)
        _check_disk(part.parent, (total - start) if total else None)
        _write_stream(
            response.iter_content(CHUNK_BYTES),
            part,
            "ab" if start else "wb",
            total,
            start,
            part.name.removesuffix(".part"),
            progress,
        )


def download_file(
    sources: list[str],
    dest: Path,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 30.0,
    session: requests.Session | None = None,
    hint: str = "",
) -> Path:
    """Fetch ``dest`` from the first source that delivers a verified copy.

    ``sources`` are URLs or local paths, tried in order. Interrupted transfers resume from
    ``dest.part`` up to ``retries`` times per source. Returns ``dest``; raises
    ``ChecksumMismatchError``, ``NotEnoughDiskError`` or ``DownloadError`` (with ``hint`` appended).
    """
    dest = Path(dest)
    if is_verified(dest, sha256, size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    corrupt = dest.with_name(dest.name + ".corrupt")
    session = session or requests.Session()
    failures: list[str] = []
    bad_checksum = False
    for source in sources:
        for attempt in range(retries):
            try:
                if _is_local(source):
                    _fetch_local(source, part, progress)
                else:
                    _fetch_http(source, part, session, size, progress, timeout)
            except SourceMissing as exc:
                failures.append(f"{source}: not there ({exc})")
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                # includes a transfer cut off mid-way: resume from the .part file
                failures.append(f"{source}: connection failed on try {attempt + 1} ({type(exc).__name__})")
                continue
            except requests.HTTPError as exc:
                failures.append(f"{source}: {exc}")
                break
            if is_verified(part, sha256, size):
                os.replace(part, dest)
                return dest
            got = part.stat().st_size
            if size is not None and got < size:
                failures.append(f"{source}: stopped at {got} of {size} bytes on try {attempt + 1}")
                continue
            os.replace(part, corrupt)
            bad_checksum = True
            failures.append(f"{source}: checksum mismatch (file kept aside as {corrupt})")
            break
    tried = "\n  ".join(failures) or "no sources"
    if bad_checksum:
        raise ChecksumMismatchError(
            f"{dest.name}: no source delivered a file with the expected sha256 {sha256}.\n  {tried}\n"
            f"The bad download was moved to {corrupt} and is not used. Delete it, check the mirror, and retry.{hint}"
        )
    raise DownloadError(f"Could not download {dest.name} (network down or every source gone?).\n  {tried}{hint}")


def _mirror_sources(filename: str, mirrors: list[str]) -> list[str]:
    sources = []
    for mirror in mirrors:
        if _is_local(mirror):
            sources.append(str(_local_path(mirror) / filename))
        else:
            sources.append(mirror.rstrip("/") + "/" + filename)
    return sources


def supply_hint(checkpoint: Checkpoint, dest_dir: Path) -> str:
    env = LOCAL_ENV[checkpoint.family] if checkpoint.family in LOCAL_ENV else "SAMCLIP_<FAMILY>_CHECKPOINT"
    urls = ", ".join(checkpoint.urls)
    return (
        f"\nTo supply {checkpoint.filename} ({checkpoint.name}) yourself, any one of:\n"
        f"  - download it from {urls} on a machine with internet and copy it to {dest_dir / checkpoint.filename}\n"
        f"  - set {MIRROR_ENV} to a folder or http(s) URL that holds {checkpoint.filename}\n"
        f"  - set {env}=/path/to/{checkpoint.filename}"
    )


def ensure_checkpoint(
    name: str,
    dest_dir: Path,
    mirrors: list[str] | None = None,
    local_path: str | None = None,
    drive_cache: str | Path | None = None,
    progress: bool = True,
    verify: bool = True,
    session: requests.Session | None = None,
) -> Path:
    """Return the path of a verified checkpoint ``name``, downloading it when needed.

    ``local_path`` (or ``SAMCLIP_SAM_CHECKPOINT`` / ``SAMCLIP_CLIP_CHECKPOINT``) names a file to
    use in place; ``verify=False`` accepts it without a checksum (fine-tuned weights).
    ``mirrors`` (or ``SAMCLIP_MIRROR``, space separated) are folders or URLs holding the files.
    ``drive_cache`` (or ``SAMCLIP_DRIVE_CACHE``) is a folder checked first and filled after a
    download, e.g. a Google Drive folder on Colab.
    """
    checkpoint = get_checkpoint(name)
    dest_dir = Path(dest_dir)
    local_path = local_path or os.environ.get(LOCAL_ENV.get(checkpoint.family, ""), "") or None
    if local_path:
        path = _local_path(local_path)
        if not path.is_file():
            raise CheckpointError(
                f"{LOCAL_ENV.get(checkpoint.family)} / local_path points to {path}, which is "
                f"not a file. Fix the path or unset it to download."
            )
        if verify and not is_verified(path, checkpoint.sha256, checkpoint.size):
            raise ChecksumMismatchError(
                f"{path} is not the official {checkpoint.name} checkpoint (size or sha256 differ). "
                "Pass verify=False to use your own weights on purpose, or supply the official file."
            )
        return path
    if mirrors is None:
        mirrors = os.environ.get(MIRROR_ENV, "").split()
    drive_cache = drive_cache or os.environ.get(DRIVE_CACHE_ENV) or None
    hint = supply_hint(checkpoint, dest_dir)
    errors: list[CheckpointError] = []
    for candidate in (checkpoint, *checkpoint.alternates):
        dest = dest_dir / candidate.filename
        sources = _mirror_sources(candidate.filename, mirrors)
        if drive_cache:
            sources += _mirror_sources(candidate.filename, [str(drive_cache)])
        sources += list(candidate.urls)
        try:
            path = download_file(
                sources, dest, candidate.sha256, candidate.size, progress=progress, session=session, hint=hint
            )
        except (DownloadError, ChecksumMismatchError) as exc:
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
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
