"""Training the demo SAM: data parallel, the processes' steps are one step on all their scenes; compiled,
the same step as the eager one."""

from __future__ import annotations

import os
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import get_rel_pos

import helpers.demo.train_sam as train_sam_module
from helpers.demo.scenes import TRAIN_STREAM, Scene
from helpers.demo.train import demo_sam_high_res_settings, demo_sam_settings, demo_sam_zoomed_settings, main
from helpers.demo.train_sam import (
    SamTrainSettings,
    SharedGradients,
    _batch,
    average_gradients,
    cosine_schedule,
    init_pointer_attention,
    load_start,
    point_embeddings,
    prompt_targets,
    resize_start,
    sam_step_loss,
    scene_stream,
    step_loss_tensors,
    train_sam,
)
from helpers.models.high_res import HighResMaskDecoder
from helpers.models.tiny import SamArchitecture, build_sam_small

SETTINGS = SamTrainSettings(steps=2, images_per_step=2, points_per_image=4, warmup=1, threads=1, processes=2)
SMALL = SamArchitecture(dim=32, depth=2, heads=2, global_attn=(1,), decoder_dim=64, decoder_mlp=64)  # no high-res path


def _averaged_in_one_process(settings: SamTrainSettings) -> dict:
    """The slow reference: each rank's scenes and gradients in turn in this process, their mean applied
    (a parameter without a gradient in any rank keeps none), then clipped."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference_steps(settings)
    finally:
        torch.set_num_threads(threads)


def _reference_steps(settings: SamTrainSettings) -> dict:
    torch.manual_seed(settings.seed)
    streams = [scene_stream(settings.seed, rank, settings.processes) for rank in range(settings.processes)]
    rngs = [np.random.default_rng(stream) for stream in streams]
    local = replace(settings, images_per_step=settings.images_per_step // settings.processes, processes=1)
    sam = build_sam_small(settings.architecture).train()
    init_pointer_attention(sam)
    optimiser = torch.optim.AdamW(sam.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, cosine_schedule(settings.steps, settings.warmup))
    for _ in range(settings.steps):
        grads = []
        for rng in rngs:
            images, prompts = _batch(rng, sam, local)
            optimiser.zero_grad(set_to_none=True)
            sam_step_loss(sam, images, prompts, settings)[0].backward()
            grads.append([p.grad.clone() if p.grad is not None else None for p in sam.parameters()])
        for p, *per_rank in zip(sam.parameters(), *grads):
            given = [g for g in per_rank if g is not None]
            p.grad = sum(given) / len(per_rank) if given else None
        # above 1: the order (average, then clip) matters, so the comparison checks it
        assert torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0) > 1
        optimiser.step()
        scheduler.step()
    return sam.state_dict()


@pytest.mark.parametrize("fast_decoder", [False, True])
def test_data_parallel_steps_average_the_processes_gradients(fast_decoder):
    settings = replace(SETTINGS, fast_decoder=fast_decoder)
    sam, history = train_sam(settings, progress=False)
    assert len(history) == settings.steps
    reference = _averaged_in_one_process(settings)
    trained = sam.state_dict()
    assert trained.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(trained[name], reference[name], msg=name)
    # and training moved the weights (the comparison is not between two untrained models)
    torch.manual_seed(settings.seed)
    start = build_sam_small(settings.architecture)
    init_pointer_attention(start)
    assert any(not torch.equal(start.state_dict()[n], trained[n]) for n in trained)


SHAPES = [(3, 5), (7,), (2, 2), (4,)]


def _gradients(rank: int, step: int) -> list[torch.Tensor | None]:
    """Step ``step``'s gradients of process ``rank``: magnitudes from 1e-6 to 1e3, so that the sums round; rank 0 has
    none for parameter 1, and no process has one for parameter 2."""
    generator = torch.Generator().manual_seed(100 * step + rank)
    grads = [torch.randn(shape, generator=generator) * 10.0 ** torch.randint(-6, 4, shape, generator=generator)
             for shape in SHAPES]  # fmt: skip
    return [None if i == 2 or (i == 1 and rank == 0) else g for i, g in enumerate(grads)]


def _exchange_worker(rank: int, rendezvous: Path, exchange: SharedGradients) -> None:
    """Each step's gradients averaged by gloo's all-reduce (``average_gradients``, what trained the committed SAM),
    then, in a loop of its own, by ``exchange``: the same bits, the same missing gradients. In that loop rank 1 reads
    late after each barrier, so that rank 0 writes the next step's gradients meanwhile (one buffer would fail)."""
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        parameters = [torch.nn.Parameter(torch.zeros(shape)) for shape in SHAPES]
        steps = range(8)  # each of the two buffers used four times
        results: dict[str, list] = {"gloo": [], "shared": []}
        for name in results:
            if name == "shared" and rank == 1:
                barrier = dist.barrier
                dist.barrier = lambda *args, **kwargs: (barrier(*args, **kwargs), time.sleep(0.05))[0]
            for step in steps:
                for p, g in zip(parameters, _gradients(rank, step)):
                    p.grad = None if g is None else g.clone()
                average_gradients(parameters, 2) if name == "gloo" else exchange.average(parameters, rank, step)
                results[name].append([None if p.grad is None else p.grad.clone() for p in parameters])
        for step, gloo, shared in zip(steps, results["gloo"], results["shared"]):
            assert [g is None for g in gloo] == [g is None for g in shared] == [False, False, True, False]
            for a, b in zip(gloo, shared):
                assert a is None or torch.equal(a.view(torch.int32), b.view(torch.int32)), (step, a, b)
            # and the mean is the mean: of the two ranks' gradients, a missing one counting as zero
            other = _gradients(1 - rank, step)
            for i, g in enumerate(_gradients(rank, step)):
                if i != 2:
                    expected = sum(x for x in (g, other[i]) if x is not None) / 2
                    torch.testing.assert_close(shared[i], expected, rtol=1e-6, atol=0)
    finally:
        dist.destroy_process_group()


