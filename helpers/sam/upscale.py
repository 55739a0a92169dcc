"""The thresholded statistics of SAM's full-size masks, exactly; for large images without most of their pixels.

``Sam.postprocess_masks`` upsamples the 256 x 256 logits bilinearly to 1024 x 1024 (stage 1), crops
the padding and resamples bilinearly to the image's size (stage 2); the generator counts the pixels
above thr +- offset (stability score), boxes the pixels above thr and drops the logits.

* Images 1024 px long: stage 2 is the identity (PyTorch copies), so the statistics are taken on the
  stage-1 map, skipping the second full-size pass.
* Images much larger than stage 1 (more than ``SPARSE_MIN_RATIO`` output pixels per stage-1 pixel;
  smaller ones are computed at full size, which costs less there): every output pixel is a
  combination, with weights >= 0 summing to 1, of a 2 x 2 block of stage-1 pixels, and the output
  pixels reading the same block form a small rectangle (about (H / h) x (W / w) pixels). A block
  whose 4 values all lie above ``thr + margin`` (or all below ``thr - margin``) has its whole
  rectangle above (below) ``thr``; ``margin`` (1e-5 of the block's largest |value|, about 20x
  float32's worst-case rounding here) keeps this exact. Only the mixed
  blocks along the mask's edges are evaluated pixel by pixel, by reproducing PyTorch's CPU kernel:
  its source indices and weights, and its float32 arithmetic ``fma(t0, w0, t1 * w1)`` per axis
  (``fma32`` emulates a fused multiply-add exactly in float64; pixels are first evaluated in plain
  float32 and only those within 2 ulps of a threshold are recomputed exactly). The reproduction is
  checked bit for bit against ``F.interpolate`` once per geometry and device (``arithmetic``; a
  plain multiply-add variant is tried too); if neither matches, or when the masks are so noisy that
  most blocks are mixed, the full-size computation runs instead.

Stage 1 is always PyTorch's own ``F.interpolate``. Counts, stability scores and boxes equal those of
the full-size computation exactly (``tests/test_mask_upscale.py``: random, steep, noisy and quantised
logits, values at and one float32 step around the thresholds, several geometries).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

RELATIVE_MARGIN = 1e-5
TILE_BATCH = 1 << 21  # output pixels evaluated at once in mixed blocks
SPARSE_COST = 4  # work per pixel of a mixed block relative to a full-size pixel (measured about 3-5)
# The block path's fixed passes over stage 1 cost about as much as 20-50 full-size pixels per stage-1
# pixel (64 masks, 1024 x 768 stage 1: ~5.5 s on the 2-core machine, whatever the output size), so up
# to this many output pixels per stage-1 pixel the full size is computed instead. Measured (README):
# 7x faster at 1.6x (the demo's 320 x 240 images), 4-8x at 4x, 1.5-2.9x at 15x; at 16x on the demo SAM
# the block path was 1.2x faster, at 25x on noisy masks 1.5x slower. 16 is the conservative side of
# the crossover: where the output is larger still, the block path saves the most time and memory.
SPARSE_MIN_RATIO = 16
DENSE_BYTES = 128 << 20  # full-size logits at once where the full size is cheaper


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread within the block: the block pass is a chain of small element-wise ops, where
    OpenMP's fork/join and its spinning workers cost more than they save when the cores are shared
    (on the loaded 2-vCPU machine: 11x slower on 2 threads than on 1, equal with OMP_WAIT_POLICY=PASSIVE)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b + c`` rounded once to float32 (a fused multiply-add), for float32 inputs, via float64:
    the product is exact in float64; the sum's float64 rounding is corrected where it lands exactly
    halfway between two float32 values (two-sum error term)."""
    a, b, c = a.double(), b.double(), c.double()
    p = a * b
    s = p + c
    z = s - p
    error = (p - (s - z)) + (c - z)  # s + error == p + c exactly
    r = s.float()
    r64 = r.double()
    inf = torch.tensor(float("inf"), dtype=torch.float32, device=r.device)
    other = torch.nextafter(r, torch.where(s > r64, inf, -inf))
    other64 = other.double()
    tie = (s != r64) & (s == (r64 + other64) * 0.5) & (error != 0)
    return torch.where(tie & ((error > 0) == (other64 > r64)), other, r)


