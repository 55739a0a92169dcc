"""Instances: predicted objects from cached masks and embeddings, by the documented rules."""

import numpy as np
import pytest

from helpers.instances import Instance, InstancePredictions, from_result, mask_box
from helpers.masks import MaskSet
from helpers.selection import ImageResult, SelectionSettings

NAMES = ["cat", "dog", "background"]


def text(names):
    """Orthogonal unit vectors per known name (a stand-in for CLIP's text encoder)."""
    return np.eye(4, dtype=np.float32)[[NAMES.index(n) for n in names]]


def boxes(*spans, shape=(40, 60)):
    masks = np.zeros((len(spans), *shape), bool)
    for k, (y0, y1, x0, x1) in enumerate(spans):
        masks[k, y0:y1, x0:x1] = True
    return masks


def embedding(cat=0.0, dog=0.0, background=0.0):
    vector = np.array([cat, dog, background, 0.05], np.float32)
    return vector / np.linalg.norm(vector)


def test_instance_box_is_exclusive_and_checked():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert Instance(mask, "cat").box == (3, 2, 9, 5) == mask_box(mask)
    assert mask_box(np.zeros((4, 4), bool)) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="H x W"):
        Instance(np.zeros((2, 3, 4), bool), "cat")


def test_masks_go_to_their_best_class_background_drops_duplicates_merge():
    dense = boxes((0, 20, 0, 20), (0, 20, 0, 22), (25, 35, 30, 50), (0, 10, 40, 60))
    embeddings = np.stack(
        [
            embedding(cat=0.30, dog=0.29),  # cat, the whole
            embedding(cat=0.31, dog=0.29),  # the same cat (IoU 0.91), scored higher: kept instead
            embedding(cat=0.10, dog=0.30),  # a dog
            embedding(cat=0.20, background=0.35),  # background wins: dropped
        ]
    )
    result = ImageResult("x", MaskSet.from_masks(dense), embeddings)
    found = from_result(result, text, ["cat", "dog"], SelectionSettings(negatives=("background",)))
    assert [(i.label, i.box) for i in found] == [("dog", (30, 25, 50, 35)), ("cat", (0, 0, 22, 20))] or [
        (i.label, i.box) for i in found
    ] == [("cat", (0, 0, 22, 20)), ("dog", (30, 25, 50, 35))]
    scores = {i.label: i.score for i in found}
    logits = 100 * np.array([0.31, 0.29, 0.0]) / np.linalg.norm([0.31, 0.29, 0.0, 0.05])
    expected = np.exp(logits[0] - logits.max()) / np.exp(logits - logits.max()).sum()
    assert scores["cat"] == pytest.approx(expected, rel=1e-5)  # softmax over classes + negatives, scale 100
    assert all(0.0 < s <= 1.0 for s in scores.values())
    assert [i.score for i in found] == sorted((i.score for i in found), reverse=True)
    # no negative: the background-like mask is named after its best class instead
    assert len(from_result(result, text, ["cat", "dog"], SelectionSettings())) == 3
    # a looser NMS keeps both cats; max_instances caps the count
    assert len(from_result(result, text, ["cat", "dog"], SelectionSettings(negatives=("background",)), 0.95)) == 3
    assert len(from_result(result, text, ["cat", "dog"], max_instances=1)) == 1


def test_nms_only_within_a_class_and_empty_inputs():
    dense = boxes((0, 20, 0, 20), (0, 20, 0, 20))
    result = ImageResult("x", MaskSet.from_masks(dense), np.stack([embedding(cat=1), embedding(dog=1)]))
    assert sorted(i.label for i in from_result(result, text, ["cat", "dog"])) == ["cat", "dog"]
    empty = ImageResult("y", MaskSet.from_masks(np.zeros((0, 8, 8), bool)), np.zeros((0, 4), np.float32))
    assert from_result(empty, text, ["cat"]) == []
    with pytest.raises(ValueError, match="empty class list"):
        from_result(result, text, [])
    predictions = InstancePredictions([result, empty], text, ["cat", "dog"])
    assert len(predictions) == 2 and predictions.ids == ["x", "y"] and predictions[1] == []
    assert [len(p) for p in predictions[:2]] == [2, 0]


