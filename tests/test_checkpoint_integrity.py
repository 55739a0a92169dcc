"""Issues 10 and 11: checkpoints without a published checksum, re-verification, the Drive copy, the command line."""

import errno
import hashlib
import io
import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from helpers.checkpoints import cli
from helpers.checkpoints import ensure as ck
from helpers.checkpoints.ensure import (
    Checkpoint,
    CheckpointError,
    ChecksumMismatchError,
    check_clip_state_dict_file,
    ensure_checkpoint,
    register_checkpoint,
)
from helpers.models import loading as models

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"backoff": 0.0}


def register_clip(server, name: str, copy_urls: list[str]) -> Checkpoint:
    """A CLIP entry whose official archive is gone (404) and whose open_clip copy comes from ``copy_urls``."""
    copy = Checkpoint(
        name, "clip", f"{name}.open_clip.bin", None, None, tuple(server.url + u for u in copy_urls), "open_clip"
    )
    checkpoint = Checkpoint(
        name, "clip", f"{name}.pt", SHA, len(PAYLOAD), (server.url + "/gone.pt",), "openai", (copy,)
    )
    register_checkpoint(checkpoint)
    return checkpoint


def changed_copy(open_clip_bytes: bytes) -> bytes:
    """A different file that still passes the structure check (one value changed)."""
    state = torch.load(io.BytesIO(open_clip_bytes), weights_only=True)
    state["module.logit_scale"] = state["module.logit_scale"] + 1
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def get(name, folder, **options):
    return ensure_checkpoint(name, folder, progress=False, **{"download_options": FAST, **options})


