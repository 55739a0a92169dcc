import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers import evaluation, metrics, runs, viz  # noqa: E402
from helpers.data import Dataset, LabelledImage, Sample  # noqa: E402
from helpers.masks import MaskSet  # noqa: E402
from helpers.pipeline import ImageResult, Pipeline  # noqa: E402
from helpers.selection import SelectionSettings, cosine_span, threshold_bounds  # noqa: E402
from helpers.tuner import ThresholdTuner, selection_text, slider_range  # noqa: E402


def box(h, w, y0, y1, x0, x1):
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_metric_values_on_hand_made_masks():
    truth = box(10, 10, 0, 4, 0, 5)  # 20 px
    pred = box(10, 10, 2, 6, 0, 5)  # 20 px, 10 shared
    c = metrics.counts(pred, truth)
    assert (c.intersection, c.union, c.iou, c.precision, c.recall) == (10, 30, 1 / 3, 0.5, 0.5)
    empty = np.zeros((10, 10), bool)
    assert math.isnan(metrics.iou(empty, empty))  # nothing to find, nothing found: not scored
    assert metrics.iou(pred, empty) == 0.0 and math.isnan(metrics.counts(pred, empty).recall)
    assert metrics.iou(empty, truth) == 0.0 and math.isnan(metrics.counts(empty, truth).precision)
    ignore = box(10, 10, 4, 6, 0, 5)  # the 10 predicted pixels outside the truth are a crowd region
    ignored = metrics.counts(pred, truth, ignore)
    assert (ignored.iou, ignored.precision, ignored.recall) == (0.5, 1.0, 0.5)
    with pytest.raises(ValueError, match="ground truth is"):
        metrics.iou(pred, truth[:5])


def test_summary_mean_and_dataset_iou():
    rows = pd.DataFrame(
        [
            {
                "image_id": "a",
                "class": "cat",
                "iou": 1.0,
                "precision": 1.0,
                "recall": 1.0,
                "intersection": 10,
                "union": 10,
            },
            {
                "image_id": "b",
                "class": "cat",
                "iou": 0.0,
                "precision": 0.0,
                "recall": 0.0,
                "intersection": 0,
                "union": 90,
            },
            {
                "image_id": "c",
                "class": "cat",
                "iou": np.nan,
                "precision": np.nan,
                "recall": np.nan,
                "intersection": 0,
                "union": 0,
            },
        ]
    )
    summary = metrics.summarize(rows).set_index("class").loc["cat"]
    assert summary["mean_iou"] == 0.5 and summary["dataset_iou"] == 0.1
    assert (summary["images_scored"], summary["images"]) == (2, 3)


@pytest.fixture
def scene(tiny_models):
    """Three images with hand-made masks and embeddings steered towards 'cat' or 'dog'."""
    sam, clip_model = tiny_models
    pipe = Pipeline(sam, clip_model)
    cat, dog = pipe.text(["cat", "dog"])
    rng = np.random.default_rng(0)
    samples, results = [], []
    for k in range(3):
        dense = np.stack(
            [
                box(20, 30, 0, 10, 0, 15),
                box(20, 30, 5, 20, 10, 30),
                box(20, 30, 0, 20, 0, 30),
                box(20, 30, 12, 18, 2 + k, 8 + k),
            ]
        )
        mix = [(0.9, 0.1), (0.1, 0.9), (0.5, 0.5), (rng.random(), rng.random())]
        embeddings = np.stack([a * cat + b * dog + 0.05 * rng.normal(size=cat.shape) for a, b in mix]).astype(
            np.float32
        )
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        truth = {"cat": box(20, 30, 0, 10, 0, 14), "dog": box(20, 30, 6, 20, 10, 30)}
        ignore = {"cat": box(20, 30, 19, 20, 0, 30)} if k == 1 else {}
        samples.append(Sample(f"img{k}", np.full((20, 30, 3), 60 * k, np.uint8), truth, ignore))
        results.append(ImageResult(f"img{k}", MaskSet.from_masks(dense), embeddings))
    return Dataset("scene", samples, ["cat", "dog"]), results, pipe


