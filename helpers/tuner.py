"""An ipywidgets threshold tuner that answers instantly from the cache.

Changing the prompt, threshold, selection mode or image recomputes only a matrix product and
a union of cached masks: SAM and the CLIP image encoder never run. The figure is a
``matplotlib.figure.Figure`` outside pyplot, rendered to PNG into an ``Image`` widget, so it
never becomes pyplot's current figure (a later ``plt.plot`` draws elsewhere) and running the
cell again adds no figure.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .data import Dataset
from .metrics import counts
from .selection import DEFAULT_THRESHOLD, SELECTION_MODES, ImageResult, SelectionSettings, TextEncoder, predict
from .viz import four_panel


class ThresholdTuner:
    """Widgets for image, class, prompt, mode and threshold over cached ``results``.

    ``thresholds`` maps a class to its starting threshold (e.g. the best ones notebook 03
    saved); a class without one starts at ``DEFAULT_THRESHOLD``."""

    def __init__(
        self,
        dataset: Dataset,
        results: Sequence[ImageResult],
        text: TextEncoder,
        classes: Sequence[str],
        thresholds: Mapping[str, float] | None = None,
        title=lambda text: text,
    ) -> None:
        self.dataset, self.results, self.text = dataset, results, text  # read on touch (lazy sequences)
        self.classes, self.title = list(classes), title
        self.thresholds = {k: float(v) for k, v in (thresholds or {}).items() if np.isfinite(v)}
        first = self.classes[0]
        self.image = widgets.Dropdown(
            options=[(image_id, i) for i, image_id in enumerate(dataset.ids)], value=0, description="image"
        )
        self.truth_class = widgets.Dropdown(options=self.classes, value=first, description="class")
        self.prompt = widgets.Text(value=first, description="prompt", continuous_update=False)
        self.mode = widgets.Dropdown(options=SELECTION_MODES, value="threshold", description="mode")
        self.threshold = widgets.FloatSlider(
            value=self.thresholds.get(first, DEFAULT_THRESHOLD),
            min=-0.2,
            max=1.0,
            step=0.005,
            readout_format=".3f",
            description="threshold",
            continuous_update=True,
        )
        self.iou_label = widgets.HTML()
        self.picture = widgets.Image(format="png")
        self.figure = Figure(figsize=(14, 3.8))
        FigureCanvasAgg(self.figure)
        self.iou = float("nan")
        self.updating = False
        self.truth_class.observe(self._class_changed, "value")
        for control in (self.image, self.prompt, self.mode, self.threshold):
            control.observe(lambda _: self.update(), "value")
        self.update()

    def _class_changed(self, change) -> None:
        """A new class brings its own prompt and saved threshold, and one redraw."""
        self.updating = True
        try:
            self.prompt.value = change["new"]
            self.threshold.value = self.thresholds.get(change["new"], self.threshold.value)
        finally:
            self.updating = False
        self.update()

    def update(self) -> None:
        if self.updating:
            return
        sample = self.dataset.samples[self.image.value]
        name = self.truth_class.value
        prompt = self.prompt.value.strip()
        if not prompt:
            self.iou = float("nan")
            self.iou_label.value = "<b>Type a prompt, for example a class name.</b>"
            self.figure.clear()
            self.picture.value = b""
            return
        truth = sample.masks.get(name, np.zeros(sample.image.shape[:2], bool))
        selection = SelectionSettings(self.mode.value, self.threshold.value)
        prediction = predict(self.results[self.image.value], self.text, prompt, selection, self.classes)
        self.iou = counts(prediction.mask, truth, sample.ignore_mask(name)).iou
        self.iou_label.value = (
            f"<b>IoU {self.iou:.3f}</b> &nbsp; kept {int(prediction.keep.sum())} of {len(prediction.keep)} masks"
        )
        title = self.title(f"{sample.image_id} - class '{name}', prompt '{prompt}' - IoU {self.iou:.3f}")
        four_panel(sample.image, truth, prediction.mask, title, figure=self.figure)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=80)
        self.picture.value = buffer.getvalue()

    def widget(self) -> widgets.Widget:
        controls = widgets.HBox(
            [
                widgets.VBox([self.image, self.truth_class, self.prompt]),
                widgets.VBox([self.mode, self.threshold, self.iou_label]),
            ]
        )
        return widgets.VBox([controls, self.picture])
