from dataclasses import asdict, replace

import numpy as np
import pytest
from conftest import LOOSE_SAM, load_benchmark

from helpers import masks as masks_module
from helpers import pipeline as pipeline_module
from helpers.cache import settings_key
from helpers.clip_scoring import (
    ENSEMBLE_TEMPLATES,
    TextEmbeddings,
    default_batch_size,
    encode_images,
    encode_text,
)
from helpers.data import make_demo_dataset
from helpers.masks import (
    FilterSettings,
    MaskSet,
    apply_filters,
    best_match_iou,
    drop_contained,
    drop_largest,
    filter_min_area,
    iou_matrix,
    overlap_counts,
    split_overlaps,
)
from helpers.pipeline import Pipeline, PipelineSettings
from helpers.regions import NEUTRAL_GREY, RegionSettings, extract_regions
from helpers.segmentation import generate_masks
from helpers.selection import SelectionSettings, mask_scores, score


def boxes_mask(h, w, *boxes):
    masks = np.zeros((len(boxes), h, w), bool)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    return masks


def test_maskset_is_exact_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    dense = rng.random((13, 30, 40)) > 0.7
    masks = MaskSet.from_masks(dense, predicted_iou=np.arange(13) / 13)
    assert np.array_equal(masks.to_dense(), dense)
    assert np.array_equal(masks.areas, dense.sum((1, 2)))
    assert np.array_equal(masks.union(np.isin(np.arange(13), [0, 2])), dense[0] | dense[2])
    assert np.array_equal(masks.overlaps()[3, 5], (dense[3] & dense[5]).sum())
    masks.save(tmp_path / "m.npz")
    back = MaskSet.load(tmp_path / "m.npz")
    assert np.array_equal(back.to_dense(), dense) and np.allclose(back.predicted_iou, np.arange(13) / 13)
    assert np.array_equal(
        masks.bboxes()[0],
        [
            np.flatnonzero(dense[0].any(0))[0],
            np.flatnonzero(dense[0].any(1))[0],
            np.flatnonzero(dense[0].any(0))[-1] + 1,
            np.flatnonzero(dense[0].any(1))[-1] + 1,
        ],
    )
    empty = MaskSet.from_masks(np.zeros((0, 5, 6), bool))
    assert len(empty) == 0 and not empty.union(np.zeros(0, bool)).any()


def test_filters_on_hand_made_masks():
    #   0: background (whole image)  1: big box  2: box inside 1  3: tiny box  4: box half over 1
    dense = boxes_mask(40, 40, (0, 40, 0, 40), (0, 20, 0, 20), (2, 8, 2, 8), (30, 32, 30, 32), (10, 30, 10, 30))
    masks = MaskSet.from_masks(dense)
    assert np.array_equal(drop_largest(masks).to_dense(), dense[1:])
    assert np.array_equal(filter_min_area(masks, 5).to_dense(), dense[[0, 1, 2, 4]])
    kept = drop_contained(masks.subset([1, 2, 3, 4]), max_inside=0.9)  # 2 lies in 1; 4 is a quarter inside
    assert np.array_equal(kept.to_dense(), dense[[1, 3, 4]])
    split = split_overlaps(masks.subset([1, 2, 4])).to_dense()
    assert split.sum(0).max() == 1  # disjoint
    assert np.array_equal(split[1], dense[2])  # the small box stays whole
    assert np.array_equal(split.sum(0) > 0, dense[[1, 2, 4]].any(0))  # nothing lost
    assert not split[0][2:8, 2:8].any()
    chained = apply_filters(masks, FilterSettings(drop_largest=True, min_area=5, max_inside=0.9))
    assert np.array_equal(chained.to_dense(), dense[[1, 4]])


def test_best_match_iou_on_hand_made_masks():
    masks = MaskSet.from_masks(boxes_mask(20, 20, (0, 10, 0, 10), (10, 20, 10, 20)))
    others = MaskSet.from_masks(boxes_mask(20, 20, (0, 10, 0, 5), (10, 20, 10, 20), (0, 20, 0, 20)))
    np.testing.assert_allclose(best_match_iou(masks, others), [0.5, 1.0])  # half of box 0; box 1 unchanged
    assert best_match_iou(masks, others.subset([])).tolist() == [0.0, 0.0]
    assert best_match_iou(others.subset([]), masks).shape == (0,)


