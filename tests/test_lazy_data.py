"""Datasets read on touch: the same results as in memory, bounded memory, files that break later."""

import json
import os
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from conftest import LOOSE_SAM, load_benchmark

from helpers import data, evaluation
from helpers.breakdown import error_breakdown
from helpers.data import DatasetError, LazySamples
from helpers.pipeline import CachedResults, Pipeline, PipelineSettings
from helpers.selection import SelectionSettings

bench_memory = load_benchmark("bench_memory")


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory):
    return bench_memory.write_coco_folder(tmp_path_factory.mktemp("coco"), 6, 72, 96)


def load(folder, **options):
    return data.load_coco(folder / "annotations" / "instances_val2017.json", folder / "val2017", **options)


def same_samples(a, b):
    assert a.ids == b.ids and len(a) == len(b)
    for x, y in zip(a, b):
        assert x.image_id == y.image_id and np.array_equal(x.image, y.image)
        assert x.masks.keys() == y.masks.keys() and x.ignore.keys() == y.ignore.keys()
        assert all(np.array_equal(x.masks[k], y.masks[k]) for k in x.masks)


def test_readers_index_up_front_and_read_on_touch(coco_folder, tmp_path):
    lazy = load(coco_folder)
    assert lazy.lazy and isinstance(lazy.samples, LazySamples) and len(lazy) == 6
    eager = lazy.in_memory()
    assert not eager.lazy and isinstance(eager.samples, list)
    same_samples(lazy, eager)
    assert lazy.class_counts() == eager.class_counts()  # from the scan's stats vs from the pixels
    assert lazy.present_classes() == eager.present_classes() and lazy.present_classes()
    sliced = lazy.samples[2:4]
    assert isinstance(sliced, LazySamples) and [s.image_id for s in sliced] == lazy.ids[2:4]
    # the prepared folder is a manifest by reference: no image copies; it reads back the same
    data.save_dataset(lazy, tmp_path / "prepared", request={"dataset": "coco"})
    assert [p.name for p in (tmp_path / "prepared").iterdir()] == ["manifest.json"]
    back = data.load_prepared(tmp_path / "prepared", expected={"dataset": "coco"})
    same_samples(back, eager)
    assert back.class_counts() == eager.class_counts()
    # the generated demo set lives in memory: it is copied, and reads back the same
    demo = data.make_demo_dataset(3, 40, 50)
    data.save_dataset(demo, tmp_path / "demo")
    assert sorted(p.suffix for p in (tmp_path / "demo").iterdir()) == [".json"] + [".npz"] * 3 + [".png"] * 3
    same_samples(data.load_prepared(tmp_path / "demo"), demo)


def test_yolo_and_label_map_folders_read_on_touch_equal_in_memory(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    rng = np.random.default_rng(0)
    for name in "abc":
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)).save(tmp_path / "img" / f"{name}.png")
        np.save(tmp_path / "msk" / f"{name}.npy", rng.integers(0, 3, (20, 30)))
    folder = data.load_semantic_folder(tmp_path / "img", tmp_path / "msk", ["bg", "cat", "dog"], ignore_ids=(0,))
    assert folder.lazy
    same_samples(folder, folder.in_memory())
    unchecked = data.load_semantic_folder(tmp_path / "img", tmp_path / "msk", ["bg", "cat", "dog"], check=False)
    assert all(ref.stats is None for ref in unchecked.samples.refs)
    assert unchecked.present_classes() == ["bg", "cat", "dog"]  # read one at a time when not scanned
    yolo_root = tmp_path / "yolo"
    (yolo_root / "images").mkdir(parents=True)
    (yolo_root / "labels").mkdir()
    (yolo_root / "data.yaml").write_text("names: [cat, dog]\n")
    for name in "xy":
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), np.uint8)).save(yolo_root / "images" / f"{name}.png")
        (yolo_root / "labels" / f"{name}.txt").write_text("1 0.1 0.1 0.9 0.2 0.5 0.8\n")
    yolo = data.load_yolo(yolo_root)
    same_samples(yolo, yolo.in_memory())
    assert yolo[0].masks["dog"].sum() > 50


