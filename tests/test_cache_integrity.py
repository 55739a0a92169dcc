"""Issue 10: the result cache never returns a damaged entry and never stops a run."""

import errno
import threading
import warnings

import numpy as np
import pytest

from helpers import cache as cache_module
from helpers.cache import ResultCache
from helpers.masks import MaskSet


def sample_masks(seed: int = 0) -> MaskSet:
    rng = np.random.default_rng(seed)
    membership = rng.random((6, 40 * 30)) < 0.3
    atoms = rng.integers(0, 6, (40, 30)).astype(np.int32)
    return MaskSet(atoms, membership[:, :6], rng.random(6).astype(np.float32), rng.random(6).astype(np.float32))


EMBEDDINGS = np.random.default_rng(1).standard_normal((6, 16)).astype(np.float32)


def test_every_single_byte_flip_is_a_miss_and_the_entry_is_recomputed(tmp_path):
    cache = ResultCache(tmp_path)
    cache.save_embeddings("img", "k", EMBEDDINGS)
    path = tmp_path / "embeddings" / "img_k.npz"
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    offsets = sorted({0, 5, 20, 40, len(good) - 1, *rng.integers(0, len(good), 60).tolist()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for offset in offsets:
            damaged = bytearray(good)
            damaged[offset] ^= 0x55
            path.write_bytes(bytes(damaged))
            assert cache.load_embeddings("img", "k") is None, offset  # neither an exception nor wrong values
            assert not path.exists() and (tmp_path / "embeddings" / "img_k.npz.corrupt").exists()
            cache.save_embeddings("img", "k", EMBEDDINGS)  # recomputed
            np.testing.assert_array_equal(cache.load_embeddings("img", "k"), EMBEDDINGS)
    assert len([w for w in caught if "Unreadable cache entry" in str(w.message)]) == 1  # warned once
    assert cache.set_aside == len(offsets)


def test_a_flip_inside_the_payload_that_still_decompresses_is_caught(tmp_path):
    import hashlib

    cache = ResultCache(tmp_path)
    masks = sample_masks()
    cache.save_masks("img", "k", masks)
    path = tmp_path / "masks" / "img_k.npz"
    data = bytearray(path.read_bytes())
    header = len(cache_module.MAGIC) + 32
    # rewrite the payload as an uncompressed archive with one value changed, and keep the old checksum
    import io

    buffer = io.BytesIO()
    np.savez(buffer, atoms=masks.atoms, membership=np.packbits(masks.membership, axis=1), count=len(masks),
             predicted_iou=masks.predicted_iou + 1, stability=masks.stability)  # fmt: skip
    path.write_bytes(bytes(data[:header]) + buffer.getvalue())
    assert hashlib.sha256(buffer.getvalue()).digest() != bytes(data[len(cache_module.MAGIC) : header])
    with pytest.warns(RuntimeWarning, match="checksum mismatch"):
        assert cache.load_masks("img", "k") is None


def test_masks_round_trip_unchanged(tmp_path):
    cache = ResultCache(tmp_path)
    masks = sample_masks()
    cache.save_masks("img", "k", masks)
    loaded = cache.load_masks("img", "k")
    np.testing.assert_array_equal(loaded.membership, masks.membership)
    np.testing.assert_array_equal(loaded.atoms, masks.atoms)
    assert cache.load_masks("img", "other") is None


def test_two_runs_sharing_a_cache_folder_write_the_same_entries(tmp_path):
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run() -> None:
        cache = ResultCache(tmp_path)  # each run has its own cache object over the same folder
        try:
            barrier.wait()
            for i in range(40):
                cache.save_embeddings(f"img{i % 5}", "k", EMBEDDINGS + i % 5)
                cache.save_masks(f"img{i % 5}", "k", sample_masks(i % 5))
                loaded = cache.load_embeddings(f"img{i % 5}", "k")
                assert loaded is not None
                np.testing.assert_array_equal(loaded, EMBEDDINGS + i % 5)
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.corrupt"))
    for i in range(5):
        np.testing.assert_array_equal(ResultCache(tmp_path).load_masks(f"img{i}", "k").atoms, sample_masks(i).atoms)


def test_a_read_only_cache_folder_warns_once_and_the_run_goes_on(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    cache = ResultCache(tmp_path / "a_file" / "cache")  # mkdir fails with a real OSError
    with pytest.warns(RuntimeWarning, match="cannot be written") as caught:
        for i in range(3):
            cache.save_embeddings(f"img{i}", "k", EMBEDDINGS)
            cache.save_masks(f"img{i}", "k", sample_masks())
            assert cache.load_embeddings(f"img{i}", "k") is None
    assert len([w for w in caught if "cannot be written" in str(w.message)]) == 1
    assert not cache.writable


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_or_read_only_disk_warns_once_and_leaves_no_temporary_file(tmp_path, monkeypatch, code):
    real = cache_module.os.replace

    def failing_replace(src, dst):
        if str(dst).endswith(".npz"):
            raise OSError(code, "simulated", str(dst))
        return real(src, dst)

    monkeypatch.setattr(cache_module.os, "replace", failing_replace)
    cache = ResultCache(tmp_path)
    with pytest.warns(RuntimeWarning, match="goes on without caching"):
        cache.save_embeddings("img", "k", EMBEDDINGS)
    cache.save_embeddings("img2", "k", EMBEDDINGS)  # no second warning, no second try
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_results_are_identical_with_an_unwritable_cache(tiny_models, tmp_path):
    from conftest import LOOSE_SAM

    from helpers.pipeline import Pipeline, PipelineSettings

    sam, clip = tiny_models
    image = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    settings = PipelineSettings(sam=LOOSE_SAM)
    plain = Pipeline(sam, clip, settings).process(image)
    (tmp_path / "a_file").write_text("")
    with pytest.warns(RuntimeWarning, match="cannot be written"):
        cached = Pipeline(sam, clip, settings, cache_dir=tmp_path / "a_file" / "cache").process(image)
    np.testing.assert_array_equal(cached.masks.membership, plain.masks.membership)
    np.testing.assert_allclose(cached.embeddings, plain.embeddings)
