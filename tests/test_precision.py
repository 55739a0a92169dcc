from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import LOOSE_SAM

from helpers import config as cfg
from helpers import precision
from helpers.clip_scoring import encode_images
from helpers.data import make_demo_dataset
from helpers.masks import best_match_iou
from helpers.pipeline import Pipeline, PipelineSettings
from helpers.regions import extract_regions
from helpers.segmentation import generate_masks


def test_unsupported_precisions_say_what_to_use(monkeypatch):
    with pytest.raises(ValueError, match="use one of"):
        precision.check_precision("int8")
    with pytest.raises(ValueError, match="on a CPU use 'bfloat16'"):
        precision.check_precision("float16", "cpu")
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.raises(ValueError, match="use 'float16'"):
        precision.check_precision("bfloat16", "cuda")
    assert precision.check_precision("float16", "cuda:0") == "float16"
    with pytest.raises(ValueError, match="Unknown precision"):
        PipelineSettings(precision="half")


def test_bfloat16_sam_keeps_the_masks_close_and_float32_outputs(tiny_models):
    sam, _ = tiny_models
    image = make_demo_dataset(1, 120, 160, seed=3)[0].image
    exact = generate_masks(sam, image, LOOSE_SAM)
    fast = generate_masks(sam, image, LOOSE_SAM, precision="bfloat16")
    assert len(exact) > 0 and len(fast) > 0
    # every float32 mask has a bfloat16 twin that overlaps it almost entirely
    assert best_match_iou(exact, fast).min() > 0.9


def test_bfloat16_clip_scores_within_tolerance(tiny_models):
    sam, clip_model = tiny_models
    image = make_demo_dataset(1, 120, 160, seed=4)[0].image
    rng = np.random.default_rng(0)
    regions = [
        rng.integers(0, 256, (int(rng.integers(10, 50)), int(rng.integers(10, 50)), 3), dtype=np.uint8)
        for _ in range(6)
    ] + extract_regions(image, generate_masks(sam, image, LOOSE_SAM))
    exact = encode_images(clip_model, regions)
    fast = encode_images(clip_model, regions, precision="bfloat16")
    assert fast.dtype == np.float32 and fast.shape == exact.shape
    assert not np.array_equal(fast, exact)  # it did run in another precision
    assert np.min(np.sum(fast * exact, axis=1)) > 0.99  # cosine between the two embeddings of each region


def test_run_precision_reaches_both_models_and_the_cache_key(monkeypatch, tiny_models):
    monkeypatch.setenv("SAMCLIP_PROFILE", "smoke")
    monkeypatch.setenv("SAMCLIP_PRECISION", "bfloat16")
    config = cfg.load_config()
    assert config.pipeline.precision == "bfloat16" and "precision=bfloat16" in cfg.banner(config)
    sam, clip_model = tiny_models
    exact = Pipeline(sam, clip_model, replace(config.pipeline, precision="float32"))
    fast = Pipeline(sam, clip_model, config.pipeline)
    assert fast.sam_key != exact.sam_key and fast.embedding_key != exact.embedding_key
    monkeypatch.setenv("SAMCLIP_PRECISION", "float16")
    monkeypatch.setenv("SAMCLIP_DEVICE", "cpu")
    with pytest.raises(cfg.ConfigError, match="SAMCLIP_PRECISION=float16: float16 is for GPUs"):
        cfg.load_config()


def test_float32_on_a_gpu_is_true_float32_and_the_flags_come_back():
    """PyTorch lets cuDNN convolutions use TF32 by default, so a GPU's "float32" masks were not the CPU's (an H200
    run: decoder logits 1.8e-2 apart). Inside float32 work on a GPU TF32 is off; the user's flags come back after."""
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    before = [flag.allow_tf32 for flag in flags]
    try:
        for start in (True, False):
            for flag in flags:
                flag.allow_tf32 = start
            with precision.autocast("cuda:0", "float32"):
                assert not any(flag.allow_tf32 for flag in flags)
            assert all(flag.allow_tf32 == start for flag in flags)
        with precision.autocast("cpu", "float32"):
            assert all(flag.allow_tf32 == start for flag in flags)  # the CPU has no TF32: left alone
    finally:
        for flag, value in zip(flags, before):
            flag.allow_tf32 = value
