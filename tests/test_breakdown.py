import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers import viz  # noqa: E402
from helpers.breakdown import error_breakdown, mask_ceilings, verdict  # noqa: E402
from helpers.data import make_demo_dataset  # noqa: E402
from helpers.masks import MaskSet  # noqa: E402
from helpers.pipeline import Pipeline, PipelineSettings  # noqa: E402
from helpers.selection import SelectionSettings  # noqa: E402


def box(y0, y1, x0, x1, shape=(10, 10)):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_mask_ceilings_on_hand_made_masks():
    truth = box(0, 4, 0, 8)  # 32 px
    masks = MaskSet.from_masks(np.stack([box(0, 4, 0, 4), box(0, 4, 4, 8), box(0, 10, 0, 10), box(4, 6, 0, 8)]))
    got = mask_ceilings(masks, truth)
    assert got["sam_best_mask"] == pytest.approx(16 / 32)  # each half alone
    assert got["sam_best_union"] == pytest.approx(1.0)  # the two halves together: exact
    assert got["sam_atom_bound"] == pytest.approx(1.0)
    # only a mask that overshoots: the atom bound may split it where masks cannot
    overshoot = MaskSet.from_masks(np.stack([box(0, 6, 0, 8), box(4, 6, 0, 8)]))
    got = mask_ceilings(overshoot, truth)
    assert got["sam_best_mask"] == pytest.approx(32 / 48) and got["sam_best_union"] == pytest.approx(32 / 48)
    assert got["sam_atom_bound"] == pytest.approx(1.0)  # atom {mask 0 only} is the truth exactly
    ignore = box(4, 6, 0, 8)  # the overshoot ignored: the single mask becomes exact
    assert mask_ceilings(overshoot, truth, ignore)["sam_best_mask"] == pytest.approx(1.0)
    assert np.isnan(mask_ceilings(masks, np.zeros((10, 10), bool))["sam_best_union"])
    empty = MaskSet.from_masks(np.zeros((0, 10, 10), bool))
    assert mask_ceilings(empty, truth) == {"sam_best_mask": 0.0, "sam_best_union": 0.0, "sam_atom_bound": 0.0}


def test_verdicts_name_the_stage_that_loses():
    base = {"pipeline_iou": 0.2, "sam_best_union": 0.9, "clip_recognition": 0.9}
    assert verdict(base).startswith("selection")
    assert verdict({**base, "sam_best_union": 0.3}).startswith("SAM")
    assert verdict({**base, "clip_recognition": 0.25}).startswith("CLIP")
    assert verdict({**base, "pipeline_iou": 0.85}) == "fine"
    # good, yet well under the ceiling: it said "fine" for the demo's squares, 0.798 against 0.933 (a student's audit)
    lost = verdict({**base, "pipeline_iou": 0.798, "sam_best_union": 0.933})
    assert lost == "good, but 0.14 under SAM's ceiling: the selection keeps other masks or misses some"
    assert "CLIP" in verdict({**base, "pipeline_iou": 0.75, "clip_recognition": 0.5})


def test_error_breakdown_on_the_demo_set(tiny_models, tmp_path):
    from conftest import LOOSE_SAM

    sam, clip_model = tiny_models
    dataset = make_demo_dataset(2, 64, 80, seed=5)
    pipe = Pipeline(sam, clip_model, PipelineSettings(sam=LOOSE_SAM))
    results = pipe.process_dataset(dataset, progress=False)
    classes = dataset.present_classes()
    table = error_breakdown(dataset, results, pipe.text, clip_model, classes, SelectionSettings("top1"))
    assert list(table["class"]) == classes
    for row in table.itertuples():
        assert row.sam_best_mask <= row.sam_best_union + 1e-9 <= row.sam_atom_bound + 2e-9
        assert 0.0 <= row.clip_recognition <= 1.0 and isinstance(row.verdict, str)
    # with the ground-truth masks as the only proposals, top-1 of a class present once is exact
    assert (table["clip_on_truth_iou"] <= 1.0).all()
    figure = viz.plot_error_breakdown(table, "breakdown")
    assert len(figure.axes[0].patches) == 3 * len(classes)
    plt.close("all")
