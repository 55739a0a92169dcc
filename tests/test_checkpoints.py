import hashlib
import os
import shutil
from collections import namedtuple

import pytest

from helpers.checkpoints import cli
from helpers.checkpoints import download as dl
from helpers.checkpoints import ensure as ck
from helpers.checkpoints.ensure import (
    Checkpoint,
    ChecksumMismatchError,
    DownloadError,
    NotEnoughDiskError,
    UnknownModelError,
    download_file,
    ensure_checkpoint,
    register_checkpoint,
)

PAYLOAD = os.urandom(3 * dl.CHUNK_BYTES + 12345)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_registry_holds_the_published_checksums():
    assert ck.REGISTRY["vit_h"].sha256 == "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"
    assert ck.REGISTRY["vit_b"].size == 375_042_383
    assert ck.REGISTRY["ViT-B/32"].sha256 == "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
    import clip

    for name in clip.available_models():  # every model clip knows is in the registry, with its sha
        assert ck.REGISTRY[name].sha256 in clip.clip._MODELS[name]
        assert ck.REGISTRY[name].alternates[0].format == "open_clip"


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="vit_b.*") as info:
        ck.get_checkpoint("vit_x")
    assert "vit_h" in str(info.value) and "ViT-B/32" in str(info.value)


def test_fresh_download(file_server, tmp_path):
    file_server.files["/m.pth"] = PAYLOAD
    dest = download_file([file_server.url + "/m.pth"], tmp_path / "m.pth", SHA, len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "m.pth.part").exists()


def test_resume_after_interrupted_transfer(file_server, tmp_path):
    file_server.files["/m.pth"] = PAYLOAD
    file_server.cut_once["/m.pth"] = dl.CHUNK_BYTES + 7
    dest = download_file([file_server.url + "/m.pth"], tmp_path / "m.pth", SHA, len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert file_server.log[0] == ("/m.pth", None)
    path, header = file_server.log[1]
    resumed_at = int(header.removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= dl.CHUNK_BYTES + 7  # resumed from the bytes kept, not restarted


def test_resume_of_a_part_left_by_an_earlier_session(file_server, tmp_path):
    file_server.files["/m.pth"] = PAYLOAD
    file_server.cut_once["/m.pth"] = 1000
    url = file_server.url + "/m.pth"
    with pytest.raises(DownloadError, match="stopped at 1000|connection failed"):  # the earlier session ends
        download_file([url], tmp_path / "m.pth", SHA, len(PAYLOAD), progress=False, max_attempts=1)
    assert (tmp_path / "m.pth.part").stat().st_size == 1000
    download_file([url], tmp_path / "m.pth", SHA, len(PAYLOAD), progress=False)
    assert file_server.log == [("/m.pth", None), ("/m.pth", "bytes=1000-")]
    assert (tmp_path / "m.pth").read_bytes() == PAYLOAD


def test_checksum_mismatch_keeps_the_bad_file_aside(file_server, tmp_path):
    file_server.files["/m.pth"] = WRONG = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1])  # one bit off
    with pytest.raises(ChecksumMismatchError, match="m.pth.corrupt"):
        download_file([file_server.url + "/m.pth"], tmp_path / "m.pth", SHA, len(PAYLOAD), progress=False)
    assert not (tmp_path / "m.pth").exists()
    assert (tmp_path / "m.pth.corrupt").read_bytes() == WRONG


def test_404_falls_back_to_the_next_source(file_server, tmp_path):
    file_server.files["/mirror/m.pth"] = PAYLOAD
    sources = [file_server.url + "/gone/m.pth", file_server.url + "/mirror/m.pth"]
    download_file(sources, tmp_path / "m.pth", SHA, len(PAYLOAD), progress=False)
    assert [path for path, _ in file_server.log] == ["/gone/m.pth", "/mirror/m.pth"]
    assert (tmp_path / "m.pth").read_bytes() == PAYLOAD


def test_every_source_gone_says_how_to_supply_the_file(file_server, tmp_path):
    register_checkpoint(Checkpoint("test_gone", "sam", "gone.pth", SHA, len(PAYLOAD), (file_server.url + "/x",), "sam"))
    with pytest.raises(DownloadError) as info:
        ensure_checkpoint("test_gone", tmp_path, mirrors=[], progress=False)
    message = str(info.value)
    assert "HTTP 404" in message and "SAMCLIP_MIRROR" in message and "SAMCLIP_SAM_CHECKPOINT" in message