def test_shared_memory_gradients_are_gloos_average_bit_for_bit(tmp_path):
    """Two processes: ``SharedGradients`` gives the gradients gloo's all-reduce gives, bit for bit (so the default
    command still trains the committed SAM), over more steps than its two alternating buffers, one process reading
    late; a parameter list of other sizes or dtype is refused."""
    parameters = [torch.nn.Parameter(torch.zeros(shape)) for shape in SHAPES]
    exchange = SharedGradients(parameters, 2)
    torch.multiprocessing.spawn(_exchange_worker, args=(tmp_path / "rendezvous", exchange), nprocs=2)
    with pytest.raises(ValueError, match="not the ones"):
        exchange.average(parameters[:2], 0, 0)
    with pytest.raises(ValueError, match="not the ones"):
        exchange.average([p.double() for p in parameters], 0, 0)


def test_data_parallel_streams_are_their_own():
    """The ranks' scene streams differ from each other and from the one-process SAM, CLIP and cut-out streams."""
    streams = {
        "sam": scene_stream(0),
        "sam seed 3": [TRAIN_STREAM, 3],
        "clip": [TRAIN_STREAM, 1, 0],
        "cut-outs 0": [TRAIN_STREAM, 2, 0, 0],
        "cut-outs 1": [TRAIN_STREAM, 2, 0, 1],
        **{f"rank {rank}": scene_stream(0, rank, 4) for rank in range(4)},
        **{f"high-res stage, rank {rank}": scene_stream(0, rank, 2, stage=2) for rank in range(2)},
        **{f"zoomed stage, rank {rank}": scene_stream(0, rank, 2, stage=3) for rank in range(2)},
    }
    draws = {name: tuple(np.random.default_rng(stream).integers(0, 2**62, 4)) for name, stream in streams.items()}
    assert len(set(draws.values())) == len(draws)


def test_processes_must_divide_the_scenes_of_a_step(capsys):
    with pytest.raises(ValueError, match="divide images_per_step"):
        SamTrainSettings(images_per_step=8, processes=3)
    with pytest.raises(SystemExit):
        main(["--quick", "--sam-processes", "3"])
    assert "--sam-processes must divide" in capsys.readouterr().err


def test_a_negative_seed_is_refused_before_training(capsys):
    with pytest.raises(SystemExit):
        main(["--quick", "--seed", "-1"])
    assert "--seed must be 0 or more" in capsys.readouterr().err


def test_the_zoomed_stage_settings_and_their_refusals(capsys):
    """Stage 3 continues the high-res SAM (same sizes, seed and processes) at a lower rate, a share of its scenes
    mosaics and a share zoomed in (the first two stages have neither); no stage 4; a negative step count, or a third
    stage without the second, refused before training."""
    first = demo_sam_settings()
    second = demo_sam_high_res_settings(first)
    third = demo_sam_zoomed_settings(second)
    assert (third.stage, third.architecture, third.seed, third.processes) == (3, second.architecture, 1, 2)
    assert 0 < third.zoom_share < 1 and third.max_zoom > 1 and second.zoom_share == first.zoom_share == 0
    assert 0 < third.mosaic_share < 1 and second.mosaic_share == first.mosaic_share == 0
    assert third.lr < second.lr and not third.pointer_init
    assert demo_sam_zoomed_settings(second, steps=5).warmup == 5  # a short stage still reaches its peak rate
    fewer = demo_sam_settings(points_per_image=4)  # --sam-points: every stage
    assert demo_sam_zoomed_settings(demo_sam_high_res_settings(fewer)).points_per_image == 4 == fewer.points_per_image
    with pytest.raises(ValueError, match="stage=4"):
        replace(third, stage=4)
    for argv, message in (
        (["--sam-zoomed-steps", "-1"], "--sam-zoomed-steps must be 0 or more"),
        (["--sam-high-res-steps", "0", "--sam-zoomed-steps", "5"], "it needs --sam-high-res-steps above 0"),
        (["--sam-points", "0"], "--sam-points must be 1 or more"),
        (["--sam-first-size", "150"], "--sam-first-size must be a multiple of the 16-px patch from 64 to 256"),
        (["--sam-first-size", "32"], "from 64 to 256"),
        (["--sam-first-size", "320"], "from 64 to 256"),
        (["--sam-first-size", "160", "--sam-high-res-steps", "0"], "brings SAM back to 256 px: give it steps"),
    ):
        with pytest.raises(SystemExit):
            main(["--quick", *argv])
        assert message in capsys.readouterr().err


