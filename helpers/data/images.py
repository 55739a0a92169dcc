"""A folder of images without labels (what auto-labelling reads): samples with no masks."""

from __future__ import annotations

from pathlib import Path

from .lazy import LazySamples, SampleRef, check_sources, fingerprints, path_text, register_reader
from .types import IMAGE_SUFFIXES, Dataset, DatasetError, Sample, finish, image_files, load_image, path_id


def load_images(
    folder: str | Path,
    classes: list[str] | None = None,
    recursive: bool = False,
    limit: int | None = None,
    check: bool = True,
    progress: bool = False,
) -> Dataset:
    """The images of ``folder`` (sorted; ``recursive``: sub-folders too, hidden ones left out), read on touch, with
    no ground truth; ``classes`` names what is looked for. Image ids are file stems, or with ``recursive`` paths
    relative to the folder without the suffix, "/" between folders (``street/0001``: the exports write
    ``images/street/0001.jpg``). ``limit``: the first ``limit`` image files (by path). ``check`` reads each image
    once now: an unreadable one is skipped and listed in ``Dataset.skipped``, never fatal."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        what = "a file: put it in a folder of its own and pass that" if folder.is_file() else "not a folder"
        raise DatasetError(f"{folder.absolute()} is {what}; pass the folder that holds the images.")
    paths = image_files(folder, recursive)
    if not paths:
        deeper = None if recursive else next(iter(image_files(folder, recursive=True)), None)  # hidden ones left out
        hint = (
            f"; its sub-folders hold images (e.g. {deeper.relative_to(folder).as_posix()}): pass recursive=True "
            "(autolabel --recursive) to read them all, or the folder that holds them"
            if deeper
            else ""
        )
        raise DatasetError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder.absolute()}{hint}.")
    dataset = Dataset(folder.name, LazySamples([]), list(classes or []))
    seen: dict[str, Path] = {}
    for path in paths[:limit] if limit else paths:
        name = path_id(path, folder)  # its stem when directly in the folder
        if name in seen:
            where = path.relative_to(folder).as_posix()
            dataset.skipped.append((where, f"same file name stem as {seen[name].relative_to(folder).as_posix()}"))
            continue
        seen[name] = path
        source = {"image": path_text(path), "name": path.name}
        source["fingerprint"] = fingerprints(source, "image")
        dataset.samples.refs.append(SampleRef(name, "image", str(path.relative_to(folder)), source))
    oriented = dataset.samples.scan(progress) if check else []
    return finish(dataset, strict=False, oriented=oriented)


@register_reader("image")
def read_image_sample(ref: SampleRef) -> tuple[Sample, int]:
    """One unlabelled image, pixels as stored."""
    path = Path(ref.source["image"])
    check_sources(ref.source)
    image, orientation = load_image(path)
    return Sample(ref.image_id, image, {}), orientation
