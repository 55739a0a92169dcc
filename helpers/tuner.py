"""An ipywidgets threshold tuner that answers instantly from the cache.

Changing the prompt, threshold, selection mode or image recomputes only a matrix product and
a union of cached masks: SAM and the CLIP image encoder never run. The figure is a
``matplotlib.figure.Figure`` outside pyplot, rendered to PNG into an ``Image`` widget, so it
never becomes pyplot's current figure (a later ``plt.plot`` draws elsewhere) and running the
cell again adds no figure. The title and the IoU line name the mode and threshold the picture
was made with, so a step that keeps the same masks still visibly happened.
"""

from __future__ import annotations

import functools
import io
import threading
from typing import Mapping, Sequence

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .data import Dataset
from .metrics import counts
from .selection import (
    DEFAULT_THRESHOLD,
    SELECTION_MODES,
    ImageResult,
    SelectionSettings,
    TextEncoder,
    cosine_span,
    predict,
    threshold_bounds,
)
from .viz import four_panel

SLIDER_WIDTH = "700px"  # at most: a track of about 540 px, a 0.6-wide cosine range moves about 0.001 per pixel
SOFTMAX_START = 0.5  # the softmax mode's first threshold (a probability), as in sam_clip_measures
COSINE_FALLBACK = (0.0, 0.6)  # the threshold mode's range when no scores are at hand