def test_training_never_writes_into_an_installed_package(capsys, tmp_path):
    """The default output is outside the package; the shipped weights' folder is written only when named, from a
    source checkout: inside an installed package (no pyproject.toml above helpers/) it is refused before training,
    as is a folder that cannot be written."""
    from helpers.config import DEMO_WEIGHTS_DIR
    from helpers.demo.train import DEFAULT_OUT, out_dir_refusal

    assert not DEFAULT_OUT.is_absolute() and DEFAULT_OUT.parts[0] == "outputs"
    installed = tmp_path / "site-packages" / "helpers" / "demo" / "weights"
    installed.mkdir(parents=True)
    assert "installed package's demo weights" in out_dir_refusal(installed, installed)
    assert os.listdir(installed) == []
    (tmp_path / "pyproject.toml").write_text("")
    checkout = tmp_path / "helpers" / "demo" / "weights"
    assert out_dir_refusal(checkout, checkout) is None and os.listdir(checkout) == []  # nothing left by the check
    (tmp_path / "a-file").write_text("")
    assert "cannot be written" in out_dir_refusal(tmp_path / "a-file" / "out", DEMO_WEIGHTS_DIR)
    with pytest.raises(SystemExit):
        main(["--quick", "--only", "clip", "--out-dir", str(tmp_path / "a-file" / "out")])
    assert "cannot be written" in capsys.readouterr().err


def test_training_one_model_refuses_the_other_models_flags(capsys, tmp_path):
    """``--only clip`` with a SAM flag (or ``--only sam`` with a CLIP flag) would silently change nothing: refused,
    naming the flags, before anything trains."""
    for argv, message in (
        (
            ["--only", "clip", "--sam-steps", "5", "--snapshots"],
            "--only clip trains no SAM: leave out ['--sam-steps', ",
        ),
        (["--only", "clip", "--no-sam-compile"], "leave out ['--no-sam-compile']"),
        (["--only", "clip", "--sam-fast-decoder"], "leave out ['--sam-fast-decoder']"),
        (["--only", "clip", "--sam-points", "4"], "leave out ['--sam-points']"),
        (["--only", "clip", "--sam-first-size", "160"], "leave out ['--sam-first-size']"),
        (["--only", "sam", "--clip-steps", "5"], "--only sam trains no CLIP: leave out ['--clip-steps']"),
        (["--only", "sam", "--clip-loss", "contrastive"], "leave out ['--clip-loss']"),
        # the defaults, given or not, pass: the next check stops it (no SAM in the folder to train CLIP on)
        (["--only", "clip", "--sam-compile", "--out-dir", str(tmp_path)], "sam_demo.pth is missing"),
    ):
        with pytest.raises(SystemExit):
            main(["--quick", *argv])
        assert message in capsys.readouterr().err


def test_the_saved_sam_is_the_third_stages(tmp_path, capsys):
    """``_train_sam_into`` saves the SAM of its last stage: with a third stage, stage 3 trained from stage 2's weights
    (the same tensors as training it from the file stage 2 alone saves); with ``steps`` 0, stage 2's, as before
    the third stage existed, and the summary says the third stage had no steps. Each stage says when it ends."""
    from helpers.demo.train import _train_sam_into

    plain = SMALL
    first = replace(SETTINGS, processes=1, images_per_step=1, architecture=plain)
    second = demo_sam_high_res_settings(first, steps=1, lr=1e-3)
    third = replace(demo_sam_zoomed_settings(second, steps=2), zoom_share=1.0)
    two, three = tmp_path / "two.pth", tmp_path / "three.pth"
    threads = torch.get_num_threads()
    try:
        summary = _train_sam_into(two, first, second, replace(third, steps=0), progress=False)
        assert summary["sam_zoomed_settings"]["steps"] == 0 and "sam_zoomed_wall_s" not in summary
        said = capsys.readouterr().out
        assert "SAM stage 1 of 2: 2 steps in" in said and "SAM stage 2 of 2: 1 steps in" in said
        assert f"training IoU {summary['sam_high_res_final_train_iou']:.4f}" in said and "of 3" not in said
        summary = _train_sam_into(three, first, second, third, progress=False)
        assert summary["sam_zoomed_settings"]["stage"] == 3 and summary["sam_zoomed_wall_s"] > 0
        assert "SAM stage 3 of 3: 2 steps in" in capsys.readouterr().out
        reference, _ = train_sam(third, progress=False, start=torch.load(two, weights_only=True))
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="continues the high-res stage, which has 0 steps"):
        _train_sam_into(tmp_path / "none.pth", first, replace(second, steps=0), third, progress=False)
    assert not (tmp_path / "none.pth").exists()
    saved = torch.load(three, weights_only=True)
    # torch.save names its zip records after the file: written through a temporary name they took that name, and
    # no run reproduced the shipped bytes (7 Dec); the records are the file's own, as when saved in place
    assert {name.split("/")[0] for name in zipfile.ZipFile(three).namelist()} == {"three"}
    assert saved.keys() == reference.state_dict().keys()
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(saved[n], t) for n, t in torch.load(two, weights_only=True).items())


def test_a_part_threshold_over_the_naming_iou_is_refused(capsys):
    """A mask matching its shape at the naming IoU (0.7) is named after it, so no part may reach that IoU."""
    from helpers.demo.train_clip import ClipTrainSettings

    with pytest.raises(SystemExit):
        main(["--quick", "--clip-part-max-iou", "0.8"])
    assert "--clip-part-max-iou must lie between 0 and 0.7" in capsys.readouterr().err
    with pytest.raises(ValueError, match="sam_part_max_iou=0.8"):
        ClipTrainSettings(sam_part_max_iou=0.8)
    assert ClipTrainSettings(sam_part_max_iou=0.7).sam_part_max_iou == 0.7


