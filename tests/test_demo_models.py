"""The trained demo models: committed weights, their registry, what they reach on fresh images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.checkpoints.ensure import CheckpointError, sha256_of
from helpers.data import DEMO_CLASSES, make_demo_dataset
from helpers.demo.models import (
    DEMO_CLIP_FILE,
    DEMO_SAM_FILE,
    DEMO_SETTINGS,
    DEMO_SHA256,
    DEMO_WEIGHTS_DIR,
    demo_weight_path,
    load_demo_models,
)
from helpers.demo.train import (
    DEMO_SEED,
    ceiling_from_masks,
    ceiling_table,
    demo_sam_high_res_settings,
    demo_sam_settings,
    demo_sam_zoomed_settings,
    encode_text_prefix,
    evaluate_clip,
    evaluate_pipeline,
    gt_cutouts,
    main,
)
from helpers.pipeline import Pipeline

FRESH_SEED = 9090  # never used by train_demo (its scenes come from another generator) nor its evaluation


@pytest.fixture(scope="module")
def demo_models():
    return load_demo_models("cpu")


def test_the_committed_summary_is_the_recipes():
    """``train_summary.json`` beside the weights was written by the default command as it stands (or by ``--only
    clip`` beside the SAM that command trained, which keeps that SAM's record): the settings of its three SAM stages
    and of CLIP are today's recipe, and its sums are the registered ones (a recipe constant changed without
    retraining, or weights replaced without their summary, fail here)."""
    from dataclasses import asdict

    from helpers.demo.train_clip import ClipTrainSettings
    from helpers.demo.train_sam import SamTrainSettings

    summary = json.loads((DEMO_WEIGHTS_DIR / "train_summary.json").read_text())
    first = demo_sam_settings()
    second = demo_sam_high_res_settings(first)
    recipe = {
        "sam_settings": first,
        "sam_high_res_settings": second,
        "sam_zoomed_settings": demo_sam_zoomed_settings(second),
        "clip_settings": ClipTrainSettings(seed=DEMO_SEED),
    }
    from helpers.demo.train import CUTOUT_SAM_SETTINGS, CUTOUT_THREADS, SAM_CUTOUT_PARTS

    recipe["cutout_sam_settings"] = CUTOUT_SAM_SETTINGS  # CLIP learns from the masks SAM makes with these
    # settings added after the committed run, at the value that run trained with (SAM's own decoder)
    later = {"fast_decoder": False}
    for key, settings in recipe.items():
        recorded = {**later, **summary[key]} if isinstance(settings, SamTrainSettings) else summary[key]
        assert recorded == json.loads(json.dumps(asdict(settings), default=str)), key
    assert (summary["threads"], summary["sam_processes"], summary["cutout_threads"]) == (2, 2, CUTOUT_THREADS)
    assert SAM_CUTOUT_PARTS == 2 and summary["sha256"] == DEMO_SHA256


def test_weights_match_their_registry_and_fit_the_budget():
    sizes = 0
    for name, digest in DEMO_SHA256.items():
        path = DEMO_WEIGHTS_DIR / name
        assert sha256_of(path) == digest
        sizes += path.stat().st_size
    assert sizes <= 20 * 2**20


def test_damaged_weights_are_refused(tmp_path):
    shutil.copy(DEMO_WEIGHTS_DIR / DEMO_SAM_FILE, tmp_path / DEMO_SAM_FILE)
    with open(tmp_path / DEMO_SAM_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(CheckpointError, match="sha256"):
        demo_weight_path(DEMO_SAM_FILE, tmp_path)
    with pytest.raises(CheckpointError, match="missing"):
        demo_weight_path(DEMO_CLIP_FILE, tmp_path)


REPORT_SEEDS = (7301, 7302, 7303, 7304)  # issue 25's report images (benchmarks/eval_demo_models.py): 8 per seed


def test_sam_ceiling_and_pipeline_iou_on_the_report_images(demo_models, tmp_path):
    """Two of the targets' own measures on the report's 32 images, SAM's masks made once for both (through one
    pipeline cache; SAM's generator is most of the time, ~45 s on one thread):

    - the SAM ceiling, on 77 shapes, >= 0.90: a few images are too few to tell 0.88 from 0.90 (the 3 images of seed
      9090 this test used gave 0.91, 16 gave 0.90). The committed SAM: 0.932 (0.908 while two stars hidden but for 2
      pixels each counted as shapes to find, before ``MIN_VISIBLE``);
    - the pipeline: each shape an image holds prompted by name through the demo profile's settings, mean IoU per class
      >= 0.80 (committed models: circle 0.93, square 0.92, star 0.82, triangle 0.87 by
      benchmarks/eval_demo_models.py)."""
    sam, clip_model = demo_models
    pipeline = Pipeline(sam, clip_model, DEMO_SETTINGS, cache_dir=tmp_path)
    tables = []
    for seed in REPORT_SEEDS:
        dataset = make_demo_dataset(8, seed=seed)
        tables.append(ceiling_from_masks(dataset, (pipeline.segment(sample.image) for sample in dataset.samples)))
    assert pipeline.sam_runs == 32 and sum(len(table) for table in tables) == 77
    best = np.concatenate([table["best_mask_iou"].to_numpy() for table in tables])
    union = np.concatenate([table["best_union_iou"].to_numpy() for table in tables])
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for seed in REPORT_SEEDS:
        scores = evaluate_pipeline(sam, clip_model, seed=seed, images=8, mosaics=0, cache_dir=tmp_path)
        assert scores["sam_runs"] == 0  # the same images and settings: SAM's masks read from the cache
        for name, mean in scores["prompt_iou_per_class"].items():
            totals[name] = totals.get(name, 0.0) + mean * scores["prompts_per_class"][name]
            counts[name] = counts.get(name, 0) + scores["prompts_per_class"][name]
    assert set(counts) == set(DEMO_CLASSES) and sum(counts.values()) == 77, counts
    per_class = {name: totals[name] / counts[name] for name in counts}
    shown = {name: round(value, 4) for name, value in per_class.items()}  # for the messages only
    assert union.mean() >= best.mean()
    assert best.mean() >= 0.90, f"SAM ceiling {best.mean():.4f} < 0.90 (committed: 0.9322); pipeline: {shown}"
    assert min(per_class.values()) >= 0.80, f"pipeline per class {shown} (SAM ceiling {best.mean():.4f})"


def test_the_ceiling_through_a_cached_pipeline_is_generate_masks_own(demo_models, tmp_path):
    """What the report test relies on: masks from ``Pipeline.segment`` (made, then read back from its cache) give the
    ceiling table ``generate_masks`` gives (one image of seed 9090, ~2 s)."""
    sam, clip_model = demo_models
    dataset = make_demo_dataset(1, seed=FRESH_SEED)
    direct = ceiling_table(sam, dataset, DEMO_SETTINGS.sam)
    pipeline = Pipeline(sam, clip_model, DEMO_SETTINGS, cache_dir=tmp_path)
    made = ceiling_from_masks(dataset, [pipeline.segment(dataset.samples[0].image)])
    read = ceiling_from_masks(dataset, [pipeline.segment(dataset.samples[0].image)])
    assert pipeline.sam_runs == 1 and len(direct) > 0
    pd.testing.assert_frame_equal(made, direct)
    pd.testing.assert_frame_equal(read, direct)


@pytest.mark.xfail(
    strict=True,
    reason="target missed: on the report's 12 mosaics the top-1 is 0.77 (docs/demo-models.md, 'End to end, and the "
    "targets'); this test asserts the target on seed 9090",
)
def test_mosaic_target_on_fresh_images(demo_models):
    """SLIP's mosaic top-1 through SAM + CLIP with the demo profile's settings (>= 0.90)."""
    sam, clip_model = demo_models
    scores = evaluate_pipeline(sam, clip_model, seed=FRESH_SEED, images=0, mosaics=4)
    assert scores["mosaic_top1"] >= 0.90, scores


def test_clip_recognises_ground_truth_cutouts(demo_models):
    """The target's own measure on the report's images (77 cut-outs; the committed CLIP: all 77 right): the 20
    cut-outs of seed 9090 this test used are too few for a 0.95 bound (one miss is 0.05; the ViT CLIP before this one
    named 18, this one 20)."""
    _, clip_model = demo_models
    scores = evaluate_clip(clip_model, seeds=REPORT_SEEDS, images=8)
    assert scores["cutouts"] == 77, scores
    assert scores["recognition_masked"] >= 0.95, scores


def test_short_text_encoding_equals_clip_encode_text(demo_models):
    import clip

    model = demo_models[1].model
    tokens = clip.tokenize(["a photo of a red circle.", "star", "a grey square shape"])
    with torch.no_grad():
        assert torch.allclose(encode_text_prefix(model, tokens), model.encode_text(tokens), atol=1e-5)


def test_gt_cutouts_are_masked_on_grey():
    crops, labels = gt_cutouts(make_demo_dataset(1, seed=FRESH_SEED))
    assert crops and len(crops) == len(labels)
    assert all(crop.ndim == 3 and crop.dtype.name == "uint8" for crop in crops)


def test_quick_training_runs_end_to_end(tmp_path, capsys):
    """In this process (its imports are paid already; the cut-out workers still start as in a real run):
    ``python -m helpers.demo.train`` itself is run by ``test_package_layout``."""
    threads = torch.get_num_threads()
    try:
        main(["--quick", "--no-progress", "--threads", "1", "--seed", "3", "--out-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / DEMO_SAM_FILE).is_file() and (tmp_path / DEMO_CLIP_FILE).is_file()
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["threads"] == 1  # --threads reaches training
    assert summary["sam_settings"]["seed"] == summary["clip_settings"]["seed"] == 3  # and --seed
    assert summary["cutout_sam_settings"]["stability_score_thresh"] == 0.0  # CLIP's cut-outs ungated, as committed
    assert summary["sam_zoomed_settings"]["steps"] == 2 and summary["sam_zoomed_wall_s"] > 0  # the third stage ran
    assert summary["cpu"]["kernels"] == torch.backends.cpu.get_cpu_capability() and summary["cpu"]["model"]
    # CLIP trained with SigLIP's loss: its scale and bias were learnt (moved from where they start)
    assert summary["clip_settings"]["loss"] == "sigmoid"
    assert summary["clip_final_bias"] != summary["clip_settings"]["sigmoid_bias"]
    assert summary["clip_final_scale"] != pytest.approx(summary["clip_settings"]["sigmoid_scale"], abs=1e-6)
    assert "sam_ceiling" in capsys.readouterr().out


def test_sam_masks_are_named_only_when_they_match_a_shape():
    """CLIP learns SAM's masks under the name of the shape each matches (IoU >= 0.7), or as the
    background; merges of shapes get no name and are left out, and so are parts unless asked for."""
    from helpers.demo.scenes import Scene
    from helpers.demo.train_clip import BACKGROUND, PART, sam_mask_cutouts
    from helpers.masks import MaskSet

    h, w = 60, 90
    a, b = np.zeros((h, w), bool), np.zeros((h, w), bool)
    a[10:40, 10:40], b[10:40, 50:80] = True, True
    image = np.full((h, w, 3), 90, np.uint8)
    image[a], image[b] = (220, 30, 30), (30, 60, 220)
    scene = Scene(image, ["square", "circle"], [(220, 30, 30), (30, 60, 220)], np.stack([a, b]))
    close = a.copy()
    close[10:13, 10:40] = False  # IoU 0.9 with the square
    part = np.zeros((h, w), bool)
    part[10:40, 10:25] = True  # half the square: IoU 0.5
    sky = np.zeros((h, w), bool)
    sky[45:60, 0:90] = True  # background only
    masks = MaskSet.from_masks(np.stack([close, a | b, part, sky, b]))
    named = sam_mask_cutouts(scene, masks, min_iou=0.7, min_area=20)
    assert [(c.kind, c.colour) for c in named] == [("square", "red"), (BACKGROUND, None), ("circle", "blue")]
    assert named[0].image.shape[:2] == (33, 36)  # the mask's box with the pipeline's 10 % margin
    # with parts: the half square (IoU 0.5, all inside it) is a red part; the merge of both shapes still has no name
    named = sam_mask_cutouts(scene, masks, min_iou=0.7, min_area=20, part_max_iou=0.6)
    assert [(c.kind, c.colour) for c in named] == [
        ("square", "red"), (PART, "red"), (BACKGROUND, None), ("circle", "blue")
    ]  # fmt: skip
    loose = part.copy()
    loose[40:44, 10:25] = True  # 12 % of it off the square: not a part
    assert sam_mask_cutouts(scene, MaskSet.from_masks(loose[None]), 0.7, 20, part_max_iou=0.6) == []
    # a piece of a big square that also covers a small shape lying on it, which it matches better (IoU 0.08 against
    # 0.05): the square's part all the same, since 92 % of it lies in the square
    big, dot = np.zeros((h, w), bool), np.zeros((h, w), bool)
    big[0:60, 0:60], dot[20:24, 20:24] = True, True
    on_big = Scene(image, ["square", "circle"], [(220, 30, 30), (30, 60, 220)], np.stack([big & ~dot, dot]))
    piece = np.zeros((h, w), bool)
    piece[15:29, 15:29] = True  # 196 px: 180 in the square, the dot's 16
    named = sam_mask_cutouts(on_big, MaskSet.from_masks(piece[None]), 0.7, 20, part_max_iou=0.6)
    assert [(c.kind, c.colour) for c in named] == [(PART, "red")]


def test_a_part_is_captioned_by_its_colour_only():
    """No shape's name is true of a part: its captions and the batch's truth table use the colour alone."""
    from helpers.demo.train_clip import PART, CutOut, _caption

    rng = np.random.default_rng(0)
    part = CutOut(np.zeros((4, 4, 3), np.uint8), PART, "red")
    for _ in range(20):
        text, kind, colour = _caption(part, rng)
        assert (kind, colour) == (None, "red") and "red" in text and PART not in text
    from helpers.demo.train_clip import ClipTrainSettings, _clip_batch

    cutouts = [part, CutOut(part.image, "circle", "red"), CutOut(part.image, "square", "blue")]
    _, _, truth = _clip_batch(rng, torch.zeros(3, 3, 4, 4), cutouts, ClipTrainSettings(batch=3))
    assert truth.diagonal().all()  # every image has its own caption as a positive
    assert not truth[0, 2] and not truth[2, 0]  # a part and a blue square share no caption


def test_clip_alone_asks_for_the_sam_it_learns_from(tmp_path, capsys):
    from helpers.demo.train import main

    with pytest.raises(SystemExit):
        main(["--only", "clip", "--quick", "--out-dir", str(tmp_path)])
    assert "train SAM first" in capsys.readouterr().err


def test_eval_script_tells_touching_shapes_from_lone_ones():
    from conftest import load_benchmark

    touches_another = load_benchmark("eval_demo_models").touches_another
    masks = np.zeros((4, 40, 60), bool)
    masks[0, 5:15, 5:15] = True
    masks[1, 5:15, 16:26] = True  # one background pixel between (column 15): 2 px apart, touching
    masks[2, 25:35, 40:50] = True
    masks[3, 30:38, 5:10] = True
    assert touches_another(masks).tolist() == [True, True, False, False]
    masks[3, 30:38, 5:38] = True  # up to column 37, 3 px from mask 2: not touching
    assert touches_another(masks).tolist() == [True, True, False, False]
    masks[3, 30:38, 5:39] = True  # 2 px
    assert touches_another(masks).tolist() == [True, True, True, True]
    masks[3, 30:38, 5:45] = True  # overlapping
    assert touches_another(masks).tolist() == [True, True, True, True]
    diagonal = np.zeros((2, 20, 20), bool)
    diagonal[0, 2:6, 2:6] = True
    diagonal[1, 8:12, 8:12] = True  # 3 px apart on the diagonal (chessboard distance)
    assert touches_another(diagonal).tolist() == [False, False]
    diagonal[1, 7, 7] = True  # 2 px
    assert touches_another(diagonal).tolist() == [True, True]


def test_eval_script_finds_each_mosaic_tiles_own_shape():
    """``tile_shapes`` gives the mosaics ``make_mosaics(object_crops(...))`` builds and, per tile, the pixels of the
    tile's own class as the tile shows them (here: nearer that class's colour than the grey), inside the tile; with
    two cut-outs of each class of other sizes, so that a cut-out's mask taken from another cut-out shows."""
    from conftest import load_benchmark

    from helpers.data import Dataset, Sample, make_mosaics, object_crops

    tile_shapes = load_benchmark("eval_demo_models").tile_shapes
    colours = {"circle": (250, 0, 0), "square": (0, 250, 0), "star": (0, 0, 250), "triangle": (250, 250, 0)}
    places = [np.s_[5:55, 5:20], np.s_[5:15, 10:75], np.s_[30:55, 40:75], np.s_[5:55, 5:75]]
    samples = []
    for i, (name, colour) in enumerate(colours.items()):
        for copy in range(2):  # each class twice, in two of the boxes, with a notch: the crops differ
            rows, cols = places[(i + copy) % 4]
            image = np.full((60, 80, 3), 127, np.uint8)
            masks = {other: np.zeros((60, 80), bool) for other in colours}
            masks[name][rows, cols] = True
            masks[name][rows.start + 2 : rows.start + 4 + 3 * copy, cols] = False
            image[masks[name]] = colour
            samples.append(Sample(f"s{i}{copy}", image, masks))
    dataset = Dataset("shapes", samples, sorted(colours))
    tiles, shapes = tile_shapes(dataset, mosaics=4, seed=3)
    expected = make_mosaics(object_crops(dataset, min_area=200), count=4, seed=3)
    assert len(tiles.samples) == len(shapes) == 4
    for sample, pixels, same in zip(tiles.samples, shapes, expected.samples):
        assert np.array_equal(sample.image, same.image) and list(pixels) == list(sample.masks)
        for name, tile in sample.masks.items():
            image = sample.image.astype(int)
            coloured = tile & (np.abs(image - colours[name]).sum(2) < np.abs(image - 127).sum(2))
            assert pixels[name].any() and not (pixels[name] & ~tile).any()
            assert (pixels[name] & coloured).sum() / (pixels[name] | coloured).sum() >= 0.99