def test_no_network_is_a_download_error(tmp_path):
    # port 9 on loopback: nothing listens, the connection is refused at once
    with pytest.raises(DownloadError, match="connection failed"):
        download_file(["http://127.0.0.1:9/m.pth"], tmp_path / "m.pth", SHA, len(PAYLOAD), progress=False, retries=1)


def test_local_path_source_and_local_mirror_folder(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "local.pth").write_bytes(PAYLOAD)
    register_checkpoint(
        Checkpoint("test_local", "sam", "local.pth", SHA, len(PAYLOAD), ("http://127.0.0.1:9/x",), "sam")
    )
    path = ensure_checkpoint("test_local", tmp_path / "ck", mirrors=[str(mirror)], progress=False)
    assert path == tmp_path / "ck" / "local.pth" and path.read_bytes() == PAYLOAD
    # an explicit file is used in place, after verification
    assert (
        ensure_checkpoint("test_local", tmp_path / "other", local_path=str(mirror / "local.pth"))
        == mirror / "local.pth"
    )
    (tmp_path / "mine.pth").write_bytes(b"fine-tuned")
    with pytest.raises(ChecksumMismatchError, match="verify=False"):
        ensure_checkpoint("test_local", tmp_path, local_path=str(tmp_path / "mine.pth"))
    assert ensure_checkpoint("test_local", tmp_path, local_path=str(tmp_path / "mine.pth"), verify=False).is_file()


def test_already_present_file_is_not_downloaded_again(file_server, tmp_path):
    (tmp_path / "m.pth").write_bytes(PAYLOAD)
    download_file([file_server.url + "/m.pth"], tmp_path / "m.pth", SHA, len(PAYLOAD), progress=False)
    assert file_server.log == []
    assert (tmp_path / "m.pth.verified.json").exists()  # hashed once, remembered


def test_a_wrong_file_under_the_final_name_is_replaced(file_server, tmp_path):
    (tmp_path / "m.pth").write_bytes(b"not it")
    file_server.files["/m.pth"] = PAYLOAD
    download_file([file_server.url + "/m.pth"], tmp_path / "m.pth", SHA, len(PAYLOAD), progress=False)
    assert (tmp_path / "m.pth").read_bytes() == PAYLOAD


def test_free_disk_is_checked_before_downloading(file_server, tmp_path, monkeypatch):
    file_server.files["/m.pth"] = PAYLOAD
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9, 10**6))
    with pytest.raises(NotEnoughDiskError, match="SAMCLIP_CHECKPOINT_DIR"):
        download_file([file_server.url + "/m.pth"], tmp_path / "m.pth", SHA, len(PAYLOAD), progress=False)
    assert not (tmp_path / "m.pth").exists()


def test_drive_cache_is_filled_and_then_used(file_server, tmp_path):
    file_server.files["/c.pth"] = PAYLOAD
    register_checkpoint(
        Checkpoint("test_drive", "sam", "c.pth", SHA, len(PAYLOAD), (file_server.url + "/c.pth",), "sam")
    )
    drive = tmp_path / "drive"
    ensure_checkpoint("test_drive", tmp_path / "a", mirrors=[], drive_cache=drive, progress=False)
    assert (drive / "c.pth").read_bytes() == PAYLOAD
    file_server.files.clear()  # the next machine (a new Colab runtime) finds it on Drive
    assert ensure_checkpoint("test_drive", tmp_path / "b", mirrors=[], drive_cache=drive, progress=False).is_file()


def test_clip_falls_back_to_the_open_clip_copy(file_server, tmp_path, capsys, open_clip_bytes):
    copy = Checkpoint("test_clip", "clip", "c.open_clip.bin", None, None, (file_server.url + "/oc.bin",), "open_clip")
    register_checkpoint(
        Checkpoint(
            "test_clip", "clip", "c.pt", SHA, len(PAYLOAD), (file_server.url + "/c.pt",), "openai", alternates=(copy,)
        )
    )
    file_server.files["/oc.bin"] = open_clip_bytes
    path = ensure_checkpoint("test_clip", tmp_path, mirrors=[], progress=False)
    assert path.name == "c.open_clip.bin"
    assert "open_clip copy" in capsys.readouterr().err


def test_command_line_reports_errors_without_a_traceback(capsys, tmp_path):
    assert cli.main(["no_such_model", "--dir", str(tmp_path)]) == 1
    assert "Unknown model name" in capsys.readouterr().err