def test_the_sigmoid_loss_is_siglips():
    """``sigmoid_loss`` is SigLIP's: binary cross-entropy of every image-caption pair (positive when the caption is
    true of the image, several per image allowed), summed and divided by the images; written here as the library's
    BCE-with-logits. Settings outside its range are refused."""
    from helpers.demo.train_clip import ClipTrainSettings, sigmoid_loss

    torch.manual_seed(0)
    logits = torch.randn(6, 9) * 5 - 2
    truth = torch.rand(6, 9) < 0.3
    reference = F.binary_cross_entropy_with_logits(logits, truth.float(), reduction="sum") / 6
    torch.testing.assert_close(sigmoid_loss(logits, truth), reference)
    logits.requires_grad_(True)
    sigmoid_loss(logits, truth).backward()  # gradient: (sigmoid(logit) - truth) / images, pair by pair
    torch.testing.assert_close(logits.grad, (torch.sigmoid(logits.detach()) - truth.float()) / 6)
    with pytest.raises(ValueError, match="choose 'sigmoid'"):
        ClipTrainSettings(loss="softmax")
    with pytest.raises(ValueError, match="sigmoid_scale=0"):
        ClipTrainSettings(sigmoid_scale=0)


def test_point_embeddings_are_the_prompt_encoders():
    torch.manual_seed(0)
    sam = build_sam_small(SETTINGS.architecture)
    for embedding in [*sam.prompt_encoder.point_embeddings, sam.prompt_encoder.not_a_point_embed]:
        torch.nn.init.normal_(embedding.weight)  # SAM's are random too; all different
    coords = torch.rand(5, 2, 2) * sam.image_encoder.img_size
    labels = torch.tensor([[1, 1], [0, 1], [1, 0], [0, 0], [1, -1]])
    expected = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    for got, want in zip(point_embeddings(sam, coords, labels), expected):
        assert torch.equal(got, want)


def _loss_and_grads(loss_fn, sam, images, prompts, settings, *args):
    sam.zero_grad(set_to_none=True)
    loss, *parts = loss_fn(sam, images, prompts, settings, *args)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in sam.named_parameters() if p.grad is not None}


def _assert_grads_close(got: dict, want: dict, label: str) -> None:
    """``got``'s gradients equal ``want``'s to float rounding: rearranged sums differ by ~1e-6 of a gradient's
    largest entry (the keys' biases: ~1e-8 on gradients that are 0 in exact arithmetic); wrong maths by its own size."""
    for name, grad in got.items():
        scale = want[name].abs().max().item()
        torch.testing.assert_close(
            grad, want[name], rtol=1e-4, atol=1e-3 * scale + 1e-6, msg=lambda m: f"{label} {name}: {m}"
        )


def _step_case(settings: SamTrainSettings):
    """A seeded SAM of ``settings.architecture`` as training starts it (a high-res stem drawn non-zero instead of
    zero, so that its part of the loss and gradients counts) and one batch of its scenes."""
    torch.manual_seed(0)
    sam = build_sam_small(settings.architecture).train()
    init_pointer_attention(sam)
    if settings.architecture.high_res:
        for parameter in sam.image_encoder.high_res.parameters():
            torch.nn.init.normal_(parameter, std=0.05)
    return sam, *_batch(np.random.default_rng(5), sam, settings)


# torch.compile's front end alone: dynamo's trace as one graph (a graph break fails) and AOTAutograd's joint forward and
# backward with inductor's decompositions and partitioner, run eagerly: inductor's code generation, the part that takes
# one to three minutes per graph on two cores (about 100-170 s, cold), is tested once, on the first stage's step.
TRACED = {"dynamic": False, "fullgraph": True, "backend": "aot_eager_decomp_partition"}


@pytest.mark.parametrize("background_only", [False, True])
def test_the_compiled_step_is_the_eager_step(background_only):
    """``step_loss_tensors`` (no data-dependent branch) under ``torch.compile`` gives the eager step's loss and
    gradients, also when an image has only background prompts (no mask loss from it)."""
    settings = replace(SETTINGS, processes=1, background_share=1.0 if background_only else 0.25)
    sam, images, prompts = _step_case(settings)
    if background_only:  # the first image: background prompts only; the second: shapes again
        prompts[1] = (*prompts[1][:3], torch.ones_like(prompts[1][3]))
        assert not prompts[0][3].any()
    loss, grads = _loss_and_grads(sam_step_loss, sam, images, prompts, settings)
    compiled = torch.compile(step_loss_tensors, dynamic=False, fullgraph=True)  # fullgraph: a graph break fails
    steps = (("eager", step_loss_tensors, False), ("fixed", step_loss_tensors, True), ("compiled", compiled, True))
    for label, fn, fixed in steps:
        got_loss, got_grads = _loss_and_grads(fn, sam, images, prompts, settings, fixed)
        torch.testing.assert_close(got_loss, loss)
        assert got_grads.keys() == grads.keys()
        _assert_grads_close(got_grads, grads, label)  # compiled kernels sum in another order


def test_the_high_res_step_traces_as_one_graph():
    """The committed SAM's second and third stages (the high-res path, SAM's own decoder): ``step_loss_tensors`` traced
    by torch.compile's front end (``TRACED``) gives the eager step's loss and gradients, the stem's included."""
    settings = replace(SETTINGS, processes=1, architecture=replace(SMALL, high_res=True))
    sam, images, prompts = _step_case(settings)
    loss, grads = _loss_and_grads(sam_step_loss, sam, images, prompts, settings)
    stem = [name for name in grads if name.startswith("image_encoder.high_res")]
    assert stem and all(grads[name].abs().max() > 0 for name in stem)
    got_loss, got_grads = _loss_and_grads(
        torch.compile(step_loss_tensors, **TRACED), sam, images, prompts, settings, True
    )
    torch.testing.assert_close(got_loss, loss)
    assert got_grads.keys() == grads.keys()
    _assert_grads_close(got_grads, grads, "traced")