def test_evaluate_and_the_fast_sweep_agree(scene):
    dataset, results, pipe = scene
    thresholds = np.linspace(-0.2, 1.0, 25)
    for name in ("cat", "dog"):
        for mode in ("threshold", "softmax"):
            fast = evaluation.class_sweep(
                dataset, results, pipe.text, name, thresholds, mode=mode, classes=["cat", "dog"]
            )
            for t, row in zip(thresholds, fast.itertuples()):
                slow = (
                    metrics.summarize(
                        evaluation.evaluate(
                            dataset,
                            results,
                            pipe.text,
                            [name],
                            SelectionSettings(mode, t),
                        )
                    )
                    if mode == "threshold"
                    else None
                )
                if slow is None:  # softmax competes over both classes
                    per = evaluation.evaluate(dataset, results, pipe.text, ["cat", "dog"], SelectionSettings(mode, t))
                    slow = metrics.summarize(per[per["class"] == name])
                slow = slow.iloc[0]
                for column in ("mean_iou", "dataset_iou", "precision", "recall"):
                    expected, got = slow[column], getattr(row, column)
                    assert (np.isnan(expected) and np.isnan(got)) or abs(expected - got) < 1e-9, (name, mode, t, column)
    best, value = metrics.best_threshold(fast)
    assert value == fast["mean_iou"].max()


def test_cat_prompt_finds_the_cat_mask(scene):
    dataset, results, pipe = scene
    per = evaluation.evaluate(dataset, results, pipe.text, ["cat"], SelectionSettings("top1"))
    assert np.allclose(per["iou"], 140 / 150)  # mask 0 (150 px) over the 140 px cat
    with pytest.raises(KeyError, match="Known classes: cat, dog"):
        evaluation.evaluate(dataset, results, pipe.text, ["horse"])


def test_recognition_and_mosaic_accuracy(tiny_models, scene):
    dataset, results, pipe = scene
    # mosaic top-1: a region inside the right tile counts, one across tiles does not
    tiles = {"cat": box(20, 30, 0, 20, 0, 15), "dog": box(20, 30, 0, 20, 15, 30)}
    mosaic = Dataset("m", [Sample("m0", dataset[0].image, tiles)], ["cat", "dog"])
    acc = evaluation.mosaic_top1_accuracy(mosaic, results[:1], pipe.text)
    # cat -> mask 0 (fully in the cat tile); dog -> mask 1 (area 300, 250 in the dog tile)
    assert acc == 1.0
    swapped = Dataset("m", [Sample("m0", dataset[0].image, {"cat": tiles["dog"], "dog": tiles["cat"]})], ["cat", "dog"])
    assert evaluation.mosaic_top1_accuracy(swapped, results[:1], pipe.text) == 0.0
    assert evaluation.mosaic_top1_hits(swapped, results[:1], pipe.text) == [("m0", "cat", False), ("m0", "dog", False)]
    # recognition: whole images embedded as cat, dog, dog (CLIP alone: 2 of 3 right); SAM + CLIP:
    # image 0's best region is dog-like (wrong), image 1's is dog (right), image 2 has no region
    # and falls back to the whole image (dog: right)
    cat, dog = pipe.text(["cat", "dog"])
    items = [LabelledImage(np.zeros((4, 4, 3), np.uint8), label, "") for label in ("cat", "dog", "dog")]
    whole = np.stack([cat, dog, dog])
    empty = ImageResult("e", MaskSet.from_masks(np.zeros((0, 4, 4), bool)), np.zeros((0, cat.size), np.float32))
    regions = [
        ImageResult("a", results[0].masks, np.stack([dog] * 4)),
        ImageResult("b", results[0].masks, np.stack([dog] * 4)),
        empty,
    ]
    whole[0] = cat
    scores = evaluation.recognition_accuracy(items, ["cat", "dog"], pipe.text, whole, regions)
    assert scores == {"clip_alone": 1.0, "sam_clip": pytest.approx(2 / 3), "images": 3}
    whole[2] = cat  # CLIP alone now wrong on image 2, and SAM + CLIP falls back to that
    scores = evaluation.recognition_accuracy(items, ["cat", "dog"], pipe.text, whole, regions)
    assert scores == {"clip_alone": pytest.approx(2 / 3), "sam_clip": pytest.approx(1 / 3), "images": 3}