@pytest.mark.parametrize("float64", [False, True])
def test_iou_matrix_matches_a_loop_over_pairs(monkeypatch, float64):
    if float64:  # the path of images from 2**24 pixels on
        monkeypatch.setattr(masks_module, "FLOAT32_EXACT_PIXELS", 0)
    rng = np.random.default_rng(3)
    a = rng.random((5, 13, 17)) < rng.random((5, 1, 1))  # masks from near-empty to near-full
    b = rng.random((4, 13, 17)) < 0.4
    a[0], b[1] = False, False  # empty masks: IoU 0, not NaN
    loop = [[(x & y).sum() / max(1, (x | y).sum()) for y in b] for x in a]
    np.testing.assert_array_equal(overlap_counts(a, b), [[(x & y).sum() for y in b] for x in a])
    np.testing.assert_array_equal(iou_matrix(a, b), loop)  # exact: integer counts, one division
    assert iou_matrix(a, b[:0]).shape == (5, 0) and iou_matrix(a[:0], b).shape == (0, 4)
    with pytest.raises(ValueError, match="different images"):
        overlap_counts(a, b.transpose(0, 2, 1))


def test_region_modes():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    dense = boxes_mask(20, 30, (5, 15, 10, 20))
    dense[0, 5, 10] = False  # a pixel of the box outside the mask
    masks = MaskSet.from_masks(dense)
    crop = extract_regions(image, masks, RegionSettings("crop", margin=0.0))[0]
    assert np.array_equal(crop, image[5:15, 10:20])
    masked = extract_regions(image, masks, RegionSettings("masked_crop", margin=0.2))[0]
    assert masked.shape == (14, 14, 3)  # 10 px box + 2 px each side
    assert np.array_equal(masked[0, 0], NEUTRAL_GREY) and np.array_equal(masked[2, 2], NEUTRAL_GREY)
    assert np.array_equal(masked[3, 3], image[6, 11])
    full = extract_regions(image, masks, RegionSettings("masked_full"))[0]
    assert full.shape == image.shape and not full[0, 0].any() and np.array_equal(full[6, 11], image[6, 11])
    with pytest.raises(ValueError, match="Unknown region mode"):
        RegionSettings("blur")


def test_batched_scores_equal_the_naive_loop(tiny_models):
    _, clip_model = tiny_models
    rng = np.random.default_rng(1)
    regions = [
        rng.integers(0, 256, (int(rng.integers(8, 60)), int(rng.integers(8, 60)), 3), dtype=np.uint8) for _ in range(9)
    ]
    batched = encode_images(clip_model, regions, batch_size=4) @ encode_text(clip_model, ["chair"])[0]
    naive = load_benchmark("bench_pipeline").naive_scores(clip_model, regions, "chair")
    np.testing.assert_allclose(batched, naive, atol=1e-5)
    assert batched.dtype == np.float32 and np.ptp(batched) > 0  # not a constant: the test can fail


def test_mirrored_embeddings_average_a_cut_out_and_its_mirror(tiny_models):
    _, clip_model = tiny_models
    rng = np.random.default_rng(2)
    regions = [rng.integers(0, 256, (20 + 7 * i, 31 - 3 * i, 3), dtype=np.uint8) for i in range(5)]
    plain = encode_images(clip_model, regions, batch_size=3)
    mirrored = encode_images(clip_model, [r[:, ::-1].copy() for r in regions])
    both = encode_images(clip_model, regions, batch_size=3, mirror=True)
    mean = (plain + mirrored) / np.linalg.norm(plain + mirrored, axis=1, keepdims=True)
    np.testing.assert_allclose(both, mean, atol=1e-6)
    assert np.abs(both - plain).max() > 1e-3  # the mirror changes what CLIP sees: the test can fail
    symmetric = [np.concatenate([r, r[:, ::-1]], axis=1) for r in regions]  # its own mirror image
    np.testing.assert_allclose(
        encode_images(clip_model, symmetric, mirror=True), encode_images(clip_model, symmetric), atol=1e-6
    )
    assert encode_images(clip_model, [], mirror=True).shape == (0, plain.shape[1])


def test_mirror_keys_its_own_cache_and_leaves_earlier_caches_valid(tiny_models, tmp_path):
    sam, clip_model = tiny_models
    image = make_demo_dataset(1, 64, 80)[0].image
    plain = Pipeline(sam, clip_model, PipelineSettings(sam=LOOSE_SAM), tmp_path)
    result = plain.process(image)
    # the key a cache had before ``mirror`` existed: the region settings without it
    before = settings_key(
        sam=plain.sam_key,
        filters=asdict(FilterSettings()),
        clip=clip_model.identity,
        regions={"mode": "masked_crop", "margin": 0.1, "background": NEUTRAL_GREY},
        precision="float32",
    )
    assert plain.embedding_key == before
    mirrored = Pipeline(sam, clip_model, PipelineSettings(sam=LOOSE_SAM, regions=RegionSettings(mirror=True)), tmp_path)
    again = mirrored.process(image)
    assert mirrored.embedding_key != before and (mirrored.sam_runs, mirrored.clip_image_runs) == (0, 1)
    np.testing.assert_array_equal(again.masks.to_dense(), result.masks.to_dense())
    assert len(result.masks) and not np.allclose(again.embeddings, result.embeddings)