@pytest.mark.parametrize("high_res", [False, True])
def test_the_fast_decoder_step_is_the_reference_step(high_res, monkeypatch):
    """With ``fast_decoder`` the step decodes through ``PromptBatchDecoder`` (the image's keys projected once, prompt
    tokens projected instead of image tokens): the reference step's loss and gradients to float rounding, with and
    without the high-res path (its stem made non-zero, so that it counts), eager and (with it) traced by torch.compile's
    front end (``TRACED``)."""
    settings = replace(SETTINGS, processes=1, architecture=replace(SMALL, high_res=high_res))
    sam, images, prompts = _step_case(settings)
    loss, grads = _loss_and_grads(sam_step_loss, sam, images, prompts, settings)
    fast = replace(settings, fast_decoder=True)
    steps = [("eager", sam_step_loss, ()), ("tensors", step_loss_tensors, (True,))]
    if high_res:  # traced once, on the path with the most of the decoder
        steps.append(("traced", torch.compile(step_loss_tensors, **TRACED), (True,)))
    for label, fn, args in steps:
        got_loss, got_grads = _loss_and_grads(fn, sam, images, prompts, fast, *args)
        torch.testing.assert_close(got_loss, loss, rtol=1e-5, atol=1e-6)
        # the fast decoder leaves out what cannot change the loss (the single-mask output's hypernetwork, the key
        # biases of later layers, constant along the softmax): no gradient, where the reference's is zero or ~1e-9
        assert got_grads.keys() <= grads.keys()
        unused = {name: grads[name].abs().max().item() for name in grads.keys() - got_grads.keys()}
        assert unused and max(unused.values()) < 1e-6, unused
        _assert_grads_close(got_grads, grads, label)
    made = []  # the fast step does decode through PromptBatchDecoder, once per image

    class Counted(train_sam_module.PromptBatchDecoder):
        def __init__(self, *args):
            made.append(1)
            super().__init__(*args)

    monkeypatch.setattr(train_sam_module, "PromptBatchDecoder", Counted)
    _loss_and_grads(sam_step_loss, sam, images, prompts, fast)
    assert len(made) == len(images)


def test_a_sam_variant_is_evaluated_with_its_own_architecture(tmp_path, capsys):
    """train_sam_variant.py saves the sizes beside the weights; eval_demo_models.py builds that SAM from them."""
    from conftest import load_benchmark

    variant, evaluation = load_benchmark("train_sam_variant"), load_benchmark("eval_demo_models")
    sizes = "--steps 1 --no-compile --processes 1 --dim 32 --depth 2 --heads 2 --decoder-dim 32".split()
    argv = ["--out-dir", str(tmp_path), *sizes]
    report = variant.main([*argv, "--global-attn", "1", "--threads", "1"])
    architecture = evaluation.read_architecture(tmp_path)
    assert architecture == evaluation.SamArchitecture(dim=32, depth=2, heads=2, global_attn=(1,), decoder_dim=32)
    models = evaluation._load("variant", tmp_path, architecture, evaluation.DEMO_SETTINGS, evaluation.DEMO_SELECTION)
    assert sum(p.numel() for p in models.sam.model.parameters()) == report["parameters"]
    assert evaluation.read_architecture(tmp_path.parent) == evaluation.DEMO_SAM_ARCHITECTURE  # none saved there
    with pytest.raises(SystemExit):
        variant.main([*argv, "--global-attn", "2", "--overwrite"])  # no block 2 in a 2-block encoder
    assert "--global-attn" in capsys.readouterr().err
    before = (tmp_path / "sam_demo.pth").read_bytes()
    with pytest.raises(SystemExit):
        variant.main([*argv, "--global-attn", "1"])  # weights there already: not replaced unless asked
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "sam_demo.pth").read_bytes() == before
    with pytest.raises(SystemExit):
        variant.main(["--out-dir", str(variant.DEMO_WEIGHTS_DIR)])
    assert "committed demo weights" in capsys.readouterr().err


def test_the_high_res_stage_continues_the_first_stages_sam():
    """Stage 2 starts from stage 1's weights with the high-res stem at zero, i.e. from the same model: the same
    logits; its steps then train the stem too."""
    plain = SMALL
    first = replace(SETTINGS, processes=1, architecture=plain)
    sam, _ = train_sam(first, progress=False)
    second = demo_sam_high_res_settings(first, steps=2, lr=1e-3)
    assert second.architecture.high_res and second.stage == 2 and second.seed == first.seed
    torch.manual_seed(0)
    started = build_sam_small(second.architecture).eval()
    load_start(started, sam.state_dict())
    image = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(torch.rand(5, 1, 2) * 256, torch.ones(5, 1, dtype=torch.int)),
                                           boxes=None, masks=None)  # fmt: skip
        pe = sam.prompt_encoder.get_dense_pe()
        before = sam.mask_decoder(sam.image_encoder(image), pe, sparse, dense, True)
        after = started.mask_decoder(started.image_encoder(image), pe, sparse, dense, True)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    trained, history = train_sam(second, progress=False, start=sam.state_dict())
    assert isinstance(trained.mask_decoder, HighResMaskDecoder) and len(history) == 2
    assert trained.image_encoder.high_res.proj_s4.weight.abs().sum() > 0  # the stem learns from its zero start
    for model, weights in ((build_sam_small(replace(plain, decoder_dim=128)), sam), (build_sam_small(plain), trained)):
        with pytest.raises(ValueError, match="do not fit this SAM"):  # other sizes; a high-res SAM into a plain one
            load_start(model, weights.state_dict())