def linear_weights(n_in: int, n_out: int, fused: bool = True) -> tuple[torch.Tensor, ...]:
    """PyTorch's bilinear (align_corners=False) source indices and weights along one axis:
    (i0, i1, w0, w1), output pixel d = w0 * x[i0] + w1 * x[i1]."""
    if n_in == n_out:
        index = torch.arange(n_out)
        return index, index, torch.ones(n_out), torch.zeros(n_out)
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out
    d = torch.arange(n_out, dtype=torch.float32) + 0.5
    half = torch.full_like(d, -0.5)
    real = fma32(scale.expand_as(d), d, half) if fused else scale * d + half
    real = real.clamp(min=0)
    i0 = real.floor().long().clamp(max=n_in - 1)
    lam = (real - i0.float()).clamp(0, 1)
    return i0, i0 + (i0 < n_in - 1).long(), 1 - lam, lam


def _combine(t0: torch.Tensor, t1: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor, fused: bool) -> torch.Tensor:
    return fma32(t0, w0, t1 * w1) if fused else t0 * w0 + t1 * w1


def resample(source: torch.Tensor, index: torch.Tensor, rows: list, cols: list, fused: bool) -> torch.Tensor:
    """Stage 2 at chosen pixels: ``source`` (n, h, w); ``index`` (T, 1, 1) picks the mask of each of T
    patches; ``rows``/``cols`` = (i0, i1, w0, w1) of their output pixels, shaped (T, R, 1) / (T, 1, C)."""
    (r0, r1, v0, v1), (c0, c1, u0, u1) = rows, cols
    t0 = _combine(source[index, r0, c0], source[index, r0, c1], u0, u1, fused)
    t1 = _combine(source[index, r1, c0], source[index, r1, c1], u0, u1, fused)
    return _combine(t0, t1, v0, v1, fused)


@functools.lru_cache(maxsize=64)
def arithmetic(in_size: tuple[int, int], out_size: tuple[int, int], device: str = "cpu") -> str | None:
    """How ``F.interpolate`` computes the resampling in_size -> out_size on this machine and device:
    "identity", "fused" or "plain" (checked bit for bit on random logits at sampled rows and
    columns), or None when neither reproduces it."""
    if tuple(in_size) == tuple(out_size):
        return "identity"
    generator = torch.Generator().manual_seed(0)
    source = (torch.randn(1, 1, *in_size, generator=generator) * 40).to(device)
    reference = F.interpolate(source, out_size, mode="bilinear", align_corners=False)[0]
    (h, w), picks = out_size, 24
    rows = torch.unique(torch.cat([torch.tensor([0, h - 1]), torch.randint(0, h, (picks,), generator=generator)]))
    cols = torch.unique(torch.cat([torch.tensor([0, w - 1]), torch.randint(0, w, (picks,), generator=generator)]))
    for kind in ("fused", "plain"):
        fused = kind == "fused"
        wy = [v.to(device) for v in linear_weights(in_size[0], h, fused)]
        wx = [v.to(device) for v in linear_weights(in_size[1], w, fused)]
        ok = True
        for r, c in ((rows, torch.arange(w)), (torch.arange(h), cols)):
            r, c, index = r.to(device), c.to(device), torch.zeros(1, 1, 1, dtype=torch.long, device=device)
            got = resample(
                source[0], index, [v[r][None, :, None] for v in wy], [v[c][None, None, :] for v in wx], fused
            )
            ok = ok and torch.equal(got, reference[:, r][:, :, c])
        if ok:
            return kind
    return None


class Axis:
    """Stage 2 along one axis: output pixel y reads source pixels i0(y) and partner(i0(y)) (the next
    one, or itself at the end or when the sizes are equal). Output pixels sharing i0 form a run."""

    def __init__(self, n_in: int, n_out: int, fused: bool) -> None:
        self.i0, self.i1, self.w0, self.w1 = linear_weights(n_in, n_out, fused)
        self.count = torch.bincount(self.i0, minlength=n_in)  # output pixels per source pixel
        self.first = torch.searchsorted(self.i0, torch.arange(n_in))  # first output pixel of each run
        self.partner = torch.arange(n_in)
        self.partner[self.i0] = self.i1
        assert bool((self.i1 - self.i0 <= 1).all()) and bool((self.i0[1:] >= self.i0[:-1]).all())
        self.longest = int(self.count.max())

    def to(self, device: torch.device) -> Axis:
        for name in ("i0", "i1", "w0", "w1", "count", "first", "partner"):
            setattr(self, name, getattr(self, name).to(device))
        return self