def test_open_clip_copy_must_be_a_whole_clip_state_dict(file_server, tmp_path, open_clip_bytes, capsys):
    buffer_path = tmp_path / "other.bin"
    torch.save({"weight": torch.zeros(3)}, buffer_path)
    file_server.html.add("/html.bin")  # an error page with 200
    file_server.files["/half.bin"] = open_clip_bytes
    file_server.cuts["/half.bin"] = [len(open_clip_bytes) // 2, 0, 0]  # half a body, then nothing more
    file_server.files["/other.bin"] = buffer_path.read_bytes()  # a torch archive, but not CLIP
    file_server.files["/good.bin"] = open_clip_bytes
    register_clip(file_server, "t_oc", ["/html.bin", "/half.bin", "/other.bin", "/good.bin"])
    path = get("t_oc", tmp_path / "ck", download_options={**FAST, "max_attempts": 2})
    assert path.read_bytes() == open_clip_bytes
    assert "open_clip copy" in capsys.readouterr().err
    assert not (tmp_path / "ck" / "t_oc.open_clip.bin.part").exists()


def test_open_clip_copy_alone_failing_is_a_clear_error(file_server, tmp_path):
    file_server.files["/junk.bin"] = b"PK but not really a zip" * 100
    register_clip(file_server, "t_junk", ["/junk.bin"])
    with pytest.raises(ChecksumMismatchError, match="not a zip/torch archive") as info:
        get("t_junk", tmp_path)
    assert "t_junk.open_clip.bin" in str(info.value)  # the hint names the open_clip file
    assert not (tmp_path / "t_junk.open_clip.bin").exists()


def test_a_bad_open_clip_file_already_in_place_is_replaced(file_server, tmp_path, open_clip_bytes):
    (tmp_path / "t_old.open_clip.bin").write_bytes(b"<html>an error page kept by an older version</html>")
    ck.file_sha256(tmp_path / "t_old.open_clip.bin")  # hashed for a cache key: a stamp, but not a check
    file_server.files["/good.bin"] = open_clip_bytes
    register_clip(file_server, "t_old", ["/good.bin"])
    assert get("t_old", tmp_path).read_bytes() == open_clip_bytes
    assert (tmp_path / "t_old.open_clip.bin.corrupt").exists()


def test_first_open_clip_sha256_is_recorded_and_a_later_different_copy_warns(file_server, tmp_path, open_clip_bytes):
    file_server.files["/good.bin"] = open_clip_bytes
    register_clip(file_server, "t_first", ["/good.bin"])
    path = get("t_first", tmp_path)
    recorded = json.loads((tmp_path / ck.FIRST_SEEN).read_text())
    assert recorded == {"t_first.open_clip.bin": hashlib.sha256(open_clip_bytes).hexdigest()}
    path.unlink()
    file_server.files["/good.bin"] = changed_copy(open_clip_bytes)
    with pytest.warns(UserWarning, match="differs from the first copy"):
        get("t_first", tmp_path)


def test_the_first_open_clip_sha256_is_kept_on_drive_for_the_next_runtime(file_server, tmp_path, open_clip_bytes):
    file_server.files["/good.bin"] = open_clip_bytes
    register_clip(file_server, "t_drv", ["/good.bin"])
    drive = tmp_path / "drive"
    get("t_drv", tmp_path / "runtime1", drive_cache=drive)
    (drive / "t_drv.open_clip.bin").write_bytes(changed_copy(open_clip_bytes))  # the Drive copy changes
    with pytest.warns(UserWarning, match="differs from the first copy"):
        get("t_drv", tmp_path / "runtime2", drive_cache=drive)  # a fresh runtime: only Drive remembers


def test_structure_check_and_key_conversion_live_in_checkpoints(tmp_path, open_clip_bytes):
    assert models.open_clip_to_clip_state_dict is ck.open_clip_to_clip_state_dict
    (tmp_path / "oc.bin").write_bytes(open_clip_bytes)
    check_clip_state_dict_file(tmp_path / "oc.bin")
    (tmp_path / "cut.bin").write_bytes(open_clip_bytes[: len(open_clip_bytes) // 2])
    with pytest.raises(CheckpointError, match="zip"):
        check_clip_state_dict_file(tmp_path / "cut.bin")


def test_verify_full_and_the_verify_command_rehash(tmp_path, capsys):
    register_checkpoint(Checkpoint("t_flip", "sam", "flip.pth", SHA, len(PAYLOAD), ("http://127.0.0.1:9/x",), "sam"))
    path = tmp_path / "flip.pth"
    path.write_bytes(PAYLOAD)
    assert ensure_checkpoint("t_flip", tmp_path, progress=False) == path  # stamped
    stamp = json.loads((tmp_path / "flip.pth.verified.json").read_text())
    flipped = bytearray(PAYLOAD)
    flipped[100] ^= 1
    path.write_bytes(bytes(flipped))
    st = path.stat()
    # a stamp that matches the damaged file (as if its ctime had not moved): only a full re-hash sees the flip
    stamp.update(mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, size=st.st_size)
    (tmp_path / "flip.pth.verified.json").write_text(json.dumps(stamp))
    assert ensure_checkpoint("t_flip", tmp_path, progress=False) == path
    with pytest.raises(ck.DownloadError):  # re-hashed: the damaged file is not accepted, and cannot be fetched
        get("t_flip", tmp_path, verify="full", download_options={**FAST, "retries": 1})
    with pytest.raises(ValueError, match="verify="):
        ensure_checkpoint("t_flip", tmp_path, progress=False, verify="yes")
    assert cli.main(["--verify", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "BAD" in out and "flip.pth" in out and "moved to flip.pth.corrupt" in out
    assert not path.exists() and (tmp_path / "flip.pth.corrupt").exists()
    path.write_bytes(PAYLOAD)
    assert cli.main(["--verify", "--dir", str(tmp_path)]) == 0
    assert ensure_checkpoint("t_flip", tmp_path, progress=False, verify="full") == path


def test_a_full_drive_only_warns(file_server, tmp_path, monkeypatch):
    file_server.files["/d.pth"] = PAYLOAD
    register_checkpoint(Checkpoint("t_dfull", "sam", "d.pth", SHA, len(PAYLOAD), (file_server.url + "/d.pth",), "sam"))

    def full_drive(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(ck.shutil, "copyfile", full_drive)
    with pytest.warns(UserWarning, match="Drive cache.*verified locally"):
        path = get("t_dfull", tmp_path / "local", drive_cache=tmp_path / "drive")
    assert path.read_bytes() == PAYLOAD
    assert not [p for p in (tmp_path / "drive").glob("*")]  # no partial copy left behind


def test_a_corrupt_drive_copy_is_replaced_once_and_not_used(file_server, tmp_path, monkeypatch):
    file_server.files["/d.pth"] = PAYLOAD
    register_checkpoint(Checkpoint("t_dbad", "sam", "d2.pth", SHA, len(PAYLOAD), (file_server.url + "/d.pth",), "sam"))
    drive = tmp_path / "drive"
    drive.mkdir()
    damaged = bytearray(PAYLOAD)
    damaged[5] ^= 0xFF
    (drive / "d2.pth").write_bytes(bytes(damaged))  # same size, one byte off
    copies = []
    real_copy = shutil.copyfile
    monkeypatch.setattr(ck.shutil, "copyfile", lambda a, b: copies.append(b) or real_copy(a, b))
    path = get("t_dbad", tmp_path / "a", drive_cache=drive)
    assert path.read_bytes() == PAYLOAD and (drive / "d2.pth").read_bytes() == PAYLOAD
    assert ("/d.pth", None) in file_server.log  # the damaged Drive copy was not used
    for folder in ("a", "b"):  # later runs, on this machine and on a fresh one, copy nothing
        assert get("t_dbad", tmp_path / folder, drive_cache=drive).read_bytes() == PAYLOAD
    assert len(copies) == 1


def test_the_open_clip_copy_is_accepted_as_a_local_clip_file(file_server, tmp_path, open_clip_bytes, capsys):
    register_clip(file_server, "t_local", ["/x.bin"])
    mine = tmp_path / "ViT-B-32.open_clip.bin"
    mine.write_bytes(open_clip_bytes)
    assert ensure_checkpoint("t_local", tmp_path / "ck", local_path=mine) == mine
    assert "holds CLIP's state dict" in capsys.readouterr().err
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(ChecksumMismatchError, match="nor the open_clip copy"):
        ensure_checkpoint("t_local", tmp_path / "ck", local_path=tmp_path / "junk.bin")


def test_supply_hint_names_the_open_clip_file(tmp_path):
    hint = ck.supply_hint(ck.REGISTRY["ViT-B/32"], tmp_path)
    assert "ViT-B-32.open_clip.bin" in hint and "ViT-B-32.pt" in hint
    assert "make demo" in hint  # the offline newcomer's next step


def test_command_line_takes_its_defaults_from_the_run_settings(file_server, tmp_path, monkeypatch, capsys):
    file_server.files["/mirror/cfg.pth"] = PAYLOAD
    official = (file_server.url + "/nothing",)
    register_checkpoint(Checkpoint("t_cfg", "sam", "cfg.pth", SHA, len(PAYLOAD), official, "sam"))
    config = SimpleNamespace(
        checkpoint_dir=tmp_path / "from_config",
        mirrors=(file_server.url + "/mirror",),
        drive_cache=tmp_path / "drive",
        sam_model="t_cfg",
        clip_model="clip_tiny",  # not in the registry: nothing to fetch
        is_demo=False,
    )
    monkeypatch.setattr("helpers.config.load_config", lambda: config)
    assert cli.main([]) == 0
    assert (tmp_path / "from_config" / "cfg.pth").read_bytes() == PAYLOAD
    assert (tmp_path / "drive" / "cfg.pth").read_bytes() == PAYLOAD
    # explicit arguments win over the settings
    assert cli.main(["t_cfg", "--dir", str(tmp_path / "explicit"), "--mirror", file_server.url + "/mirror"]) == 0
    assert (tmp_path / "explicit" / "cfg.pth").is_file()
    file_server.files.clear()
    shutil.rmtree(tmp_path / "drive")
    assert cli.main(["t_cfg", "--dir", str(tmp_path / "none"), "--mirror", file_server.url + "/gone"]) == 1
    assert "error:" in capsys.readouterr().err


def test_the_demo_profile_downloads_nothing_and_verifies_its_shipped_weights(tmp_path, monkeypatch, capsys):
    """In the demo profile the command said "No known checkpoint in .../helpers/demo/weights": it now says the weights
    ship with the package, and --verify checks their sha256 (a damaged copy is named, rc 1)."""
    import shutil as sh

    from helpers.config import DEMO_WEIGHTS_DIR

    monkeypatch.setenv("SAMCLIP_PROFILE", "demo")
    assert cli.main([]) == 0 and "downloads nothing" in capsys.readouterr().out
    assert cli.main(["--verify"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("ok  ") == 2 and "sam_demo.pth" in printed and "clip_demo.pt" in printed
    for name in ("sam_demo.pth", "clip_demo.pt"):
        sh.copyfile(DEMO_WEIGHTS_DIR / name, tmp_path / name)
    with open(tmp_path / "clip_demo.pt", "r+b") as f:
        f.write(b"x")
    assert cli.main(["--verify", "--dir", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert "ok  " in printed and "BAD " in printed and "clip_demo.pt" in printed.split("BAD ")[1]


def test_a_checkpoint_named_in_the_demo_profile_is_not_written_into_the_package(
    file_server, tmp_path, monkeypatch, capsys
):
    """``SAMCLIP_PROFILE=demo python -m helpers.checkpoints vit_b`` downloaded into the demo weights' folder, which is
    the package's (and left a ``.lock`` there): a named checkpoint now goes where the full profile reads it."""
    from helpers.config import DEMO_WEIGHTS_DIR

    file_server.files["/mirror/demo_named.pth"] = PAYLOAD
    register_checkpoint(Checkpoint("t_demo_named", "sam", "demo_named.pth", SHA, len(PAYLOAD), (), "sam"))
    monkeypatch.setenv("SAMCLIP_PROFILE", "demo")
    monkeypatch.setenv("SAMCLIP_HOME", str(tmp_path))
    before = sorted(p.name for p in DEMO_WEIGHTS_DIR.iterdir())
    assert cli.main(["t_demo_named", "--mirror", file_server.url + "/mirror"]) == 0
    assert (tmp_path / "checkpoints" / "demo_named.pth").read_bytes() == PAYLOAD
    assert sorted(p.name for p in DEMO_WEIGHTS_DIR.iterdir()) == before  # nothing written there, no .lock either
    assert cli.main(["t_demo_named", "--dir", str(tmp_path / "mine"), "--mirror", file_server.url + "/mirror"]) == 0
    assert (tmp_path / "mine" / "demo_named.pth").is_file()  # an explicit --dir still wins
    args = ["t_demo_named", "--dir", str(tmp_path / "none"), "--mirror", file_server.url + "/gone"]
    assert cli.main(args) == 1  # a failed download: its hint, without "try the demo profile" to someone in it
    err = capsys.readouterr().err
    assert "error:" in err and "yourself, any one of" in err and "No internet at all?" not in err
    monkeypatch.setenv("SAMCLIP_PROFILE", "full")
    assert cli.main(args) == 1 and "No internet at all? SAMCLIP_PROFILE=demo" in capsys.readouterr().err