def test_a_smaller_first_stage_hands_the_demo_size_on():
    """``--sam-first-size``: the first stage at a smaller input, the second at the demo SAM's 256 px from its weights,
    the position embedding and the global blocks' relative positions resized to the finer token grid (a flat field
    stays flat, a ramp stays a ramp over the same range), the windowed blocks' and every other tensor as they were."""
    first = replace(SETTINGS, processes=1, architecture=replace(SMALL, image_size=160))
    sam, _ = train_sam(first, progress=False)
    second = demo_sam_high_res_settings(first, steps=2, lr=1e-3)
    assert (second.architecture.image_size, second.architecture.high_res) == (256, True)
    target = build_sam_small(second.architecture)
    start = sam.state_dict()
    resized = resize_start(target, start)
    assert resized["image_encoder.pos_embed"].shape == target.image_encoder.pos_embed.shape == (1, 16, 16, SMALL.dim)
    global_block, window_block = f"image_encoder.blocks.{SMALL.global_attn[0]}", "image_encoder.blocks.0"
    for axis in ("h", "w"):
        assert resized[f"{global_block}.attn.rel_pos_{axis}"].shape[0] == 31 == 2 * 16 - 1
        assert start[f"{global_block}.attn.rel_pos_{axis}"].shape[0] == 19 == 2 * 10 - 1
    changed = {"image_encoder.pos_embed", f"{global_block}.attn.rel_pos_h", f"{global_block}.attn.rel_pos_w"}
    for name, tensor in start.items():
        if name not in changed:
            assert torch.equal(resized[name], tensor), name
    assert torch.equal(resized[f"{window_block}.attn.rel_pos_h"], start[f"{window_block}.attn.rel_pos_h"])
    level = torch.full_like(start["image_encoder.pos_embed"], 0.5)
    flat = resize_start(target, {**start, "image_encoder.pos_embed": level})
    torch.testing.assert_close(flat["image_encoder.pos_embed"], torch.full((1, 16, 16, SMALL.dim), 0.5))
    rows = torch.arange(10.0)[None, :, None, None].expand(1, 10, 10, SMALL.dim).contiguous()  # down the rows only
    down = resize_start(target, {**start, "image_encoder.pos_embed": rows})["image_encoder.pos_embed"]
    torch.testing.assert_close(down, down[:, :, :1].expand_as(down))  # still flat along each row
    assert (down[0, :, 0, 0].diff() >= 0).all() and down[0, 0, 0, 0] < 0.5 and down[0, -1, 0, 0] > 8.5
    ramp = torch.randn(19, SMALL.dim // SMALL.heads)
    moved = resize_start(target, {**start, f"{global_block}.attn.rel_pos_h": ramp})[f"{global_block}.attn.rel_pos_h"]
    torch.testing.assert_close(get_rel_pos(16, 16, moved), get_rel_pos(16, 16, ramp))  # as segment_anything resizes
    other = replace(second.architecture, global_attn=(0,))  # another window layout still fails to load
    with pytest.raises(ValueError, match="do not fit this SAM"):
        load_start(build_sam_small(other), start)
    trained, history = train_sam(second, progress=False, start=start)
    assert trained.image_encoder.img_size == 256 and len(history) == 2


def test_the_first_size_reaches_the_first_stage_alone(monkeypatch, tmp_path):
    """``--sam-first-size 160``: the first stage's settings at 160 px, the second and third at 256."""
    import helpers.demo.train as train_module

    seen = {}

    class Stop(Exception):
        pass

    def capture(path, first, second, third, progress, snapshots=False):
        seen.update(first=first, second=second, third=third)
        raise Stop  # before any training

    monkeypatch.setattr(train_module, "_train_sam_into", capture)
    with pytest.raises(Stop):
        main(["--sam-first-size", "160", "--only", "sam", "--out-dir", str(tmp_path), "--no-progress"])
    sizes = [seen[stage].architecture.image_size for stage in ("first", "second", "third")]
    assert sizes == [160, 256, 256] and seen["second"].architecture.high_res


def test_a_zoomed_scene_is_a_window_of_it_scaled_up():
    """``zoom_scene`` keeps the scene's size and its instances, scales a window by the zoom (a shape inside it grows
    by zoom squared in area), and its masks stay one per pixel; zoom 1 is the scene itself."""
    from helpers.demo.scenes import make_scene, zoom_scene

    scene = make_scene(np.random.default_rng(3))
    same = zoom_scene(scene, np.random.default_rng(0), 1.0)
    assert np.array_equal(same.image, scene.image) and np.array_equal(same.masks, scene.masks)
    h, w = scene.image.shape[:2]
    for seed in range(5):
        zoomed = zoom_scene(scene, np.random.default_rng(seed), 2.0)
        assert zoomed.image.shape == scene.image.shape and zoomed.masks.shape == scene.masks.shape
        assert zoomed.kinds == scene.kinds and zoomed.masks.sum(0).max() <= 1
    # the shape's pixels in the window (drawn as zoom_scene draws it), x 4 within the edge's rounding
    circle = np.zeros((h, w), bool)
    circle[np.hypot(*np.mgrid[:h, :w] - np.array([h / 2, w / 2])[:, None, None]) < 30] = True
    image = np.where(circle[..., None], 200, 40).astype(np.uint8).repeat(3, 2)
    centred = Scene(image, ["circle"], [(200, 200, 200)], circle[None])
    for seed in range(3):
        rng = np.random.default_rng(seed)
        y, x = rng.integers(0, h // 2 + 1), rng.integers(0, w // 2 + 1)
        zoomed = zoom_scene(centred, np.random.default_rng(seed), 2.0)
        assert zoomed.masks[0].sum() == pytest.approx(4 * circle[y : y + h // 2, x : x + w // 2].sum(), rel=0.03)
        assert (zoomed.image[zoomed.masks[0]] > 120).all()  # the mask lies on the shape's pixels


# The random stream's state after one ``_batch`` of seed 5 with SETTINGS in one process, as the code before zoomed
# scenes existed (53a7fa2) left it: a batch without zoom must draw exactly what it drew (the committed first stage).
STATE_AFTER_A_PLAIN_BATCH = 71032338696427757590555701034162587811


def test_zoomed_and_mosaic_scenes_only_where_asked():
    """Without zoom or mosaics the batch draws what it always drew (no extra random number: the committed first
    stage's stream); with either, other scenes; a share or zoom outside its range is refused."""
    sam = build_sam_small(SMALL)
    plain = replace(SETTINGS, processes=1)
    variants = (plain, replace(plain, zoom_share=1.0), replace(plain, mosaic_share=1.0))
    rngs = [np.random.default_rng(5) for _ in variants]
    draws = [_batch(rng, sam, s)[0] for rng, s in zip(rngs, variants)]
    assert rngs[0].bit_generator.state["state"]["state"] == STATE_AFTER_A_PLAIN_BATCH
    for rng, draw in zip(rngs[1:], draws[1:]):
        assert rng.bit_generator.state["state"]["state"] != STATE_AFTER_A_PLAIN_BATCH
        assert not torch.equal(draws[0], draw)
    for bad, message in (
        ({"zoom_share": 1.5}, "zoom"),
        ({"max_zoom": 0.5}, "zoom"),
        ({"mosaic_share": -0.1}, "mosaic"),
    ):
        with pytest.raises(ValueError, match=message):
            replace(plain, **bad)


def test_a_mosaic_scene_holds_tiles_of_larger_shapes():
    """``mosaic_scene`` has the scenes' size (SAM's inputs keep one size), one instance per pixel, and shapes scaled
    up (a mosaic's largest shape well above a scene's); the same stream gives the same mosaic."""
    from helpers.demo.scenes import make_scene, mosaic_scene

    tile = 160
    mosaics = [mosaic_scene(np.random.default_rng(seed), tile=tile) for seed in range(6)]
    scenes = [make_scene(np.random.default_rng(seed)) for seed in range(6)]
    for mosaic in mosaics:
        assert mosaic.image.shape == scenes[0].image.shape and mosaic.masks.shape[1:] == mosaic.image.shape[:2]
        assert len(mosaic.kinds) == len(mosaic.masks) and mosaic.masks.any((1, 2)).all()
        assert mosaic.masks.sum(0).max() <= 1

    def largest(group):  # the median over scenes of each one's largest shape, in pixels
        return np.median([scene.masks.sum((1, 2)).max() for scene in group])

    assert largest(mosaics) > 1.5 * largest(scenes)
    again = mosaic_scene(np.random.default_rng(0), tile=tile)
    assert np.array_equal(again.image, mosaics[0].image) and np.array_equal(again.masks, mosaics[0].masks)


def test_only_clip_keeps_the_record_of_the_sam_it_learns_from(tmp_path):
    """``--only clip`` keeps the SAM stages' settings and times of the summary beside the SAM, but only when that
    summary describes this very file (its sha256), and none of the CLIP's or the evaluation's keys."""
    import json

    from helpers.checkpoints.ensure import sha256_of
    from helpers.demo.train import sam_record

    sam = tmp_path / "sam_demo.pth"
    sam.write_bytes(b"weights")
    summary = tmp_path / "train_summary.json"
    assert sam_record(summary, sam) == {}  # no summary
    previous = {
        "sha256": {"sam_demo.pth": sha256_of(sam)},
        "sam_settings": {"steps": 8500},
        "sam_train_wall_s": 1.0,
        "sam_zoomed_wall_s": 2.0,
        "sam_cutouts_wall_s": 3.0,
        "sam_ceiling": 0.9,
        "clip_settings": {"steps": 1},
    }
    summary.write_text(json.dumps(previous))
    kept = {"sam_settings": {"steps": 8500}, "sam_train_wall_s": 1.0, "sam_zoomed_wall_s": 2.0}
    assert sam_record(summary, sam) == kept
    sam.write_bytes(b"other weights")
    assert sam_record(summary, sam) == {}  # the summary is another SAM's


def _reference_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The backgrounds as first written: every pattern over the whole pixel grid."""
    kind = rng.integers(4)
    base = rng.integers(60, 200, 3)
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == 0:
        image = base + (xx / width)[..., None] * rng.integers(-60, 60, 3)
    elif kind == 1:
        image = base + ((yy // rng.integers(6, 20)) % 2)[..., None] * 40
    elif kind == 2:
        step = rng.integers(10, 30)
        image = base + (((yy // step) + (xx // step)) % 2)[..., None] * 35
    else:
        image = base + rng.normal(0, 18, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _reference_prompts(scene, rng, count, settings):
    """``_prompts`` as first written: the target's pixels listed again for every point."""
    targets, has_background = prompt_targets(scene, settings.min_area)
    points, owners = [], []
    for _ in range(count):
        if has_background and (rng.random() < settings.background_share or len(targets) == 1):
            owner = len(targets) - 1
        else:
            owner = int(rng.integers(len(targets) - has_background))
        ys, xs = np.nonzero(targets[owner])
        pick = rng.integers(len(xs))
        points.append((xs[pick] + rng.random(), ys[pick] + rng.random()))
        owners.append(owner)
    return np.asarray(points, np.float64), owners, targets, (len(targets) - 1 if has_background else -1)


def _reference_batch(rng, sam, settings):
    """``_batch`` as first written: per-point resized targets, the normalisation computed on every pixel."""
    import cv2
    from segment_anything.utils.transforms import ResizeLongestSide

    from helpers.demo.scenes import make_scene, mosaic_scene, zoom_scene

    transform = ResizeLongestSide(sam.image_encoder.img_size)
    size = sam.image_encoder.img_size
    images, prompts = np.zeros((settings.images_per_step, 3, size, size), np.float32), []
    mean, std = sam.pixel_mean.reshape(3).numpy(), sam.pixel_std.reshape(3).numpy()
    for index in range(settings.images_per_step):
        if settings.mosaic_share and rng.random() < settings.mosaic_share:
            scene = mosaic_scene(rng)
        else:
            scene = make_scene(rng)
            if settings.zoom_share and rng.random() < settings.zoom_share:
                scene = zoom_scene(scene, rng, rng.uniform(1, settings.max_zoom))
        points, owners, targets, background = _reference_prompts(scene, rng, settings.points_per_image, settings)
        small = transform.apply_image(scene.image)
        h, w = small.shape[:2]
        lh, lw = h // settings.loss_scale, w // settings.loss_scale
        soft = np.stack(
            [cv2.resize(targets[o].astype(np.float32), (lw, lh), interpolation=cv2.INTER_AREA) for o in owners]
        )
        images[index][:, :h, :w] = ((small.astype(np.float32) - mean) / std).transpose(2, 0, 1)
        coords = torch.as_tensor(transform.apply_coords(points, scene.image.shape[:2]), dtype=torch.float32)
        foreground = torch.as_tensor([not settings.background_iou_only or o != background for o in owners])
        prompts.append(
            (coords[:, None, :], torch.ones(len(points), 1, dtype=torch.int), torch.as_tensor(soft), foreground)
        )
    return torch.from_numpy(images), prompts


def test_the_fast_scene_data_is_the_reference_data():
    """The training scenes' fast paths against the slow reference, pixel for pixel and draw for draw: backgrounds
    broadcast from a row or column, one pixel list and one resized target per prompted shape, SAM's normalisation by a
    256-entry table; the whole step's data of all three stages (mosaic and zoomed scenes in the third), and the random
    stream left in the same state."""
    from helpers.data.demo import _background

    kinds = set()
    for seed in range(24):
        fast, slow = np.random.default_rng(seed), np.random.default_rng(seed)
        kinds.add(int(np.random.default_rng(seed).integers(4)))
        for height, width in ((48, 64), (1, 7), (9, 1)):
            image = _background(fast, height, width)
            assert image.flags.writeable and image.flags.c_contiguous and image.shape == (height, width, 3)
            np.testing.assert_array_equal(image, _reference_background(slow, height, width))
        assert fast.bytes(8) == slow.bytes(8)  # the same draws taken
    assert kinds == {0, 1, 2, 3}

    first = replace(demo_sam_settings(), images_per_step=3, processes=1)
    second = demo_sam_high_res_settings(first)
    for settings in (first, second, replace(demo_sam_zoomed_settings(second), mosaic_share=0.5, zoom_share=0.5)):
        sam = build_sam_small(settings.architecture)
        fast, slow = np.random.default_rng(7), np.random.default_rng(7)
        for _ in range(3):
            images, prompts = _batch(fast, sam, settings)
            reference_images, reference_prompts = _reference_batch(slow, sam, settings)
            np.testing.assert_array_equal(images.numpy(), reference_images.numpy())
            for prompt, reference in zip(prompts, reference_prompts, strict=True):
                for tensor, expected in zip(prompt, reference, strict=True):
                    assert tensor.dtype == expected.dtype
                    np.testing.assert_array_equal(tensor.numpy(), expected.numpy())
        assert fast.bit_generator.state == slow.bit_generator.state


def test_the_closing_note_says_why_the_bytes_differ():
    """The command's last line: the files' match with the shipped ones and, where they differ, this run's CPU type and
    threads beside the shipped files' (``DEMO_TRAINED_ON``): expected on another CPU type, a finding on the same one."""
    from helpers.config import DEMO_TRAINED_ON
    from helpers.demo.train import byte_for_byte_note

    same_cpu = {"model": f"{DEMO_TRAINED_ON['model']} 7B13", "kernels": DEMO_TRAINED_ON["kernels"]}
    both = {"sam_demo.pth": True, "clip_demo.pt": True}
    note = byte_for_byte_note({"matches_registry": both, "cpu": same_cpu, "threads": 2})
    assert "sam_demo.pth yes, clip_demo.pt yes" in note and "this run" not in note
    differ = {"sam_demo.pth": False, "clip_demo.pt": True}
    other_cpu = {"model": "Intel(R) Xeon(R) Platinum", "kernels": "AVX512"}
    note = byte_for_byte_note({"matches_registry": differ, "cpu": other_cpu, "threads": 2})
    assert "sam_demo.pth no" in note and "Intel(R) Xeon(R) Platinum with AVX512 kernels" in note
    assert "as expected" in note
    note = byte_for_byte_note({"matches_registry": differ, "cpu": same_cpu, "threads": 1})  # another thread count
    assert "as expected" in note
    note = byte_for_byte_note({"matches_registry": differ, "cpu": same_cpu, "threads": DEMO_TRAINED_ON["threads"]})
    assert "with the default options the bytes should have matched" in note
    assert "DEMO_SHA256 (helpers/config.py)" in note