def test_pipeline_instances_use_only_the_cache(tiny_models, tmp_path):
    from conftest import LOOSE_SAM

    from helpers.data import make_demo_dataset
    from helpers.pipeline import Pipeline, PipelineSettings

    sam, clip_model = tiny_models
    pipe = Pipeline(sam, clip_model, PipelineSettings(sam=LOOSE_SAM), cache_dir=tmp_path)
    image = make_demo_dataset(1, 64, 80, seed=3)[0].image
    result = pipe.process(image)
    runs = (pipe.sam_runs, pipe.clip_image_runs)
    found = pipe.instances(result, ["circle", "square"], SelectionSettings(negatives=("background",)))
    assert (pipe.sam_runs, pipe.clip_image_runs) == runs
    assert all(i.label in ("circle", "square") and i.mask.shape == (64, 80) for i in found)


def test_show_instances_draws_a_box_and_a_readable_label_per_object():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers import viz

    dense = boxes((5, 30, 5, 40), (5, 30, 5, 40), (6, 20, 8, 30))  # three labels that would share a corner
    found = [Instance(m, label, 0.5) for m, label in zip(dense, ["cat", "dog", "cat"])]
    figure = viz.show_instances(np.zeros((40, 60, 3), np.uint8), found, "t")
    axis = figure.axes[-1]
    assert len(axis.patches) == 3 and [t.get_text() for t in axis.texts].count("cat 0.50") == 2
    positions = sorted(t.get_position()[1] for t in axis.texts)
    assert all(b - a >= 0.05 * 40 - 1e-9 for a, b in zip(positions, positions[1:]))  # stacked, not on top
    plt.close(figure)


def test_scores_are_at_the_clips_own_temperature():
    """Instance scores (and the softmax selection mode) are CLIP's zero-shot probabilities at the temperature the CLIP
    learnt: 100 for OpenAI's, about 14 for the demo CLIP. At 100 every demo-profile score was exactly 1.0 (a review
    as a new user): exported scores and mask AP's ranking said nothing."""
    from helpers.clip_scoring import TextEmbeddings
    from helpers.config import DEMO_SETTINGS
    from helpers.data import DEMO_CLASSES, make_demo_dataset
    from helpers.demo.models import load_demo_models
    from helpers.pipeline import Pipeline
    from helpers.selection import logit_scale, mask_scores

    sam, clip_model = load_demo_models("cpu")
    text = TextEmbeddings(clip_model)
    learnt = float(clip_model.model.logit_scale.detach().exp())
    assert logit_scale(text) == pytest.approx(learnt) and 10 < logit_scale(text) < 20
    assert logit_scale(lambda names: None) == 100.0  # an encoder that does not say: OpenAI's
    pipe = Pipeline(sam, clip_model, DEMO_SETTINGS)
    scores = []
    for sample in make_demo_dataset(3, seed=719):
        result = pipe.process(sample.image, sample.image_id)
        found = from_result(result, pipe.text, list(DEMO_CLASSES), SelectionSettings(negatives=("background",)))
        scores += [i.score for i in found]
        sims = result.embeddings @ pipe.text([*DEMO_CLASSES, "background"]).T
        logits = logit_scale(pipe.text) * sims.astype(np.float64)
        for i in found:  # each is its class's softmax probability at that scale
            index = next(k for k in range(len(result.masks)) if np.array_equal(result.masks.mask(k), i.mask))
            p = np.exp(logits[index] - logits[index].max())
            assert i.score == pytest.approx((p / p.sum()).max(), rel=1e-5)
    assert len(scores) >= 5 and len(set(scores)) == len(scores) and min(scores) < 0.999  # no ties at 1.0
    sims = np.array([[0.5, 0.3], [0.4, 0.35]])
    hot, cool = mask_scores(sims, 0, "softmax"), mask_scores(sims, 0, "softmax", scale=14.0)
    assert cool[0] < hot[0] and cool[1] < hot[1]  # the same winners, softer probabilities
