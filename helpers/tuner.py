"""An ipywidgets threshold tuner that answers instantly from the cache.

Changing the prompt, threshold, selection mode or image recomputes only a matrix product and
a union of cached masks: SAM and the CLIP image encoder never run again.
"""

from __future__ import annotations

from typing import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

from .data import Dataset
from .metrics import counts
from .pipeline import ImageResult, Pipeline
from .selection import SELECTION_MODES, SelectionSettings
from .viz import four_panel


class ThresholdTuner:
    def __init__(
        self,
        dataset: Dataset,
        results: Sequence[ImageResult],
        pipeline: Pipeline,
        classes: Sequence[str],
        threshold: float = 0.25,
        title=lambda text: text,
    ) -> None:
        self.dataset, self.results, self.pipeline = dataset, list(results), pipeline
        self.classes, self.title = list(classes), title
        self.image = widgets.Dropdown(
            options=[(s.image_id, i) for i, s in enumerate(dataset.samples)], value=0, description="image"
        )
        self.truth_class = widgets.Dropdown(options=self.classes, value=self.classes[0], description="class")
        self.prompt = widgets.Text(value=self.classes[0], description="prompt", continuous_update=False)
        self.mode = widgets.Dropdown(options=SELECTION_MODES, value="threshold", description="mode")
        self.threshold = widgets.FloatSlider(
            value=threshold,
            min=-0.2,
            max=1.0,
            step=0.005,
            readout_format=".3f",
            description="threshold",
            continuous_update=True,
        )
        self.iou_label = widgets.HTML()
        self.output = widgets.Output()
        with plt.ioff():
            self.figure = plt.figure(figsize=(14, 3.8))
        self.truth_class.observe(self._class_changed, "value")
        for control in (self.image, self.prompt, self.mode, self.threshold):
            control.observe(lambda _: self.update(), "value")
        self.iou = float("nan")
        self.update()

    def _class_changed(self, change) -> None:
        if self.prompt.value == change["new"]:
            self.update()
        else:
            self.prompt.value = change["new"]  # the prompt's observer redraws

    def update(self) -> None:
        sample = self.dataset.samples[self.image.value]
        name = self.truth_class.value
        prompt = self.prompt.value.strip()
        truth = sample.masks.get(name, np.zeros(sample.image.shape[:2], bool))
        if not prompt:
            self.iou_label.value = "<b>Type a prompt, for example a class name.</b>"
            return
        selection = SelectionSettings(self.mode.value, self.threshold.value)
        prediction = self.pipeline.predict(self.results[self.image.value], prompt, selection, self.classes)
        self.iou = counts(prediction.mask, truth, sample.ignore_mask(name)).iou
        self.iou_label.value = (
            f"<b>IoU {self.iou:.3f}</b> &nbsp; kept {int(prediction.keep.sum())} of {len(prediction.keep)} masks"
        )
        four_panel(
            sample.image,
            truth,
            prediction.mask,
            self.title(f"{sample.image_id} - class '{name}', prompt '{prompt}' - IoU {self.iou:.3f}"),
            figure=self.figure,
        )
        self.output.clear_output(wait=True)
        with self.output:
            from IPython.display import display

            display(self.figure)

    def widget(self) -> widgets.Widget:
        controls = widgets.HBox(
            [
                widgets.VBox([self.image, self.truth_class, self.prompt]),
                widgets.VBox([self.mode, self.threshold, self.iou_label]),
            ]
        )
        return widgets.VBox([controls, self.output])