def test_results_and_metrics_on_a_lazy_dataset_equal_in_memory_bit_for_bit(coco_folder, tiny_models, tmp_path):
    sam, clip_model = tiny_models
    settings = PipelineSettings(sam=LOOSE_SAM)
    lazy = load(coco_folder)
    data.save_dataset(lazy, tmp_path / "prepared")
    lazy = data.load_prepared(tmp_path / "prepared")
    eager = lazy.in_memory()
    eager_pipe = Pipeline(sam, clip_model, settings, cache_dir=tmp_path / "cache-a")
    lazy_pipe = Pipeline(sam, clip_model, settings, cache_dir=tmp_path / "cache-b")
    eager_results = eager_pipe.process_dataset(eager, progress=False)
    lazy_results = lazy_pipe.process_dataset(lazy, progress=False)
    assert isinstance(eager_results, list) and isinstance(lazy_results, CachedResults)
    assert lazy_results.ids == eager.ids and len(lazy_results) == len(eager_results)
    assert sum(len(r.masks) for r in eager_results) > 0  # something to compare
    for a, b in zip(eager_results, lazy_results):
        assert np.array_equal(a.masks.to_dense(), b.masks.to_dense())
        assert np.array_equal(a.embeddings, b.embeddings)
    classes = lazy.present_classes()
    selection = SelectionSettings("threshold", threshold=0.0)
    for pipe, dataset, results in ((eager_pipe, eager, eager_results), (lazy_pipe, lazy, lazy_results)):
        pipe.frames = [
            evaluation.evaluate(dataset, results, pipe.text, classes, selection),
            evaluation.best_thresholds(dataset, results, pipe.text, classes, np.linspace(-0.2, 1, 13))[0],
            error_breakdown(dataset, results, pipe.text, clip_model, classes, selection),
        ]
    assert eager_pipe.frames[0]["iou"].notna().any()
    for a, b in zip(eager_pipe.frames, lazy_pipe.frames):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    # the sweeps equal the one-class-at-a-time reference
    for name in classes:
        one = evaluation.class_sweep(lazy, lazy_results, lazy_pipe.text, name, [0.0, 0.1])
        reference = []
        for threshold in (0.0, 0.1):
            rows = evaluation.evaluate(
                eager, eager_results, eager_pipe.text, [name], SelectionSettings(threshold=threshold)
            )
            reference.append(rows["intersection"].sum() / max(rows["union"].sum(), 1))
        assert np.allclose(one["dataset_iou"].fillna(0), reference)


def test_a_sample_that_turns_unreadable_after_indexing_is_reported_not_fatal(coco_folder, tiny_models, tmp_path):
    import shutil

    folder = tmp_path / "coco"
    shutil.copytree(coco_folder, folder)
    sam, clip_model = tiny_models
    dataset = load(folder)
    data.save_dataset(dataset, tmp_path / "prepared")
    dataset = data.load_prepared(tmp_path / "prepared")
    broken = folder / "val2017" / "000000000002.jpg"
    broken.write_bytes(b"not a jpeg any more")
    changed = folder / "val2017" / "000000000004.jpg"
    changed.write_bytes(changed.read_bytes() + b"\0")  # still decodes, another size: changed since indexing
    os.utime(folder / "val2017" / "000000000001.jpg", ns=(0, 0))  # a copy's new date alone changes nothing
    with pytest.raises(DatasetError, match="since the dataset was indexed"):
        dataset[2]
    pipe = Pipeline(sam, clip_model, PipelineSettings(sam=LOOSE_SAM), cache_dir=tmp_path / "cache")
    with pytest.warns(RuntimeWarning, match="skipped"):
        results = pipe.process_dataset(dataset, progress=False)
    assert len(results) == len(dataset) == 4 and "3" not in dataset.ids and "5" not in dataset.ids
    reasons = dict(dataset.skipped)
    assert "after indexing" in reasons["000000000002.jpg (image 3)"]
    assert "changed since the dataset was indexed" in reasons["000000000004.jpg (image 5)"]
    assert "skipped 2" in dataset.report()
    table = evaluation.evaluate(dataset, results, pipe.text, dataset.present_classes())
    assert sorted(set(table["image_id"])) == sorted(dataset.ids)


def test_touching_samples_keeps_few_in_memory(coco_folder):
    dataset = load(coco_folder)
    one = dataset[0].image.nbytes + sum(m.nbytes for m in dataset[0].masks.values())
    tracemalloc.start()
    for _ in range(3):
        for sample in dataset:
            assert sample.image.shape == (72, 96, 3)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 12 * one, (peak, one)  # a few samples at a time, never all 18 touches
    assert len(dataset.samples._recent) <= data.lazy.CACHED


