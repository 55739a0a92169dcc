"""The generator's fast paths equal their slow references exactly: gate statistics without full-size
logits (``helpers.mask_upscale``), the per-head image encoder (``helpers.sam_encoder``) and the
allocator setting (``helpers.allocator``)."""

from __future__ import annotations

import ctypes
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

from helpers.models.tiny import build_sam_tiny
from helpers.sam import allocator as allocator
from helpers.sam import upscale as mask_upscale
from helpers.sam.allocator import _libc, _resident, reuse_freed_memory, trim_if_over
from helpers.sam.encoder import embed_image, encode
from helpers.sam.upscale import Upscaler, arithmetic, dense_stats, fma32, linear_weights

EPS = float(torch.finfo(torch.float32).eps)


def exact_fma(a: float, b: float, c: float) -> float:
    """a * b + c rounded once to float32 (round half to even), from exact rational arithmetic."""
    x = Fraction(a) * Fraction(b) + Fraction(c)
    near = np.float32(float(x))
    candidates = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
    even = lambda v: int(np.float32(v).view(np.uint32)) & 1  # noqa: E731
    return float(min(candidates, key=lambda v: (abs(Fraction(float(v)) - x), even(v))))


def test_fma32_rounds_once():
    torch.manual_seed(0)
    a, b, c = torch.randn(2000) * 30, torch.rand(2000), torch.randn(2000) * 30
    # halfway cases that a float64 sum followed by a float32 rounding gets wrong: 97 * 172961 = 2**24 + 1
    a = torch.cat([a, torch.tensor([97.0, 97.0, -97.0, 3.0, 0.0])])
    b = torch.cat([b, torch.tensor([172961.0, 172961.0, 172961.0, 2.0**-30, 5.0])])
    c = torch.cat([c, torch.tensor([2.0**-40, -(2.0**-40), 2.0**-40, 1.0, -0.0])])
    got = fma32(a, b, c)
    want = [exact_fma(float(x), float(y), float(z)) for x, y, z in zip(a, b, c)]
    assert got.tolist() == want
    assert got[-5:-2].tolist() == [2.0**24 + 2, 2.0**24, -(2.0**24)]


def random_logits(n: int, kind: str, seed: int = 0) -> torch.Tensor:
    """Low-resolution logits (n x 256 x 256) of several kinds, including values exactly at and one
    float32 step around the thresholds 0 and +-1."""
    g = torch.Generator().manual_seed(seed)

    def smooth(gain: float) -> torch.Tensor:
        return F.interpolate(torch.randn(n, 1, 16, 16, generator=g), (256, 256), mode="bilinear")[:, 0] * gain

    if kind == "smooth":
        return smooth(8.0)
    if kind == "steep":
        return smooth(400.0)
    if kind == "noise":
        return torch.randn(n, 256, 256, generator=g) * 3
    if kind == "quantised":  # flat patches of -1.5 .. 1.5 in steps of 0.5
        x = torch.randint(-3, 4, (n, 64, 64), generator=g).float() * 0.5
        return x.repeat_interleave(4, 1).repeat_interleave(4, 2)
    base = torch.tensor([-1.0, 0.0, 1.0])[torch.randint(0, 3, (n, 32, 32), generator=g)]
    x = base.repeat_interleave(8, 1).repeat_interleave(8, 2)
    return x + torch.randint(-2, 3, x.shape, generator=g) * EPS  # "near": at the thresholds, +-2 steps


GEOMETRIES = [
    ((768, 1024), (768, 1024)),  # 1024 px long: stage 2 is the identity
    ((768, 1024), (480, 640)),  # downscaled
    ((683, 1024), (1333, 2000)),  # upscaled
    ((1024, 575), (1201, 675)),  # odd sizes, portrait
    ((1024, 12), (3001, 35)),  # thin
    ((342, 1024), (100, 300)),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[0][0]}x{g[0][1]}-{g[1][0]}x{g[1][1]}")
