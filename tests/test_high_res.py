"""helpers.models.high_res: SAM 2's high-resolution path on segment_anything's classes, carried through every
interface inside the image embedding; the fast engine's masks equal segment-anything's with it."""

from __future__ import annotations

import copy

import pytest
import torch
from segment_anything.modeling import MaskDecoder
from test_mask_generator import OPEN, assert_same_masks, blocks, reference

from helpers.models.high_res import HighResImageEncoder, HighResMaskDecoder, split_high_res
from helpers.models.tiny import SamArchitecture, build_sam_small, steepen_random_sam
from helpers.sam.decoder import PromptBatchDecoder
from helpers.sam.encoder import encode
from helpers.sam.generator import generate_mask_set

SMALL = SamArchitecture(dim=32, depth=2, heads=2, global_attn=(1,), decoder_dim=64, decoder_mlp=64, high_res=True)


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    model = build_sam_small(SMALL).eval()
    stem = model.image_encoder.high_res
    with torch.no_grad():  # a new model's stem gives zeros (test below); here features that move the masks
        for proj in (stem.proj_s4, stem.proj_s8):
            proj.reset_parameters()
            proj.weight.mul_(20)
    return model


def test_a_new_model_starts_as_sams_decoder():
    torch.manual_seed(0)
    features = build_sam_small(SMALL).image_encoder(torch.randn(1, 3, 256, 256))
    assert features.shape[1] > 64 and not features[:, 64:].any()


def decode(model, features, sparse, dense):
    pe = model.prompt_encoder.get_dense_pe()
    return model.mask_decoder(features, pe, sparse, dense, multimask_output=True)


def points(model, count=7, seed=1):
    generator = torch.Generator().manual_seed(seed)
    coords = torch.rand(count, 1, 2, generator=generator) * 256
    return model.prompt_encoder(points=(coords, torch.ones(count, 1, dtype=torch.int)), boxes=None, masks=None)


def test_the_embedding_carries_the_stride_8_and_stride_4_features(sam):
    assert isinstance(sam.image_encoder, HighResImageEncoder) and isinstance(sam.mask_decoder, HighResMaskDecoder)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        features = sam.image_encoder(x)
        embedding, s8, s4 = split_high_res(features, 64)
        stem = sam.image_encoder.high_res
        assert embedding.shape == (2, 64, 16, 16) and s8.shape == (2, 16, 32, 32) and s4.shape == (2, 8, 64, 64)
        assert torch.equal(s4, stem.proj_s4(stem.to_s4(x)))
        assert torch.equal(s8, stem.proj_s8(stem.to_s8(stem.to_s4(x))))
        assert torch.equal(encode(sam, x), features)  # the per-head encoder keeps the stem


def test_it_is_sams_decoder_plus_the_features(sam):
    """With the stem's output zero the decoder gives MaskDecoder's logits bit for bit; with it, other logits."""
    plain = MaskDecoder(
        num_multimask_outputs=3, transformer=sam.mask_decoder.transformer, transformer_dim=64, iou_head_hidden_dim=64
    )
    plain.load_state_dict(sam.mask_decoder.state_dict())
    with torch.no_grad():
        features = sam.image_encoder(torch.randn(1, 3, 256, 256))
        sparse, dense = points(sam)
        embedding, _, _ = split_high_res(features, 64)
        zeroed = torch.cat([embedding, torch.zeros_like(features[:, 64:])], dim=1)
        ours, iou = decode(sam, zeroed, sparse, dense)
        theirs, iou_plain = plain(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
        assert torch.equal(ours, theirs) and torch.equal(iou, iou_plain)
        with_features, _ = decode(sam, features, sparse, dense)
    assert (with_features - ours).abs().max() > 0.1 * ours.abs().max()


def test_fast_decoder_equals_the_high_res_decoder(sam):
    with torch.no_grad():
        features = sam.image_encoder(torch.randn(1, 3, 256, 256))
        sparse, dense = points(sam, 12)
        ref_masks, ref_iou = decode(sam, features, sparse, dense)
        decoder = PromptBatchDecoder(sam, features)
        queries, keys, iou = decoder.tokens(sparse)
        masks = decoder.masks(queries, keys)
    assert (masks - ref_masks).abs().max() <= 1e-5 * ref_masks.abs().max()
    assert (iou - ref_iou).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "options",
    [
        dict(points_per_side=6, **OPEN),
        dict(points_per_side=6, crop_n_layers=1, pred_iou_thresh=0.0, stability_score_thresh=0.9),
    ],
    ids=["open", "crops"],
)
def test_generator_gives_segment_anythings_masks(sam, options):
    model = steepen_random_sam(copy.deepcopy(sam))  # masks through the gates, as with trained weights
    image = blocks(200, 264)
    assert_same_masks(generate_mask_set(model, image, **options), reference(model, image, **options), min_count=5)


def test_weights_round_trip_and_a_plain_embedding_is_refused(sam, tmp_path):
    path = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), path)
    again = build_sam_small(SMALL)
    again.load_state_dict(torch.load(path, weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(sam.state_dict().values(), again.state_dict().values()))
    for channels in (64, 100, 32):  # a plain embedding, another count, fewer than the embedding's own
        with pytest.raises(ValueError, match="needs HighResImageEncoder's output"):
            split_high_res(torch.zeros(1, channels, 16, 16), 64)