class Upscaler:
    """``Sam.postprocess_masks`` for one crop geometry, and exact thresholded statistics of its output."""

    def __init__(
        self, image_size: int, input_size: tuple[int, int], original_size: tuple[int, int], device: str = "cpu"
    ) -> None:
        self.side = image_size
        self.input_size, self.original_size = tuple(input_size), tuple(original_size)
        self.kind = arithmetic(self.input_size, self.original_size, str(device))
        fused = self.kind != "plain"
        self.rows = Axis(input_size[0], original_size[0], fused)
        self.cols = Axis(input_size[1], original_size[1], fused)

    def stage1(self, low_res: torch.Tensor) -> torch.Tensor:
        """Stage 1 and the crop, as ``postprocess_masks`` does them (n x h x w, a view)."""
        up = F.interpolate(low_res[:, None].float(), (self.side, self.side), mode="bilinear", align_corners=False)
        return up[:, 0, : self.input_size[0], : self.input_size[1]]

    def full(self, low_res: torch.Tensor) -> torch.Tensor:
        """The full-size logits (n x H x W), exactly ``postprocess_masks``."""
        up = self.stage1(low_res)[:, None]
        return F.interpolate(up, self.original_size, mode="bilinear", align_corners=False)[:, 0]

    def stats(self, low_res: torch.Tensor, thresholds: list[float], box_threshold: float) -> tuple:
        """For logits ``low_res`` (n x 256 x 256): how many full-size pixels exceed each threshold
        (n x len(thresholds), int32) and the xyxy boxes of the pixels above ``box_threshold`` (n x 4,
        zeros when empty), equal to computing them on ``full(low_res)``."""
        if self.kind == "identity":
            return dense_stats(self.stage1(low_res), thresholds, box_threshold)
        out_pixels = self.original_size[0] * self.original_size[1]
        if self.kind is None or out_pixels <= SPARSE_MIN_RATIO * self.input_size[0] * self.input_size[1]:
            return self._dense_stats(low_res, thresholds, box_threshold)
        stage1 = self.stage1(low_res)
        with one_thread():
            sparse = self._sparse_stats(stage1, [*thresholds, box_threshold])
        if sparse is not None:
            return sparse
        return self._dense_stats(low_res, thresholds, box_threshold)

    def _dense_stats(self, low_res: torch.Tensor, thresholds: list[float], box_threshold: float) -> tuple:
        """``stats`` on the full-size logits, ``DENSE_BYTES`` of them at a time."""
        step = max(1, DENSE_BYTES // (4 * self.original_size[0] * self.original_size[1]))
        parts = [
            dense_stats(self.full(low_res[i : i + step]), thresholds, box_threshold)
            for i in range(0, len(low_res), step)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _sparse_stats(self, stage1: torch.Tensor, thresholds: list[float]) -> tuple | None:
        """``stats`` through stage-1 blocks (the last threshold gives the boxes and is not counted), or
        None where so many blocks are mixed that the full size costs less."""
        box_index = len(thresholds) - 1
        rows, cols = self.rows.to(stage1.device), self.cols.to(stage1.device)
        low = torch.minimum(stage1, stage1[:, rows.partner])
        low = torch.minimum(low, low[:, :, cols.partner])  # smallest of each block's 4 source pixels
        high = torch.maximum(stage1, stage1[:, rows.partner])
        high = torch.maximum(high, high[:, :, cols.partner])
        margin = RELATIVE_MARGIN * torch.maximum(low.abs(), high.abs())
        used = (rows.count > 0)[:, None] & (cols.count > 0)[None, :]
        row_count, col_count = rows.count.double(), cols.count.double()
        counts = torch.zeros(len(stage1), len(thresholds), dtype=torch.long, device=stage1.device)
        mixed, boxes = [], None
        for i, t in enumerate(thresholds):
            t = float(torch.tensor(t, dtype=torch.float32))
            above = (low - margin > t) & used
            mixed.append(~above & ~(high + margin < t) & used)
            counts[:, i] = (((above * col_count).sum(-1) * row_count).sum(-1)).round().long()
            if i == box_index:
                boxes = _block_boxes(above, rows, cols)
        todo = torch.stack(mixed).any(0).nonzero()  # (mask, source row, source column) of mixed blocks
        pixels = len(stage1) * self.original_size[0] * self.original_size[1]
        if len(todo) * rows.longest * cols.longest * SPARSE_COST > pixels:  # noisy masks: full size is cheaper
            return None
        step = max(1, TILE_BATCH // (rows.longest * cols.longest))
        for begin in range(0, len(todo), step):
            m, r, c = todo[begin : begin + step].unbind(1)
            values, y, x, valid = self._block_values(stage1, m, r, c, rows, cols, thresholds)
            for i, t in enumerate(thresholds):
                hit = (values > t) & valid & mixed[i][m, r, c][:, None, None]
                counts[:, i].index_add_(0, m, hit.flatten(1).sum(1))
                if i == box_index:
                    _add_pixel_boxes(boxes, m, hit, y, x)
        return counts[:, :box_index].int(), boxes * (boxes[:, 2:3] >= 0)  # empty: [0, 0, 0, 0] as in amg

    def _block_values(self, stage1, m, r, c, rows: Axis, cols: Axis, thresholds: list[float]) -> tuple:
        """The output pixels of blocks (m, r, c) (mask, source row and column of their first tap), B x R x C,
        with their rows (B x R), columns (B x C) and which of the padded R x C are real pixels."""
        y = rows.first[r, None] + torch.arange(rows.longest, device=r.device)
        x = cols.first[c, None] + torch.arange(cols.longest, device=c.device)
        valid = (y < (rows.first + rows.count)[r, None])[:, :, None] & (x < (cols.first + cols.count)[c, None])[:, None]
        y, x = y.clamp(max=self.original_size[0] - 1), x.clamp(max=self.original_size[1] - 1)
        pr, pc = rows.partner[r], cols.partner[c]
        fused = self.kind == "fused"
        t0 = _combine(stage1[m, r, c][:, None], stage1[m, r, pc][:, None], cols.w0[x], cols.w1[x], fused)[:, None]
        t1 = _combine(stage1[m, pr, c][:, None], stage1[m, pr, pc][:, None], cols.w0[x], cols.w1[x], fused)[:, None]
        v0, v1 = rows.w0[y][:, :, None], rows.w1[y][:, :, None]
        values = t0 * v0 + t1 * v1  # the plain kernel's arithmetic; within 2 float32 ulps of the fused one
        if fused:  # recompute exactly the pixels close enough to a threshold for the rounding to matter
            tolerance = 2.0**-21 * torch.maximum(t0.abs(), t1.abs())
            close = torch.zeros_like(valid)
            for t in thresholds:
                close |= (values - t).abs() <= tolerance
            b, i, j = close.nonzero().unbind(1)
            values[b, i, j] = fma32(t0[b, 0, j], v0[b, i, 0], t1[b, 0, j] * v1[b, i, 0])
        return values, y, x, valid


def _block_boxes(above: torch.Tensor, rows: Axis, cols: Axis) -> torch.Tensor:
    """Extents (x0, y0, x1, y1; none: +big / -1) of the output pixels of the blocks wholly above."""
    big = torch.iinfo(torch.long).max
    rows_any, cols_any = above.any(2), above.any(1)
    first = lambda a, axis: torch.where(a, axis.first, big).amin(1)  # noqa: E731
    last = lambda a, axis: torch.where(a, axis.first + axis.count - 1, -1).amax(1)  # noqa: E731
    return torch.stack([first(cols_any, cols), first(rows_any, rows), last(cols_any, cols), last(rows_any, rows)], 1)


def _add_pixel_boxes(boxes: torch.Tensor, m: torch.Tensor, hit: torch.Tensor, y: torch.Tensor, x: torch.Tensor):
    """Widens ``boxes`` (n x 4) by the pixels ``hit`` (B x R x C at rows ``y``, columns ``x``) of masks ``m``."""
    big = torch.iinfo(torch.long).max
    rows, cols = hit.any(2), hit.any(1)
    parts = [torch.where(cols, x, big).amin(1), torch.where(rows, y, big).amin(1)]
    parts += [torch.where(cols, x, -1).amax(1), torch.where(rows, y, -1).amax(1)]
    for i, (part, reduce) in enumerate(zip(parts, ("amin", "amin", "amax", "amax"))):
        boxes[:, i].scatter_reduce_(0, m, part, reduce)


def dense_stats(logits: torch.Tensor, thresholds: list[float], box_threshold: float) -> tuple:
    """``Upscaler.stats`` on full-size logits (n x H x W): counts above each threshold and boxes, as
    ``amg.calculate_stability_score`` counts and ``amg.batched_mask_to_box`` boxes."""
    counts = torch.stack([(logits > t).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32) for t in thresholds], 1)
    rows, cols = logits.amax(-1) > box_threshold, logits.amax(-2) > box_threshold
    h, w = rows.shape[-1], cols.shape[-1]
    first = lambda a: a.byte().argmax(-1)  # noqa: E731
    boxes = torch.stack([first(cols), first(rows), w - 1 - first(cols.flip(-1)), h - 1 - first(rows.flip(-1))], -1)
    return counts, boxes * rows.any(-1, keepdim=True)