def test_gate_statistics_equal_the_full_size_ones(geometry, monkeypatch):
    """Counts above +-1, stability scores and boxes of the pixels above 0 equal those computed on
    ``Sam.postprocess_masks``' full-size logits (what segment-anything's generator does); the
    block path is forced even where the full size would be cheaper."""
    monkeypatch.setattr(mask_upscale, "SPARSE_COST", 0)
    monkeypatch.setattr(mask_upscale, "SPARSE_MIN_RATIO", 0)
    input_size, original_size = geometry
    upscaler = Upscaler(1024, input_size, original_size)
    assert upscaler.kind in ("identity", "fused"), "PyTorch's bilinear kernel should be reproduced here"
    for seed, kind in enumerate(["smooth", "steep", "noise", "quantised", "near"]):
        low = random_logits(3, kind, seed)
        counts, boxes = upscaler.stats(low, [1.0, -1.0], 0.0)
        full = upscaler.full(low)
        reference = F.interpolate(
            F.interpolate(low[:, None], (1024, 1024), mode="bilinear", align_corners=False)[
                ..., : input_size[0], : input_size[1]
            ],
            original_size,
            mode="bilinear",
            align_corners=False,
        )[:, 0]
        assert torch.equal(full, reference)
        for i, t in enumerate([1.0, -1.0]):
            assert torch.equal(counts[:, i], (full > t).flatten(1).sum(1).int()), (kind, t)
        torch.testing.assert_close(
            counts[:, 0] / counts[:, 1], calculate_stability_score(full, 0.0, 1.0), equal_nan=True
        )
        assert torch.equal(boxes, batched_mask_to_box(full > 0.0)), kind
        assert torch.equal(dense_stats(full, [1.0, -1.0], 0.0)[1], boxes)


def test_empty_and_full_masks_and_the_fallback(monkeypatch):
    monkeypatch.setattr(mask_upscale, "SPARSE_MIN_RATIO", 0)  # 3.8x: the full size would be taken
    upscaler = Upscaler(1024, (683, 1024), (1333, 2000))
    low = torch.stack([torch.full((256, 256), -5.0), torch.full((256, 256), 5.0), torch.zeros(256, 256)])
    counts, boxes = upscaler.stats(low, [1.0, -1.0], 0.0)
    assert counts.tolist() == [[0, 0], [1333 * 2000] * 2, [0, 1333 * 2000]]
    assert boxes.tolist() == [[0, 0, 0, 0], [0, 0, 1999, 1332], [0, 0, 0, 0]]
    upscaler.kind = None  # a kernel that could not be reproduced: the full-size path
    assert [t.tolist() for t in upscaler.stats(low, [1.0, -1.0], 0.0)] == [counts.tolist(), boxes.tolist()]
    noisy = random_logits(2, "noise")  # most blocks mixed: the full size costs less and is used
    upscaler.kind = "fused"
    assert upscaler._sparse_stats(upscaler.stage1(noisy), [1.0, -1.0, 0.0]) is None
    full = upscaler.full(noisy)
    counts, boxes = upscaler.stats(noisy, [1.0, -1.0], 0.0)
    assert torch.equal(counts[:, 0], (full > 1.0).flatten(1).sum(1).int())
    assert torch.equal(boxes, batched_mask_to_box(full > 0.0))