def test_default_batch_size_depends_on_the_device_not_the_result(tiny_models):
    _, clip_model = tiny_models
    assert default_batch_size("cpu") == 16 and default_batch_size("cuda:0") == 64
    rng = np.random.default_rng(2)
    regions = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(default_batch_size("cpu") + 3)]
    np.testing.assert_allclose(
        encode_images(clip_model, regions), encode_images(clip_model, regions, batch_size=1), atol=1e-5
    )


def test_text_embeddings(tiny_models):
    _, clip_model = tiny_models
    ensemble = encode_text(clip_model, ["dog", "cat"], ENSEMBLE_TEMPLATES)
    np.testing.assert_allclose(np.linalg.norm(ensemble, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(ensemble[0], encode_text(clip_model, ["dog"])[0])
    with pytest.raises(ValueError, match="prompt is empty"):
        encode_text(clip_model, ["  "])
    bank = TextEmbeddings(clip_model)
    first = bank(["dog", "cat"])
    bank.model = None  # a second call must not touch the model
    np.testing.assert_array_equal(bank(["cat", "dog"]), first[::-1])


def test_selection_modes_on_a_fixed_table():
    # regions x [chair, table, background]: "embeddings" are rows of an identity-like basis, so
    # the similarity table equals ``sims`` and the one scoring path is tested end to end
    sims = np.array([[0.30, 0.20, 0.10], [0.26, 0.29, 0.05], [0.24, 0.10, 0.28], [0.10, 0.12, 0.11]], np.float32)
    columns = {"chair": np.eye(3, dtype=np.float32)[0], "table": np.eye(3, dtype=np.float32)[1]}
    columns["background"] = np.eye(3, dtype=np.float32)[2]

    def text(names):
        return np.stack([columns[n] for n in names])

    def kept(prompt, settings, classes):
        return score(sims, text, prompt, settings, classes).keep.tolist()

    assert kept("chair", SelectionSettings("threshold", 0.25), ["chair", "table"]) == [True, True, False, False]
    with_negative = SelectionSettings("threshold", 0.2, negatives=("background",))
    assert kept("chair", with_negative, ["chair", "table"]) == [True, True, False, False]
    assert kept("chair", SelectionSettings("threshold", 0.2), None) == [True, True, True, False]
    softmax = SelectionSettings("softmax", 0.5)
    assert kept("chair", softmax, ["chair", "table"]) == [True, False, True, False]
    scored = score(sims, text, "chair", softmax, ["chair", "table"])
    assert scored.names == ["chair", "table"] and np.allclose(scored.similarities, sims[:, :2])
    probs = mask_scores(sims[:, :2], 0, "softmax")
    np.testing.assert_allclose(probs[0], 1 / (1 + np.exp(-10.0)), rtol=1e-5)
    assert kept("table", SelectionSettings("top1"), ["chair", "table", "background"]) == [False, True, False, False]
    with pytest.raises(ValueError, match="Unknown selection mode"):
        SelectionSettings("vote")
    with pytest.raises(ValueError, match="not a finite number"):
        SelectionSettings("threshold", float("nan"))
    # a negative prompt that is also one of the classes: its own column is the negative, not the last one
    as_class = SelectionSettings("threshold", 0.2, negatives=("background",))
    assert kept("chair", as_class, ["background", "chair", "table"]) == [True, True, False, False]
    assert kept("background", as_class, ["background", "chair"]) == [False, False, True, False]  # not its own negative


def test_tiny_sam_masks_come_back_at_the_image_size(tiny_models):
    sam, _ = tiny_models
    image = make_demo_dataset(1, 96, 128)[0].image
    masks = generate_masks(sam, image, LOOSE_SAM)
    assert len(masks) > 0 and masks.shape == (96, 128)
    resized = generate_masks(sam, image, replace(LOOSE_SAM, max_side=64))
    assert resized.shape == (96, 128)
    with pytest.raises(ValueError, match="uint8 RGB"):
        generate_masks(sam, image[..., 0], LOOSE_SAM)


def test_cache_skips_sam_and_settings_invalidate_it(tiny_models, tmp_path):
    sam, clip_model = tiny_models
    image = make_demo_dataset(1, 64, 80)[0].image
    settings = PipelineSettings(sam=LOOSE_SAM)
    first = Pipeline(sam, clip_model, settings, tmp_path)
    result = first.process(image, "a")
    assert (first.sam_runs, first.clip_image_runs) == (1, 1)
    again = Pipeline(sam, clip_model, settings, tmp_path)
    cached = again.process(image, "a")
    assert (again.sam_runs, again.clip_image_runs) == (0, 0)
    np.testing.assert_array_equal(cached.embeddings, result.embeddings)
    np.testing.assert_array_equal(cached.masks.to_dense(), result.masks.to_dense())
    # prompt, threshold and mode changes are free
    for mode in ("threshold", "softmax", "top1"):
        again.predict(cached, "circle", SelectionSettings(mode, 0.0), classes=["circle", "square"])
    assert again.sam_runs == 0
    # only points_per_batch changed: same masks, still cached
    batch = Pipeline(sam, clip_model, PipelineSettings(sam=replace(LOOSE_SAM, points_per_batch=8)), tmp_path)
    batch.process(image)
    assert batch.sam_runs == 0
    changed = Pipeline(sam, clip_model, PipelineSettings(sam=replace(LOOSE_SAM, points_per_side=5)), tmp_path)
    changed.process(image)
    assert changed.sam_runs == 1
    # new filters reuse SAM's masks but embed again
    filtered = Pipeline(sam, clip_model, PipelineSettings(sam=LOOSE_SAM, filters=FilterSettings(min_area=10)), tmp_path)
    filtered.process(image)
    assert (filtered.sam_runs, filtered.clip_image_runs) == (0, 1)


def test_a_corrupt_cache_file_is_recomputed(tiny_models, tmp_path):
    sam, clip_model = tiny_models
    image = make_demo_dataset(1, 64, 80)[0].image
    Pipeline(sam, clip_model, PipelineSettings(sam=LOOSE_SAM), tmp_path).process(image)
    for path in (tmp_path / "masks").glob("*.npz"):
        path.write_bytes(path.read_bytes()[:50])
    rerun = Pipeline(sam, clip_model, PipelineSettings(sam=LOOSE_SAM), tmp_path)
    rerun.process(image)
    assert rerun.sam_runs == 1


def test_an_interrupted_dataset_run_resumes(tiny_models, tmp_path, monkeypatch):
    sam, clip_model = tiny_models
    dataset = make_demo_dataset(5, 64, 80)
    real = pipeline_module.generate_masks
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the Colab runtime went away
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "generate_masks", flaky)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(sam, clip_model, PipelineSettings(sam=LOOSE_SAM), tmp_path).process_dataset(dataset, progress=False)
    monkeypatch.setattr(pipeline_module, "generate_masks", real)
    resumed = Pipeline(sam, clip_model, PipelineSettings(sam=LOOSE_SAM), tmp_path)
    results = resumed.process_dataset(dataset, progress=False)
    assert resumed.sam_runs == 3  # images 3, 4, 5; the first two came from the cache
    assert [r.image_id for r in results] == [s.image_id for s in dataset]
    assert not list(tmp_path.rglob("*.part"))


def test_segment_by_text_unites_the_kept_masks(tiny_models):
    sam, clip_model = tiny_models
    image = make_demo_dataset(1, 64, 80)[0].image
    pipe = Pipeline(sam, clip_model, PipelineSettings(sam=LOOSE_SAM))
    result = pipe.process(image)
    prediction = pipe.predict(result, "circle", SelectionSettings("top1"))
    assert prediction.keep.sum() == 1
    np.testing.assert_array_equal(prediction.mask, result.masks.mask(int(np.argmax(prediction.keep))))
    everything = pipe.segment_by_text(image, "circle", SelectionSettings("threshold", -1.0))
    np.testing.assert_array_equal(everything, result.masks.to_dense().any(0))


def test_both_engines_give_the_same_masks_and_share_the_cache_only_in_float32(tiny_models, tmp_path):
    sam, clip_model = tiny_models
    image = make_demo_dataset(1, 96, 128, seed=7)[0].image
    for settings in (LOOSE_SAM, replace(LOOSE_SAM, max_side=64), replace(LOOSE_SAM, crop_n_layers=1)):
        fast = generate_masks(sam, image, settings)
        reference = generate_masks(sam, image, replace(settings, engine="reference"))
        assert len(fast) == len(reference) > 0 and fast.shape == reference.shape == image.shape[:2]
        assert best_match_iou(fast, reference).min() >= 0.999 and best_match_iou(reference, fast).min() >= 0.999
    with pytest.raises(ValueError, match="Unknown SAM engine"):
        replace(LOOSE_SAM, engine="turbo")
    keys = {
        (engine, precision): Pipeline(
            sam, clip_model, PipelineSettings(sam=replace(LOOSE_SAM, engine=engine), precision=precision)
        ).sam_key
        for engine in ("fast", "reference")
        for precision in ("float32", "bfloat16")
    }
    assert keys["fast", "float32"] == keys["reference", "float32"]  # same masks: one cache entry
    assert keys["fast", "bfloat16"] != keys["reference", "bfloat16"]  # 16-bit decoders differ