def test_an_old_manifest_of_copies_still_loads(tmp_path):
    demo = data.make_demo_dataset(2, 30, 40)
    data.save_dataset(demo, tmp_path / "p")
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    old = {k: manifest[k] for k in ("name", "classes", "ids", "skipped", "notes", "request")}
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(old))
    same_samples(data.load_prepared(tmp_path / "p"), demo)


def test_memory_benchmark_steps_run_in_both_modes(coco_folder, tmp_path, monkeypatch):
    """The benchmark's four calls, in this process (its fresh processes only add the imports)."""
    monkeypatch.setenv("SAMCLIP_PROFILE", "smoke")
    monkeypatch.setenv("SAMCLIP_DATASET", "coco")
    monkeypatch.setenv("SAMCLIP_DATA_PATH", str(coco_folder))
    monkeypatch.setenv("SAMCLIP_MAX_IMAGES", "4")
    monkeypatch.delenv("SAMCLIP_START_DIR", raising=False)
    rows = {}
    for mode in ("lazy", "memory"):
        monkeypatch.setenv("SAMCLIP_HOME", str(tmp_path / mode))
        rows[mode] = bench_memory.child(mode)
    lazy, memory = rows["lazy"], rows["memory"]
    assert lazy["images"] == memory["images"] == 4 and lazy["rows"] == memory["rows"] > 0
    assert np.array_equal(lazy["mean_iou"], memory["mean_iou"], equal_nan=True)
    assert lazy["prepared_mib"] < memory["prepared_mib"] / 5  # a manifest, not copies
    assert lazy["sam_runs"] == memory["sam_runs"] == 4  # each with a cold cache of its own


def test_the_ray_command_reads_notebook_01s_dataset_by_default(tmp_path, monkeypatch):
    from helpers.config import load_config
    from helpers.distributed import driver

    monkeypatch.setenv("SAMCLIP_PROFILE", "smoke")
    monkeypatch.setenv("SAMCLIP_HOME", str(tmp_path))
    monkeypatch.delenv("SAMCLIP_START_DIR", raising=False)
    config = load_config()
    data.prepare_dataset(config)
    seen = {}

    def fake_ray(images, *args, **kwargs):
        seen["images"] = images
        raise SystemExit(0)

    monkeypatch.setattr(driver, "process_dataset_on_ray", fake_ray)
    with pytest.raises(SystemExit):
        driver.main(["--address", "local"])
    assert isinstance(seen["images"], data.Dataset) and seen["images"].lazy
    assert seen["images"].ids == data.load_prepared(config.dataset_dir).ids and len(seen["images"]) == 4


def test_a_moved_data_folder_is_a_clear_error_and_missing_files_are_listed(coco_folder, tmp_path):
    import shutil

    folder = tmp_path / "coco"
    shutil.copytree(coco_folder, folder)
    data.save_dataset(load(folder), tmp_path / "prepared")
    (folder / "val2017" / "000000000003.jpg").unlink()
    with pytest.warns(UserWarning, match="1 source file"):
        partial = data.load_prepared(tmp_path / "prepared")
    assert (
        len(partial) == 5
        and "gone since the dataset was indexed" in dict(partial.skipped)["000000000003.jpg (image 4)"]
    )
    shutil.move(folder, tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match="None of the 6 source files.*SAMCLIP_DATA_PATH"):
        data.load_prepared(tmp_path / "prepared")


def test_repeated_ids_pair_by_position_and_partial_overlaps_are_errors(tmp_path):
    from helpers.masks import MaskSet
    from helpers.selection import ImageResult

    samples = [data.Sample(i, np.zeros((4, 4, 3), np.uint8), {}) for i in ("a", "a", "b")]
    dataset = data.Dataset("d", samples, [])
    empty = MaskSet.from_masks(np.zeros((0, 4, 4), bool))
    results = [ImageResult(i, empty, np.zeros((0, 4), np.float32)) for i in ("a", "a", "b")]
    assert [s.image_id for s, _ in evaluation.pairs(dataset, results)] == ["a", "a", "b"]
    unique = data.Dataset("d", [samples[0], samples[2]], [])
    other = [ImageResult(i, empty, np.zeros((0, 4), np.float32)) for i in ("a", "c")]
    with pytest.raises(ValueError, match="without a result"):
        list(evaluation.pairs(unique, other))