def test_results_are_saved_with_their_settings_and_compared(scene, tmp_path):
    dataset, results, pipe = scene
    per = evaluation.evaluate(dataset, results, pipe.text, ["cat", "dog"], SelectionSettings("threshold", 0.3))
    summary = metrics.summarize(per)
    record = {"profile": "smoke", "dataset": {"name": "scene", "images": 3}, "recognition": {"clip_alone": 0.5}}
    first = runs.save_results(tmp_path, per, summary, {**record, "selection": SelectionSettings("threshold", 0.3)})
    second = runs.save_results(tmp_path, per, summary, {**record, "selection": SelectionSettings("top1")})
    assert first != second
    import json

    saved = json.loads((first / "results.json").read_text())
    assert saved["selection"]["threshold"] == 0.3 and len(saved["summary"]) == 2
    assert saved["recognition"] == {"clip_alone": 0.5} and saved["library_versions"]["torch"]
    table = pd.read_csv(first / "per_image.csv")
    assert table.shape == (per.shape[0], per.shape[1] + 2) and set(table["profile"]) == {"smoke"}
    summaries, differ = runs.compare_runs(first, second)
    assert len(summaries) == 4
    assert set(differ.index) == {"selection.mode", "selection.threshold"}
    assert differ.loc["selection.mode"].tolist() == ["threshold", "top1"]


def test_four_panel_holds_the_right_arrays():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    truth, pred = box(20, 30, 0, 10, 0, 10), box(20, 30, 5, 15, 5, 15)
    figure = viz.four_panel(image, truth, pred, "cat - IoU 0.14")
    arrays = [ax.images[0].get_array() for ax in figure.axes]
    assert np.array_equal(arrays[0], image)
    assert np.array_equal(arrays[1], truth) and np.array_equal(arrays[2], pred)
    assert np.array_equal(arrays[3][~pred], image[~pred]) and not np.array_equal(arrays[3][pred], image[pred])
    assert figure._suptitle.get_text() == "cat - IoU 0.14"
    plt.close(figure)


