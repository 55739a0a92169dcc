"""A folder of one's own label maps, its ids named by a ``classes.txt`` (``SAMCLIP_DATASET=labelmaps``)."""

from __future__ import annotations

import re
from pathlib import Path

from .label_maps import MASK_SUFFIXES, UNNAMED, ids_outside, load_semantic_folder, read_label_map
from .lazy import fingerprints, path_text
from .types import Dataset, DatasetError

CLASS_FILE = "classes.txt"
MASK_FOLDERS = (
    "labels",
    "masks",
    "annotations",
    "gt_semantic_2d/render_semantic_npy",
    "gt_semantic_2d/render_semantic",
)
IGNORE_NAMES = ("ignore", "void")  # a class named so in classes.txt: its pixels are left out of the evaluation


_COMMENT = re.compile(r"(^|\s)#.*")  # '#' at the start of a line or after a space: 'C#' stays a name
_ID_NAME = re.compile(r"(-?[0-9]+)(?:\s*[:=,]\s*|\s+)(\S.*)")  # '5 car', '5: car', '5,car', '-1 void'


def read_class_names(path: str | Path) -> tuple[dict[int, str], tuple[int, ...]]:
    """The class table of a ``classes.txt``: one class per line, either ``<name>`` (ids 0, 1, 2, ... in the order
    of the lines) or ``<id> <name>`` on every line (``255 void``; ``5: car`` and ``5,car`` too); blank lines and
    ``#`` comments skipped, runs of spaces in a name made one. Returns ({id: name}, the ids of classes named
    ``ignore`` or ``void``, whose pixels are left out of the scores)."""
    path = Path(path)
    fix = (
        f"Write one class per line in {path.absolute()} (UTF-8): its name (ids 0, 1, 2, ... in order), or "
        "'<id> <name>' on every line (e.g. '0 background', '255 void'); name a class 'ignore' or 'void' to leave "
        "its pixels out."
    )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(
            f"No {path.name} in {path.parent.absolute()}: the label maps' ids need names. {fix}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Cannot read {path.absolute()} ({exc}). {fix}") from exc
    lines = [(n, _COMMENT.sub("", line).strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line]
    for n, line in lines:
        if re.fullmatch(r"-?[0-9]+", line):
            raise DatasetError(f"{path.absolute()} line {n}: the id {line} has no name. {fix}")
    matches = [_ID_NAME.fullmatch(line) for _, line in lines]
    with_id = sum(m is not None for m in matches)
    if 0 < with_id < len(lines):  # the odd line out: an id among names, or a name among ids
        odd = next(i for i, m in enumerate(matches) if (m is None) == (2 * with_id >= len(lines)))
        what = "has no id, unlike the other lines" if matches[odd] is None else "starts with an id, unlike the others"
        raise DatasetError(f"{path.absolute()} line {lines[odd][0]}: '{lines[odd][1]}' {what}. {fix}")
    table: dict[int, str] = {}
    seen: dict[str, int] = {}
    for (n, line), match in zip(lines, matches):
        class_id, name = (int(match[1]), match[2]) if match else (len(table), line)
        name = " ".join(name.split())
        folded = name.casefold()
        if class_id in table or (folded in seen and folded not in IGNORE_NAMES):
            twice = f"id {class_id}" if class_id in table else f"{name!r} (line {seen[folded]} names it too)"
            raise DatasetError(f"{path.absolute()} line {n}: {twice} is named twice. {fix}")
        table[class_id], seen[folded] = name, n
    if not table:
        raise DatasetError(f"{path.absolute()} names no class. {fix}")
    ignored = tuple(i for i, name in table.items() if name.casefold() in IGNORE_NAMES)
    if len(ignored) == len(table):
        raise DatasetError(f"{path.absolute()} names only classes left out of the scores (void / ignore). {fix}")
    return table, ignored


def _unnamed_ids(masks: Path, table: dict[int, str]) -> tuple[list[int], str]:
    """The class ids in the label maps of ``masks`` that ``table`` does not name, and a file that holds one (read
    only when loading failed on them: every map is read)."""
    ids: set[int] = set()
    example = ""
    for path in sorted(masks.iterdir()):
        if path.suffix.lower() not in MASK_SUFFIXES:
            continue
        try:
            labels, _ = read_label_map(path, sorted(table))
        except DatasetError:
            continue  # an unreadable map is reported as such by the reader
        found = ids_outside(labels, table)
        if found and not example:
            example = path.name
        ids.update(found)
    return sorted(ids), example


def _mask_folder(root: Path) -> Path | None:
    """The first of ``MASK_FOLDERS`` under ``root`` holding a label map (a file with a mask suffix)."""
    for name in MASK_FOLDERS:
        folder = root / name
        if folder.is_dir() and any(p.suffix.lower() in MASK_SUFFIXES for p in folder.iterdir()):
            return folder
    return None


def load_label_map_folder(
    root: str | Path, classes: list[str] | None = None, limit: int | None = None, check: bool = True
) -> Dataset:
    """A folder of images with label maps, named by a ``classes.txt`` (``read_class_names``): ``images/`` and the
    first of ``labels/``, ``masks/``, ``annotations/`` or the coursework's ``gt_semantic_2d/render_semantic_npy``
    (or ``render_semantic``) that holds label maps; an image and its map share the file stem
    (``load_semantic_folder``). A class id in a map that ``classes.txt`` does not name is an error that says so;
    ``classes.txt`` is recorded with each sample (its sha256), so that a prepared set notices an edit."""
    root = Path(root).expanduser().absolute()
    layout = (
        f"{root} should hold images/, label maps with the images' file stems in one of "
        f"{', '.join(f + '/' for f in MASK_FOLDERS)} ({', '.join(MASK_SUFFIXES)}), and {CLASS_FILE}"
    )
    if not (root / "images").is_dir():
        raise DatasetError(f"No images/ folder in {root}: {layout}.")
    masks = _mask_folder(root)
    if masks is None:
        raise DatasetError(f"No label maps in {root}: {layout}.")
    table, ignore_ids = read_class_names(root / CLASS_FILE)
    ignored = {table[i].casefold() for i in ignore_ids}
    left_out = [c for c in classes or [] if c.casefold() in ignored]
    if left_out:
        raise DatasetError(
            f"{', '.join(left_out)}: named void or ignore in {root / CLASS_FILE}, so its pixels are left out of the "
            "scores, not a class to look for. Ask for another class, or rename it there."
        )

    def unnamed() -> DatasetError | None:
        """The ids the maps hold that ``classes.txt`` does not name, all of them in one error (None: none)."""
        ids, example = _unnamed_ids(masks, table)
        if not ids:
            return None
        return DatasetError(
            f"The label maps in {masks} hold class id(s) {ids} (e.g. {example}) that {root / CLASS_FILE} does not "
            f"name: add a line for each ('<id> <name>', e.g. '{ids[0]} void' to leave its pixels out; a file of names "
            "alone numbers them from 0, so use '<id> <name>' lines for other ids)."
        )

    try:
        dataset = load_semantic_folder(
            root / "images", masks, table, ignore_ids, classes=classes, limit=limit, name=root.name, check=check
        )
    except DatasetError as exc:  # nothing left: say so when unnamed ids are why, whatever else was skipped first
        raise (unnamed() or exc) from exc
    if any(UNNAMED in reason for _, reason in dataset.skipped):
        raise unnamed() or DatasetError(next(reason for _, reason in dataset.skipped if UNNAMED in reason))
    # the names are part of each sample: classes.txt's fingerprint (read once) joins each one's, so an edit is noticed
    named = {"classes_file": path_text(root / CLASS_FILE)}
    recorded = fingerprints(named, hashed=("classes_file",))
    for ref in dataset.samples.refs:
        ref.source.update(named)
        ref.source["fingerprint"] = {**ref.source["fingerprint"], **recorded}
    return dataset