@pytest.mark.parametrize(
    "geometry, block_path",
    [
        (((192, 256), (240, 320)), False),
        (((192, 256), (768, 1024)), False),  # exactly SPARSE_MIN_RATIO
        (((768, 1024), (2304, 3072)), False),
        (((768, 1024), (4000, 5334)), True),
        (((342, 1024), (1710, 5120)), True),  # 25x the stage-1 crop, under 16x the padded 1024 x 1024
    ],
    ids=["demo-1.6x", "16x", "9x", "27x", "wide-25x"],
)
def test_block_path_only_where_the_output_is_much_larger(geometry, block_path, monkeypatch):
    """Up to ``SPARSE_MIN_RATIO`` output pixels per stage-1 pixel the full size is computed (cheaper);
    beyond it the block path runs. Either way the statistics equal the full-size ones."""
    input_size, original_size = geometry
    upscaler = Upscaler(1024 if input_size[1] == 1024 else 256, input_size, original_size)
    assert upscaler.kind == "fused", "PyTorch's bilinear kernel should be reproduced here"
    calls = []
    block_stats = upscaler._sparse_stats
    monkeypatch.setattr(upscaler, "_sparse_stats", lambda *a: calls.append(1) or block_stats(*a))
    low = random_logits(2, "smooth", 0)[:, : upscaler.side // 4, : upscaler.side // 4]
    counts, boxes = upscaler.stats(low, [1.0, -1.0], 0.0)
    assert bool(calls) == block_path
    full = upscaler.full(low)
    for i, t in enumerate([1.0, -1.0]):
        assert torch.equal(counts[:, i], (full > t).flatten(1).sum(1).int())
    assert torch.equal(boxes, batched_mask_to_box(full > 0.0))


def test_arithmetic_is_checked_against_the_kernel():
    assert arithmetic((768, 1024), (768, 1024)) == "identity"
    assert arithmetic((768, 1024), (6000, 8000)) == "fused"
    i0, i1, w0, w1 = linear_weights(4, 4)
    assert i0.tolist() == i1.tolist() == [0, 1, 2, 3] and w0.tolist() == [1.0] * 4 and w1.tolist() == [0.0] * 4


def test_per_head_encoder_gives_the_same_embeddings():
    torch.manual_seed(0)
    model = build_sam_tiny().eval()
    with torch.no_grad():
        for block in model.image_encoder.blocks:  # relative positions are zero at initialisation
            block.attn.rel_pos_h.normal_(0, 0.5)
            block.attn.rel_pos_w.normal_(0, 0.5)
    image = (np.random.default_rng(0).random((150, 200, 3)) * 255).astype(np.uint8)
    with torch.inference_mode():
        x = model.preprocess(torch.rand(2, 3, 256, 256) * 255)
        assert torch.equal(encode(model, x), model.image_encoder(x))
        from segment_anything import SamPredictor

        predictor = SamPredictor(model)
        predictor.set_image(image)
        features, input_size = embed_image(model, image)
    assert torch.equal(features, predictor.features) and input_size == predictor.input_size


def _leave_free_heap() -> list[torch.Tensor]:
    """Leave ~640 MB of freed but resident heap behind, as earlier work in a long process does."""
    libc = ctypes.CDLL(None)
    libc.mallopt(allocator.M_MMAP_MAX, 0)  # large blocks from the heap
    libc.mallopt(allocator.M_TRIM_THRESHOLD, allocator.KEEP_TRIM_THRESHOLD)  # never trimmed on free
    junk = [torch.ones(32 << 20, dtype=torch.uint8) for _ in range(20)]
    pins = [torch.ones(32 << 20, dtype=torch.uint8)]  # keeps the freed blocks below the heap's top
    del junk
    libc.mallopt(allocator.M_MMAP_MAX, allocator.DEFAULT_MMAP_MAX)
    libc.mallopt(allocator.M_TRIM_THRESHOLD, allocator.DEFAULT_TRIM_THRESHOLD)
    return pins


@pytest.mark.skipif(_libc() is None, reason="glibc absent or malloc tuned through the environment")
def test_allocator_setting_is_scoped_and_trimmed():
    pins = _leave_free_heap()  # CI failed once here: free heap from earlier tests counted as growth
    with reuse_freed_memory():
        with reuse_freed_memory():  # nested: the setting stays until the outer block ends
            blocks = [torch.ones(32 << 20, dtype=torch.uint8) for _ in range(24)]  # 768 MB
        grown = _resident()
        del blocks
        assert _resident() > grown - (256 << 20)  # freed memory is kept for reuse ...
        trim_if_over(512 << 20)
        assert _resident() < grown - (512 << 20)  # ... until the process has grown too much
    assert ctypes.CDLL(None).malloc(1 << 20)  # the allocator still works after the restore
    del pins
