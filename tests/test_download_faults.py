"""Issue 10: the downloader against a fault-injecting local server (see conftest.FileServer)."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.checkpoints import download as dl
from helpers.checkpoints.ensure import ChecksumMismatchError, DownloadError, download_file

PAYLOAD = os.urandom(2 * dl.CHUNK_BYTES + 4321)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = dict(progress=False, backoff=0.0)  # no waiting between tries in tests


def fetch(server, paths, dest, sha=SHA, size=len(PAYLOAD), **options):
    return download_file([server.url + p for p in paths], dest, sha, size, **{**FAST, **options})


def full_gets(server, path):
    return sum(1 for p, rng in server.log if p == path and rng is None)


def test_two_processes_download_once_and_both_get_the_verified_file(file_server, tmp_path):
    big = os.urandom(3 * 2**20)
    file_server.files["/m.pth"] = big
    file_server.slow["/m.pth"] = 0.04  # about 2 s for the body: the two processes overlap
    code = textwrap.dedent(f"""
        from pathlib import Path
        from helpers.checkpoints.download import download_file
        download_file([{file_server.url + "/m.pth"!r}], Path({str(tmp_path / "m.pth")!r}),
                      {hashlib.sha256(big).hexdigest()!r}, {len(big)}, progress=False)
    """)
    runs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [run.communicate(timeout=60)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    assert (tmp_path / "m.pth").read_bytes() == big
    assert full_gets(file_server, "/m.pth") == 1  # the second process waited, then found the verified file
    assert not list(tmp_path.glob("*.part"))


def test_a_part_written_by_another_source_is_never_resumed(file_server, tmp_path):
    # a mirror holding a wrong file of the right size cuts the connection: its bytes stay in the .part
    file_server.files["/bad/m.pth"] = bytes(len(PAYLOAD))
    file_server.cuts["/bad/m.pth"] = [5000]
    with pytest.raises(DownloadError):
        fetch(file_server, ["/bad/m.pth"], tmp_path / "m.pth", max_attempts=1)
    assert (tmp_path / "m.pth.part").stat().st_size == 5000
    file_server.files["/good/m.pth"] = PAYLOAD
    assert fetch(file_server, ["/good/m.pth"], tmp_path / "m.pth").read_bytes() == PAYLOAD
    assert ("/good/m.pth", None) in file_server.log and ("/good/m.pth", "bytes=5000-") not in file_server.log


def test_a_part_with_no_record_of_its_source_starts_over(file_server, tmp_path):
    (tmp_path / "m.pth.part").write_bytes(b"<html>not it</html>")  # left by an older version or a bad mirror
    file_server.files["/m.pth"] = PAYLOAD
    assert fetch(file_server, ["/m.pth"], tmp_path / "m.pth").read_bytes() == PAYLOAD
    assert file_server.log == [("/m.pth", None)]


def test_a_wrong_content_range_starts_over(file_server, tmp_path):
    file_server.files["/m.pth"] = PAYLOAD
    file_server.cut_once["/m.pth"] = 7000
    file_server.wrong_range.add("/m.pth")  # the resume is answered with bytes from 0, labelled so
    assert fetch(file_server, ["/m.pth"], tmp_path / "m.pth").read_bytes() == PAYLOAD
    assert file_server.log == [("/m.pth", None), ("/m.pth", "bytes=7000-"), ("/m.pth", None)]


def test_a_changed_etag_starts_over(file_server, tmp_path):
    old = os.urandom(len(PAYLOAD))
    file_server.files["/m.pth"] = old
    file_server.etags["/m.pth"] = '"v1"'
    file_server.cuts["/m.pth"] = [9000]
    with pytest.raises(DownloadError):
        fetch(file_server, ["/m.pth"], tmp_path / "m.pth", max_attempts=1)
    record = json.loads((tmp_path / "m.pth.part.json").read_text())
    assert record["etag"] == '"v1"' and record["total"] == len(PAYLOAD)
    file_server.files["/m.pth"], file_server.etags["/m.pth"] = PAYLOAD, '"v2"'  # the file changed upstream
    assert fetch(file_server, ["/m.pth"], tmp_path / "m.pth").read_bytes() == PAYLOAD
    assert ("/m.pth", "bytes=9000-") in file_server.log and file_server.log[-1] == ("/m.pth", None)


def test_a_200_answer_to_a_range_request_starts_over(file_server, tmp_path):
    file_server.files["/m.pth"] = PAYLOAD
    file_server.cut_once["/m.pth"] = 3000
    file_server.ignore_range.add("/m.pth")
    assert fetch(file_server, ["/m.pth"], tmp_path / "m.pth").read_bytes() == PAYLOAD


def test_a_redirect_loop_is_a_dead_source(file_server, tmp_path):
    file_server.redirects["/loop/m.pth"] = "/loop/m.pth"
    file_server.files["/good/m.pth"] = PAYLOAD
    assert fetch(file_server, ["/loop/m.pth", "/good/m.pth"], tmp_path / "m.pth").read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="redirect loop"):
        fetch(file_server, ["/loop/m.pth"], tmp_path / "other.pth")


def test_an_html_page_served_with_200_is_not_the_file(file_server, tmp_path):
    file_server.html.add("/login/m.pth")
    file_server.files["/good/m.pth"] = PAYLOAD
    assert fetch(file_server, ["/login/m.pth", "/good/m.pth"], tmp_path / "m.pth").read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="HTML page"):  # no size known: recognised by its content
        fetch(file_server, ["/login/m.pth"], tmp_path / "x.bin", sha=None, size=None)
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / "x.bin.part").exists()


def test_a_shorter_wrong_file_in_a_mirror_is_skipped_without_downloading(file_server, tmp_path):
    file_server.files["/mirror/m.pth"] = PAYLOAD[:1000]
    file_server.files["/good/m.pth"] = PAYLOAD
    assert fetch(file_server, ["/mirror/m.pth", "/good/m.pth"], tmp_path / "m.pth").read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="1000 bytes, expected"):
        fetch(file_server, ["/mirror/m.pth"], tmp_path / "other.pth")


def test_a_trickling_source_is_abandoned_for_the_next(file_server, tmp_path):
    file_server.files["/slow/m.pth"] = file_server.files["/good/m.pth"] = PAYLOAD
    file_server.trickle["/slow/m.pth"] = (1024, 0.1)  # 10 KiB/s
    file_server.trickle_limit = 5.0
    floor = dict(min_speed=100 * 1024, speed_window=0.5)
    started = time.monotonic()
    assert fetch(file_server, ["/slow/m.pth", "/good/m.pth"], tmp_path / "m.pth", **floor).read_bytes() == PAYLOAD
    assert time.monotonic() - started < 3.0
    assert [p for p, _ in file_server.log] == ["/slow/m.pth", "/good/m.pth"]
    with pytest.raises(DownloadError, match="too slow.*min_speed"):
        fetch(file_server, ["/slow/m.pth"], tmp_path / "other.pth", **floor)


def test_cut_connections_are_retried_while_they_make_progress(file_server, tmp_path):
    file_server.files["/m.pth"] = PAYLOAD
    file_server.cuts["/m.pth"] = [100_000] * 5  # five cuts in a row, each after some progress
    assert fetch(file_server, ["/m.pth"], tmp_path / "m.pth", retries=2).read_bytes() == PAYLOAD
    assert len(file_server.log) == 6


def test_a_source_is_given_up_after_its_total_limit_of_tries(file_server, tmp_path):
    file_server.files["/m.pth"] = PAYLOAD
    file_server.cuts["/m.pth"] = [1000] * 10
    with pytest.raises(DownloadError, match="gave up after 4 tries"):
        fetch(file_server, ["/m.pth"], tmp_path / "m.pth", max_attempts=4)
    assert len(file_server.log) == 4


def test_backoff_between_tries_is_capped(tmp_path, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(dl, "time", SimpleNamespace(sleep=waits.append))
    with pytest.raises(DownloadError, match="connection failed"):
        download_file(
            ["http://127.0.0.1:9/m.pth"], tmp_path / "m.pth", SHA, progress=False, retries=5, backoff=0.5, backoff_cap=3
        )
    assert waits == [1.0, 2.0, 3.0, 3.0]


def test_a_flipped_bit_that_keeps_size_and_mtime_is_caught(tmp_path):
    path = tmp_path / "m.pth"
    path.write_bytes(PAYLOAD)
    assert dl.is_verified(path, SHA, len(PAYLOAD))  # stamped
    stat = path.stat()
    time.sleep(0.02)
    with open(path, "r+b") as f:
        f.seek(12345)
        f.write(bytes([PAYLOAD[12345] ^ 1]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as before; ctime moved on
    assert not dl.is_verified(path, SHA, len(PAYLOAD))
    assert dl.file_sha256(path) != SHA


def test_full_verification_rehashes_despite_a_fresh_stamp(tmp_path):
    path = tmp_path / "m.pth"
    path.write_bytes(PAYLOAD)
    assert dl.is_verified(path, SHA, len(PAYLOAD))
    stamp = json.loads((tmp_path / "m.pth.verified.json").read_text())
    (tmp_path / "m.pth.verified.json").write_text(json.dumps({**stamp, "sha256": "0" * 64}))  # a lying stamp
    assert not dl.is_verified(path, "0" * 64, len(PAYLOAD), full=True)
    assert dl.is_verified(path, SHA, len(PAYLOAD), full=True)


def test_a_failed_download_leaves_no_wrong_file_under_the_final_name(file_server, tmp_path):
    file_server.files["/m.pth"] = WRONG = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1])  # one bit off
    with pytest.raises(ChecksumMismatchError):
        fetch(file_server, ["/m.pth"], tmp_path / "m.pth")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["m.pth.corrupt"]
    assert Path(tmp_path / "m.pth.corrupt").read_bytes() == WRONG