def test_colour_masks_and_gallery(scene, tmp_path):
    dataset, results, pipe = scene
    picture = viz.colour_masks(results[0].masks)
    assert len({tuple(p) for p in picture.reshape(-1, 3)}) >= 3
    assert np.array_equal(picture[16, 3 + 2], picture[16, 4 + 2])  # the smallest mask is on top
    selection = SelectionSettings("threshold", 0.3)
    per = evaluation.evaluate(dataset, results, pipe.text, ["cat", "dog"], selection)
    figure = viz.worst_gallery(per, dataset, results, pipe.text, selection, count=2, title="worst cases")
    worst = per.dropna(subset=["iou"]).nsmallest(2, "iou")
    assert len(figure.subfigs) == 3 and figure.subfigs[0]._suptitle.get_text() == "worst cases"
    assert not figure.subfigs[0].axes  # the title has its own row: it cannot cover a case's titles
    for sub, row in zip(figure.subfigs[1:], worst.itertuples(index=False)):
        image_index = [s.image_id for s in dataset].index(row.image_id)
        expected = pipe.predict(results[image_index], row[1], selection, ["cat", "dog"]).mask
        assert np.array_equal(sub.axes[2].images[0].get_array(), expected)
        assert f"IoU {row.iou:.3f}" in sub._suptitle.get_text()
    assert viz.save_figure(figure, tmp_path / "g.png").stat().st_size > 1000
    before = (tmp_path / "g.png").read_bytes()

    def broken(path, **kwargs):  # a save that dies half-way (Ctrl-C, a full disk)
        Path(path).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    figure.savefig = broken
    with pytest.raises(KeyboardInterrupt):
        viz.save_figure(figure, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes() == before and sorted(tmp_path.iterdir()) == [tmp_path / "g.png"]
    assert viz.save_figure(plt.figure(), tmp_path / "g.svg").read_bytes().startswith(b"<?xml")  # format: the suffix's
    plt.close("all")


def test_tuner_callbacks_update_the_figure_and_iou(scene):
    dataset, results, pipe = scene
    pipe.sam_runs = pipe.clip_image_runs = 0
    plt.close("all")
    before = plt.figure()
    tuner = ThresholdTuner(dataset, results, pipe.text, ["cat", "dog"], thresholds={"cat": 0.3, "dog": 0.55})
    assert plt.gcf() is before and plt.get_fignums() == [before.number]  # the tuner's figure is not pyplot's
    assert tuner.threshold.value == 0.3 and bytes(tuner.picture.value).startswith(b"\x89PNG")

    def shown():
        return tuner.figure.axes[2].images[0].get_array().astype(bool)

    for image_index, mode, threshold in (
        (0, "threshold", 0.3),
        (1, "threshold", 0.6),
        (2, "top1", 0.0),
        (1, "softmax", 0.5),
    ):
        tuner.image.value, tuner.mode.value, tuner.threshold.value = image_index, mode, threshold
        expected = pipe.predict(results[image_index], "cat", SelectionSettings(mode, threshold), ["cat", "dog"]).mask
        assert np.array_equal(shown(), expected)
        truth = dataset[image_index].masks["cat"]
        iou = metrics.iou(expected, truth, dataset[image_index].ignore_mask("cat"))
        assert tuner.iou == pytest.approx(iou) and f"IoU {iou:.3f}" in tuner.iou_label.value
    tuner.mode.value, tuner.threshold.value = "threshold", 1.0
    assert not shown().any() and "IoU 0.000" in tuner.iou_label.value
    tuner.truth_class.value = "dog"
    assert tuner.prompt.value == "dog" and tuner.threshold.value == 0.55  # the class's saved threshold
    assert np.array_equal(tuner.figure.axes[1].images[0].get_array().astype(bool), dataset[1].masks["dog"])
    tuner.prompt.value = " "
    assert "Type a prompt" in tuner.iou_label.value
    assert bytes(tuner.picture.value) == b"" and not tuner.figure.axes  # the old figure is cleared
    assert (pipe.sam_runs, pipe.clip_image_runs) == (0, 0)  # all from the cache
    widget = tuner.widget()
    assert widget.children[1] is tuner.picture and tuner.threshold in widget.children[0].children[1].children
    plt.close("all")


def test_tuner_says_when_the_class_is_not_in_the_image(scene):
    """It printed 'IoU nan' (a student's audit); the controls wrap instead of running under each other."""
    dataset, results, pipe = scene
    first = dataset[0]
    masks = {"cat": np.zeros_like(first.masks["cat"]), "dog": first.masks["dog"]}
    alone = Dataset("s", [Sample(first.image_id, first.image, masks)], ["cat", "dog"])
    tuner = ThresholdTuner(alone, results[:1], pipe.text, ["cat", "dog"])
    assert "no cat in this image: IoU 0.000, every kept mask a false alarm" in tuner.iou_label.value
    assert "no cat in this image" in tuner.figure._suptitle.get_text() and tuner.iou == 0
    tuner.threshold.value = tuner.threshold.max  # nothing kept
    assert "no cat in this image: none kept, right (IoU undefined)" in tuner.iou_label.value and np.isnan(tuner.iou)
    assert "nan" not in tuner.iou_label.value
    controls = tuner.widget().children[0]
    assert controls.layout.flex_flow == "row wrap" and controls.children[0].layout.flex == "0 0 auto"
    assert tuner.threshold.layout.width == "100%" and tuner.threshold.layout.max_width == "700px"
    plt.close("all")


def test_tuner_redraws_once_per_change_and_one_at_a_time(scene):
    """ipykernel 7 ran the mode change's redraw and the page slider's echo of its value (5.55e-17 for 0) at once in
    two threads, and the two redraws into one figure sent a blank picture (a browser check): the echo, under half a
    step, draws nothing; redraws wait for each other."""
    import threading
    import time

    dataset, results, pipe = scene
    tuner = ThresholdTuner(dataset, results, pipe.text, ["cat", "dog"])
    pictures = []
    tuner.picture.observe(lambda change: pictures.append(len(change["new"])), "value")
    tuner.mode.value = "top1"
    assert len(pictures) == 1 and tuner.threshold.value == 0
    tuner.threshold.value = 5.551115123125783e-17  # the page's echo: no second redraw
    assert len(pictures) == 1
    tuner.mode.value = "softmax"
    tuner.threshold.value = 0.7  # a real move redraws
    assert len(pictures) == 3 and all(size > 2500 for size in pictures)
    for typed in (0.703, 0.706):  # typed into the readout, under the step 0.01: drawn, the label follows
        tuner.threshold.value = typed
        assert f"p ≥ {typed:.3f}" in tuner.iou_label.value
    with tuner._lock:  # a redraw under way: another thread's waits for it
        drawn = len(pictures)
        other = threading.Thread(target=tuner.update)
        other.start()
        time.sleep(0.3)
        assert other.is_alive() and len(pictures) == drawn
    other.join(10)
    assert not other.is_alive()
    plt.close("all")


def test_tuner_title_and_label_name_the_mode_and_threshold(scene):
    dataset, results, pipe = scene
    tuner = ThresholdTuner(dataset, results, pipe.text, ["cat", "dog"], thresholds={"cat": 0.3})

    def title():
        return tuner.figure._suptitle.get_text()

    assert "threshold: cosine ≥ 0.300" in title() and "threshold: cosine ≥ 0.300" in tuner.iou_label.value
    kept = tuner.iou_label.value.split("<br>")[0]
    tuner.threshold.value = 0.301  # a step that may keep the same masks still shows in the title
    assert "cosine ≥ 0.301" in title() and "cosine ≥ 0.301" in tuner.iou_label.value
    assert tuner.iou_label.value.split("<br>")[0] == kept  # same masks, same IoU: only the rule tells them apart
    tuner.mode.value = "softmax"
    assert "softmax: p ≥ 0.500" in title() and "softmax: p ≥ 0.500" in tuner.iou_label.value
    tuner.mode.value = "top1"
    assert "top1: the best region only" in title() and tuner.threshold.disabled
    with_negatives = ThresholdTuner(
        dataset, results, pipe.text, ["cat", "dog"], selection=SelectionSettings("threshold", 0.35, ("dog",))
    )
    assert (
        with_negatives.threshold.value == 0.35
        and "cosine ≥ 0.350, not dog" in with_negatives.figure._suptitle.get_text()
    )
    expected = pipe.predict(results[0], "cat", SelectionSettings("threshold", 0.35, ("dog",)), ["cat", "dog"]).mask
    assert np.array_equal(with_negatives.figure.axes[2].images[0].get_array().astype(bool), expected)
    plt.close("all")


def test_slider_range_fits_the_mode(scene):
    assert slider_range("softmax") == (0.0, 1.0, 0.01) and slider_range("top1") == (0.0, 1.0, 0.01)
    assert slider_range("threshold", np.array([0.12, 0.38])) == (0.1, 0.4, 0.001)
    assert slider_range("threshold", np.array([0.12, 0.40]))[1] == 0.45  # strictly above the best score
    assert slider_range("threshold", np.array([0.12, 0.38]), include=[0.55])[1] == 0.6  # a saved threshold fits
    assert slider_range("threshold") == (0.0, 0.6, 0.001)
    with pytest.raises(ValueError, match="threshold"):
        slider_range("cosine")
    dataset, results, pipe = scene
    tuner = ThresholdTuner(dataset, results, pipe.text, ["cat", "dog"], thresholds={"cat": 0.3})
    sims = np.concatenate([r.embeddings for r in results]) @ pipe.text(["cat", "dog"]).T
    low, high = tuner.threshold.min, tuner.threshold.max
    assert low <= sims.min() and sims.max() < high and high - low <= sims.max() - sims.min() + 0.1 + 1e-9
    assert int(tuner.threshold.layout.max_width.removesuffix("px")) >= 400  # about 1 px per 0.001 of the range
    tuner.threshold.value = 0.32
    tuner.mode.value = "softmax"
    assert (tuner.threshold.min, tuner.threshold.max, tuner.threshold.value) == (0.0, 1.0, 0.5)
    tuner.threshold.value = 0.8
    tuner.mode.value = "threshold"  # each mode keeps its own last threshold
    assert (tuner.threshold.min, tuner.threshold.max, tuner.threshold.value) == (low, high, 0.32)
    tuner.mode.value = "softmax"
    assert tuner.threshold.value == 0.8 and not tuner.threshold.disabled
    assert selection_text(SelectionSettings("softmax", 0.8)) == "softmax: p ≥ 0.800"
    assert selection_text(SelectionSettings("top1", 0.8, ("dog",))) == "top1: the best region only"
    plt.close("all")


def test_the_sweep_grid_spans_the_runs_scores(scene):
    assert threshold_bounds([0.12, 0.38]) == (0.1, 0.4) and threshold_bounds([0.12, 0.40]) == (0.1, 0.45)
    assert threshold_bounds([]) is None and threshold_bounds([np.nan]) is None
    assert threshold_bounds([-3.0, 7.0]) == (-1.0, 1.05) and threshold_bounds([0.15, 0.15]) == (0.15, 0.2)
    for lowest in (np.float32(0.39999998), np.float32(-0.3), np.float32(0.35)):  # a hair below a multiple of 0.05
        low, high = threshold_bounds([lowest])
        assert low <= lowest < high
    dataset, results, pipe = scene
    grid = evaluation.threshold_grid(results, pipe.text, ["cat", "dog"])
    sims = np.concatenate([r.embeddings for r in results]) @ pipe.text(["cat", "dog"]).T
    assert grid[0] <= sims.min() and sims.max() < grid[-1] and np.allclose(np.diff(grid), 0.01)
    assert np.array_equal(cosine_span(results, pipe.text, ["cat", "dog"]), [sims.min(), sims.max()])
    _, sweeps = evaluation.best_thresholds(dataset, results, pipe.text, ["cat", "dog"], [-1.0, grid[0], grid[-1]])
    for table in sweeps.values():  # the first threshold keeps every mask, the last none
        assert table.recall[1] == table.recall[0] > 0 and table.recall[2] == 0
    assert np.array_equal(evaluation.threshold_grid([], pipe.text, ["cat"]), np.round(np.linspace(0, 0.5, 51), 3))
    assert np.array_equal(evaluation.threshold_grid(results, pipe.text, []), np.round(np.linspace(0, 0.5, 51), 3))
    cat = np.concatenate([r.embeddings for r in results]) @ pipe.text(["cat"]).T
    every = evaluation.threshold_grid(results, pipe.text, ["cat"], images=None)
    assert every[0] <= cat.min() and cat.max() < every[-1]
    for images, picked in ((1, [0]), (2, [0, 2])):  # spread over the run: the first image, then the first and last
        sims = np.concatenate([results[k].embeddings for k in picked]) @ pipe.text(["cat", "dog"]).T
        assert np.array_equal(cosine_span(results, pipe.text, ["cat", "dog"], images), [sims.min(), sims.max()])
    empty = ImageResult("none", MaskSet.from_masks(np.zeros((0, 20, 30), bool)), np.zeros((0, 8), np.float32))
    assert len(cosine_span([empty, empty], pipe.text, ["cat"])) == 0  # no regions: the 0-0.5 grid
    for wrong in ({"step": 0}, {"step": 0.1}, {"images": 0}):
        with pytest.raises(ValueError, match="step|images"):
            evaluation.threshold_grid(results, pipe.text, ["cat"], **wrong)


def test_worst_gallery_rows_have_no_gaps(scene):
    dataset, results, pipe = scene
    selection = SelectionSettings("threshold", 0.3)
    per = evaluation.evaluate(dataset, results, pipe.text, ["cat", "dog"], selection)
    figure = viz.worst_gallery(per, dataset, results, pipe.text, selection, count=3, title="worst cases")
    figure.canvas.draw()
    dpi = figure.dpi
    rows = [[ax.get_window_extent() for ax in sub.axes] for sub in figure.subfigs[1:]]
    for upper, lower in zip(rows, rows[1:]):
        gap = (min(b.y0 for b in upper) - max(b.y1 for b in lower)) / dpi
        assert gap < 0.8  # inches between one case's pictures and the next one's: its titles, no empty band
    width = sum(b.width for b in rows[0]) / dpi
    assert width > 0.85 * figure.get_size_inches()[0]  # the panels fill the width
    plt.close("all")


def test_sample_figure_gives_each_present_class_its_own_colour():
    masks = {f"class{i}": box(20, 30, i, i + 1, 0, 30) for i in range(12)}
    masks["absent"] = np.zeros((20, 30), bool)
    figure = viz.show_sample(np.zeros((20, 30, 3), np.uint8), masks)
    picture = figure.axes[1].images[0].get_array()
    colours = {tuple(picture[i, 0]) for i in range(12)}
    assert len(colours) == 12 and (0, 0, 0) not in colours
    assert [t.get_text() for t in figure.axes[1].get_legend().get_texts()] == [f"class{i}" for i in range(12)]
    plt.close(figure)


def test_sample_figures_keep_a_class_colour_from_image_to_image():
    """Notebook 01's square was orange in one image and blue in the next (colours followed each image's classes)."""
    classes = ["circle", "square", "star"]
    one = viz.show_sample(
        np.zeros((20, 30, 3), np.uint8),
        {"circle": box(20, 30, 0, 5, 0, 5), "square": box(20, 30, 10, 15, 10, 15)},
        "",
        classes,
    )
    two = viz.show_sample(
        np.zeros((20, 30, 3), np.uint8),
        {"circle": np.zeros((20, 30), bool), "square": box(20, 30, 10, 15, 10, 15)},
        "",
        classes,
    )
    assert tuple(one.axes[1].images[0].get_array()[12, 12]) == tuple(two.axes[1].images[0].get_array()[12, 12])
    assert tuple(one.axes[1].images[0].get_array()[2, 2]) != tuple(one.axes[1].images[0].get_array()[12, 12])
    plt.close("all")


def test_counts_check_shapes_and_dtypes_and_say_what_is_expected():
    truth = box(20, 30, 0, 10, 0, 10)
    with pytest.raises(ValueError, match=r"ignore mask is \(10, 30\).*must match the image"):
        metrics.counts(truth, truth, truth[:10])
    with pytest.raises(ValueError, match="boolean .* mask.*threshold soft masks first"):
        metrics.counts(truth * 0.7, truth)  # a soft prediction is not silently binarised at "not zero"
    with pytest.raises(ValueError, match="prediction is"):
        metrics.counts(truth[:5], truth)
    assert metrics.counts(truth.astype(np.uint8), truth).iou == 1.0  # 0/1 integers are fine


def test_sweep_refuses_thresholds_evaluate_cannot_use(scene):
    dataset, results, pipe = scene
    for bad in (-np.inf, np.nan):
        with pytest.raises(ValueError, match="finite"):
            evaluation.class_sweep(dataset, results, pipe.text, "cat", [0.1, bad])
        with pytest.raises(ValueError, match="finite"):
            SelectionSettings("threshold", bad)


def test_a_class_absent_from_every_image_is_left_out_and_tolerated(scene):
    dataset, results, pipe = scene
    samples = [Sample(s.image_id, s.image, {**s.masks, "horse": np.zeros((20, 30), bool)}) for s in dataset]
    with_horse = Dataset("scene", samples, ["cat", "dog", "horse"])
    assert evaluation.classes_to_evaluate(with_horse) == (["cat", "dog"], ["horse"])
    assert evaluation.classes_to_evaluate(with_horse, ["horse"]) == (["horse"], [])
    best, sweeps = evaluation.best_thresholds(with_horse, results, pipe.text, ["cat", "horse"], [1.5, 2.0])
    horse = best.set_index("class").loc["horse"]  # nothing predicted, nothing to find: all NaN
    assert np.isnan(horse["best_threshold"]) and np.isnan(horse["mean_iou"])
    low, _ = evaluation.best_thresholds(with_horse, results, pipe.text, ["horse"], [-1.0, 1.5, 2.0])
    assert np.isnan(low.loc[0, "best_threshold"])  # -1 predicts every pixel, IoU 0: still no best for no truth
    assert not np.isnan(best.set_index("class").loc["cat", "best_threshold"])
    summary = metrics.summarize(evaluation.evaluate(with_horse, results, pipe.text, ["horse"], SelectionSettings()))
    assert summary.loc[0, "images_scored"] <= 3  # empty truth and prediction: NaN, not an error
    figure = viz.plot_sweep(sweeps["horse"], "horse", horse["best_threshold"])
    assert "no data" in figure.axes[0].texts[0].get_text()
    plt.close("all")


def test_figures_lay_out_what_they_show():
    one = viz.show_regions([np.zeros((8, 8, 3), np.uint8)], np.array([0.3]), np.array([True]), "one region")
    assert len(one.axes) == 1 and one.get_size_inches()[0] < 6  # a grid, not a 1587 px strip for one thumbnail
    nine = viz.show_regions([np.zeros((8, 8, 3), np.uint8)] * 9, np.linspace(0, 1, 9), np.zeros(9, bool))
    assert len(nine.axes) == 9 and nine.axes[0].get_subplotspec().get_gridspec().get_geometry() == (3, 3)
    masks = MaskSet.from_masks(box(20, 30, 0, 5, 0, 5)[None])
    assert viz.show_masks(np.zeros((20, 30, 3), np.uint8), masks).axes[1].get_title() == "1 SAM mask"
    sample = viz.show_sample(np.zeros((20, 30, 3), np.uint8), {"road": box(20, 30, 0, 20, 0, 30)})
    sample.canvas.draw()
    legend = sample.axes[1].get_legend().get_window_extent()
    assert legend.x0 >= sample.axes[1].get_window_extent().x1  # beside the label map, not over it
    plt.close("all")


def test_the_tuner_starts_from_the_newest_thresholds_found_with_the_same_models(tmp_path):
    import os

    empty = pd.DataFrame({"class": ["cat"], "mean_iou": [0.5]})
    models = {"sam": {"weights": "sam:1"}, "clip": {"weights": "clip:1"}}
    best = [{"class": "cat", "best_threshold": 0.3}, {"class": "dog", "best_threshold": float("nan")}]
    record = {"dataset": {"name": "scene"}, "models": models}
    older = runs.save_results(tmp_path, empty, empty, {**record, "best_thresholds": best})
    other = runs.save_results(
        tmp_path,
        empty,
        empty,
        {
            **record,
            "models": {"sam": {"weights": "sam:2"}},
            "best_thresholds": [{"class": "cat", "best_threshold": 0.9}],
        },
    )
    newest = runs.save_results(tmp_path, empty, empty, record)  # no sweep saved: skipped, not {}
    for age, run in enumerate((older, other, newest)):
        os.utime(run / "results.json", (1000 + age, 1000 + age))
    got = runs.latest_best_thresholds(tmp_path, "scene", models)
    assert got["cat"] == 0.3 and not np.isfinite(got["dog"])
    assert runs.latest_best_thresholds(tmp_path, "scene")["cat"] == 0.9  # any models: the newest with a sweep
    assert runs.latest_best_thresholds(tmp_path, "other") == {}
