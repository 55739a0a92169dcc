"""``python -m helpers.checkpoints``: download checkpoints, or re-hash every one in a folder.

Defaults come from the run's settings (``helpers.config.load_config``): the checkpoint folder,
the mirrors, the Drive cache and the run's two models. Errors end in one line, not a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .download import DownloadError, file_sha256, is_verified, set_aside
from .ensure import (
    DEMO_HINT,
    REGISTRY,
    CheckpointError,
    check_clip_state_dict_file,
    ensure_checkpoint,
    note_first_sha256,
)
from .stamps import remember_sha256, sha256_of


def verify_folder(folder: Path) -> list[tuple[Path, str | None]]:
    """Re-hash every known checkpoint present in ``folder``: (path, None) when good, else (path, problem).

    A bad file is moved to ``<file>.corrupt`` so nothing loads it; the next run downloads it again.
    """
    results: list[tuple[Path, str | None]] = []
    seen: set[Path] = set()
    for candidate in [c for ck in list(REGISTRY.values()) for c in (ck, *ck.alternates)]:
        path = Path(folder) / candidate.filename
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        problem = None
        if candidate.sha256:
            if not is_verified(path, candidate.sha256, candidate.size, full=True):
                problem = "size or sha256 differ from the published ones"
        else:
            try:
                if candidate.format == "open_clip":
                    check_clip_state_dict_file(path)
                remember_sha256(path, file_sha256(path, full=True), checked=candidate.format == "open_clip")
            except CheckpointError as exc:
                problem = str(exc)
            else:
                first = note_first_sha256(Path(folder), path)
                problem = f"differs from the first copy seen here (sha256 {first})" if first else None
        if problem:
            problem += f"; moved to {set_aside(path).name}"
        results.append((path, problem))
    return results


def main(argv: list[str] | None = None) -> int:
    """Download (or ``--verify``) checkpoints; defaults from the run's settings; errors without a traceback."""
    import argparse

    from .. import config as run_settings  # the entry point's one arrow up: its defaults are the run's

    run_settings.remember_start_dir()  # relative paths in SAMCLIP_* are read from the folder this command started in
    try:
        config = run_settings.load_config()
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mirrors = list(config.mirrors)
    parser = argparse.ArgumentParser(
        prog="python -m helpers.checkpoints", description="Download and verify SAM / CLIP checkpoints."
    )
    parser.add_argument("names", nargs="*", help=f"any of: {', '.join(REGISTRY)} (default: the run's models)")
    parser.add_argument("--dir", type=Path, default=config.checkpoint_dir, help="checkpoint folder (%(default)s)")
    parser.add_argument("--mirror", action="append", help=f"folder or URL holding the files, repeatable ({mirrors})")
    parser.add_argument(
        "--drive-cache",
        type=Path,
        default=config.drive_cache,
        help="a folder (e.g. on Google Drive) checked first and filled after a download (%(default)s)",
    )
    parser.add_argument("--verify", action="store_true", help="re-hash every checkpoint present in --dir")
    args = parser.parse_args(argv)
    mirrors = args.mirror if args.mirror is not None else mirrors
    names = args.names or ([] if args.verify else [n for n in (config.sam_model, config.clip_model) if n in REGISTRY])
    if config.is_demo and not args.names:
        return _demo_weights(args.dir, args.verify, run_settings.DEMO_SHA256, run_settings.DEMO_WEIGHTS_DIR)
    if config.is_demo and Path(args.dir).resolve() == Path(run_settings.DEMO_WEIGHTS_DIR).resolve():
        # the demo profile's folder is the package's (read-only in many installs): real checkpoints named here go
        # where the full profile reads them
        args.dir = Path(config.root) / "checkpoints"
        print(f"The demo profile's weights ship with the package; {', '.join(names)} go to {args.dir}, where the full "
              "profile reads them (--dir: another folder).")  # fmt: skip
    if not names and not args.verify:
        print(f"Nothing to download for this run's models ({config.sam_model}, {config.clip_model}); name some.")
    bad = 0
    try:
        if args.verify:
            results = verify_folder(args.dir)
            if not results:
                print(f"No known checkpoint in {args.dir}.")
            for path, problem in results:
                print(f"{'BAD' if problem else 'ok '} {path}" + (f": {problem}" if problem else ""))
                bad += problem is not None
        for name in names:
            verify = "full" if args.verify else True
            print(ensure_checkpoint(name, args.dir, mirrors, drive_cache=args.drive_cache, verify=verify))
    except (CheckpointError, DownloadError, OSError) as exc:
        message = str(exc)
        if config.is_demo:  # the hint to try the demo profile, to someone in it already
            message = message.split(DEMO_HINT)[0].rstrip()
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 1 if bad else 0


def _demo_weights(folder: Path, verify: bool, sums: dict[str, str], shipped: Path) -> int:
    """The demo profile downloads nothing: say so, and with ``verify`` check its weights' sha256 now."""
    where = "ship with the package in" if Path(folder).resolve() == Path(shipped).resolve() else "are read from"
    print(
        f"The demo profile downloads nothing (no mirror is read): its weights {where} {folder} and are sha256-checked "
        "on every load." + ("" if verify else " --verify checks them now.")
    )
    if not verify:
        return 0
    bad = 0
    for name, expected in sums.items():
        path = Path(folder) / name
        digest = sha256_of(path) if path.is_file() else None
        if digest == expected:
            print(f"ok  {path}")
        else:
            found = f"sha256 {digest}, expected {expected}" if digest else "missing"
            print(f"BAD {path}: {found} (restore it with git in a checkout, or reinstall the package)")
            bad += 1
    return 1 if bad else 0
