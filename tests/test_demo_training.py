"""Training the demo SAM data parallel: the processes' steps are one step on all their scenes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.demo.scenes import TRAIN_STREAM
from helpers.demo.train import main
from helpers.demo.train_sam import (
    SamTrainSettings,
    _batch,
    cosine_schedule,
    init_pointer_attention,
    sam_step_loss,
    scene_stream,
    train_sam,
)
from helpers.models.tiny import build_sam_small

SETTINGS = SamTrainSettings(steps=2, images_per_step=2, points_per_image=4, warmup=1, threads=1, processes=2)


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


def test_data_parallel_steps_average_the_processes_gradients():
    sam, history = train_sam(SETTINGS, progress=False)
    assert len(history) == SETTINGS.steps
    reference = _averaged_in_one_process(SETTINGS)
    trained = sam.state_dict()
    assert trained.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(trained[name], reference[name], msg=name)
    # and training moved the weights (the comparison is not between two untrained models)
    torch.manual_seed(SETTINGS.seed)
    start = build_sam_small(SETTINGS.architecture)
    init_pointer_attention(start)
    assert any(not torch.equal(start.state_dict()[n], trained[n]) for n in trained)


def test_data_parallel_streams_are_their_own():
    """The ranks' scene streams differ from each other and from the one-process SAM, CLIP and cut-out streams."""
    streams = {
        "sam": scene_stream(0),
        "sam seed 3": [TRAIN_STREAM, 3],
        "clip": [TRAIN_STREAM, 1, 0],
        "cut-outs 0": [TRAIN_STREAM, 2, 0, 0],
        "cut-outs 1": [TRAIN_STREAM, 2, 0, 1],
        **{f"rank {rank}": scene_stream(0, rank, 4) for rank in range(4)},
    }
    draws = {name: tuple(np.random.default_rng(stream).integers(0, 2**62, 4)) for name, stream in streams.items()}
    assert len(set(draws.values())) == len(draws)


def test_processes_must_divide_the_scenes_of_a_step(capsys):
    with pytest.raises(ValueError, match="divide images_per_step"):
        SamTrainSettings(images_per_step=8, processes=3)
    with pytest.raises(SystemExit):
        main(["--quick", "--sam-processes", "3"])
    assert "--sam-processes must divide" in capsys.readouterr().err