def _one_at_a_time(method):
    """``method`` under the tuner's lock: ipykernel 7 may run two widget callbacks at once, in the shell's thread and
    a subshell's, and two redraws into the one figure sent a blank picture (seen after a change of mode)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def slider_range(
    mode: str, scores: np.ndarray | None = None, include: Sequence[float] = ()
) -> tuple[float, float, float]:
    """(min, max, step) of the threshold slider for selection ``mode``.

    ``threshold`` (cosine similarity): the span of ``scores`` (the run's region-to-class
    similarities) widened to multiples of 0.05, its top strictly above the best score so the
    slider can drop every mask, and widened to cover ``include`` (saved thresholds); without
    scores ``COSINE_FALLBACK``. ``softmax``: a probability, 0-1. ``top1``: 0-1, unused."""
    if mode not in SELECTION_MODES:
        raise ValueError(f"Unknown selection mode {mode!r}; use one of {SELECTION_MODES}.")
    if mode != "threshold":
        return 0.0, 1.0, 0.01
    given = np.ravel(np.asarray(scores if scores is not None else [], np.float64))
    bounds = threshold_bounds(np.concatenate([given, np.asarray(list(include), np.float64)]))
    return (*(bounds or COSINE_FALLBACK), 0.001)


def selection_text(selection: SelectionSettings) -> str:
    """The selection rule in words, e.g. ``threshold: cosine >= 0.400``."""
    if selection.mode == "threshold":
        text = f"threshold: cosine ≥ {selection.threshold:.3f}"
    elif selection.mode == "softmax":
        text = f"softmax: p ≥ {selection.threshold:.3f}"
    else:
        text = "top1: the best region only"
    if selection.negatives and selection.mode != "top1":  # top1 ranks the masks by the prompt alone
        text += f", not {'/'.join(selection.negatives)}"
    return text


class ThresholdTuner:
    """Widgets for image, class, prompt, mode and threshold over cached ``results``.

    ``thresholds`` maps a class to its starting threshold (e.g. the best ones notebook 03
    saved); a class without one starts at ``DEFAULT_THRESHOLD``. ``selection`` gives the
    starting mode and the negative prompts (e.g. the run's ``config.selection``). The slider's
    range follows the mode (``slider_range``); each mode keeps its own last threshold."""

    def __init__(
        self,
        dataset: Dataset,
        results: Sequence[ImageResult],
        text: TextEncoder,
        classes: Sequence[str],
        thresholds: Mapping[str, float] | None = None,
        title=lambda text: text,
        selection: SelectionSettings | None = None,
    ) -> None:
        self.dataset, self.results, self.text = dataset, results, text  # read on touch (lazy sequences)
        result_ids = list(getattr(results, "ids", None) or [r.image_id for r in results])
        self._result_of = {i: k for k, i in enumerate(result_ids)} if set(result_ids) >= set(dataset.ids) else {}
        self.classes, self.title = list(classes), title
        self.negatives = tuple(selection.negatives) if selection else ()
        self.thresholds = {k: float(v) for k, v in (thresholds or {}).items() if np.isfinite(v)}
        first = self.classes[0]
        start_mode = selection.mode if selection else "threshold"
        start = self.thresholds.get(first, selection.threshold if selection else DEFAULT_THRESHOLD)
        self.cosine_scores = cosine_span(self.results, self.text, self.classes)
        self.last = {"threshold": start, "softmax": SOFTMAX_START, "top1": 0.0}
        if start_mode != "threshold" and selection is not None:
            self.last[start_mode] = selection.threshold
        self.image = widgets.Dropdown(
            options=[(image_id, i) for i, image_id in enumerate(dataset.ids)], value=0, description="image"
        )
        self.truth_class = widgets.Dropdown(options=self.classes, value=first, description="class")
        self.prompt = widgets.Text(value=first, description="prompt", continuous_update=False)
        self.mode = widgets.Dropdown(options=SELECTION_MODES, value=start_mode, description="mode")
        low, high, step = self.range(start_mode)
        self.threshold = widgets.FloatSlider(
            value=min(max(self.last[start_mode], low), high),
            min=low,
            max=high,
            step=step,
            readout_format=".3f",
            description="threshold",
            continuous_update=True,
            disabled=start_mode == "top1",
            layout=widgets.Layout(width="100%", max_width=SLIDER_WIDTH),  # narrower when the page is
        )
        self.iou_label = widgets.HTML()
        self.picture = widgets.Image(format="png")
        self.figure = Figure(figsize=(14, 3.8))
        FigureCanvasAgg(self.figure)
        self.iou = float("nan")
        self.updating = False
        self.drawn_at = float("nan")  # the threshold of the picture shown
        self._lock = threading.RLock()
        self.truth_class.observe(self._class_changed, "value")
        self.mode.observe(self._mode_changed, "value")
        for control in (self.image, self.prompt):
            control.observe(lambda _: self.update(), "value")
        self.threshold.observe(self._threshold_changed, "value")
        self.update()

    def range(self, mode: str) -> tuple[float, float, float]:
        """The slider's (min, max, step) for ``mode`` on this run's scores (``slider_range``)."""
        return slider_range(mode, self.cosine_scores, [*self.thresholds.values(), self.last["threshold"]])

    def _set_slider(self, mode: str, value: float) -> None:
        low, high, step = self.range(mode)
        # one message to the browser: range, step and value together, so the page's slider never sends back
        # its old position rounded to the new step
        with self.threshold.hold_sync(), self.threshold.hold_trait_notifications():
            if low > self.threshold.max:  # keep min <= max at every step
                self.threshold.max = high
                self.threshold.min = low
            else:
                self.threshold.min = low
                self.threshold.max = high
            self.threshold.step = step
            self.threshold.value = min(max(value, low), high)
        self.threshold.disabled = mode == "top1"

    def _threshold_changed(self, change) -> None:
        """A redraw, unless the picture was drawn at this value already but for float noise: after a change of mode
        the page's slider sends back the value it was given, rounded against its old range (5.55e-17 for 0)."""
        if abs(change["new"] - self.drawn_at) > 1e-9:
            self.update()

    @_one_at_a_time
    def _mode_changed(self, change) -> None:
        """A new mode brings its own slider range and its last threshold, and one redraw."""
        self.last[change["old"]] = self.threshold.value
        self.updating = True
        try:
            self._set_slider(change["new"], self.last[change["new"]])
        finally:
            self.updating = False
        self.update()

    @_one_at_a_time
    def _class_changed(self, change) -> None:
        """A new class brings its own prompt and (in threshold mode) saved threshold, and one redraw."""
        self.updating = True
        try:
            self.prompt.value = change["new"]
            if self.mode.value == "threshold" and change["new"] in self.thresholds:
                self._set_slider("threshold", self.thresholds[change["new"]])
        finally:
            self.updating = False
        self.update()

    def selection(self) -> SelectionSettings:
        """The selection the picture is made with: the widgets' mode and threshold, the run's negatives."""
        return SelectionSettings(self.mode.value, float(self.threshold.value), self.negatives)

    @_one_at_a_time
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
        selection = self.selection()
        self.drawn_at = selection.threshold
        result = self.results[self._result_of.get(sample.image_id, self.image.value)]  # by id when ids match
        prediction = predict(result, self.text, prompt, selection, self.classes)
        self.iou = counts(prediction.mask, truth, sample.ignore_mask(name)).iou
        rule = selection_text(selection)
        kept = f"kept {int(prediction.keep.sum())} of {len(prediction.keep)} masks"
        score = f"IoU {self.iou:.3f}"
        if not truth.any():  # the convention: a kept mask scores 0 (a false alarm), none is right (IoU undefined, NaN)
            score = f"no {name} in this image: " + (
                f"{score}, every kept mask a false alarm"
                if prediction.mask.any()
                else "none kept, right (IoU undefined)"
            )
        self.iou_label.value = f"<b>{score}</b> &nbsp; {kept}<br>{rule}"
        title = self.title(f"{sample.image_id} - class '{name}', prompt '{prompt}' - {rule} - {score} ({kept})")
        four_panel(sample.image, truth, prediction.mask, title, figure=self.figure)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=80)
        self.picture.value = buffer.getvalue()

    def widget(self) -> widgets.Widget:
        # the two columns side by side while they fit, else one below the other; the left one keeps its natural
        # width (its dropdowns were clipped under the right one in a 1400-px window), the slider takes what is
        # left (in a narrow notebook, the column wrapped below, less than its 420-px basis)
        controls = widgets.HBox(
            [
                widgets.VBox([self.image, self.truth_class, self.prompt], layout=widgets.Layout(flex="0 0 auto")),
                widgets.VBox(
                    [self.mode, self.threshold, self.iou_label],
                    layout=widgets.Layout(flex="1 1 420px", min_width="0", max_width=SLIDER_WIDTH),
                ),
            ],
            layout=widgets.Layout(flex_flow="row wrap", width="100%"),
        )
        return widgets.VBox([controls, self.picture])
