"""Training the demo SAM data parallel: the processes' steps are one step on all their scenes."""

from __future__ import annotations

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
    train_sam,
)
from helpers.models.tiny import build_sam_small

SETTINGS = SamTrainSettings(steps=2, images_per_step=2, points_per_image=4, warmup=1, threads=1, processes=2)


def _averaged_in_one_process(settings: SamTrainSettings) -> dict:
    """The slow reference: each rank's scenes and gradients in turn in this process, their mean applied."""
    torch.manual_seed(settings.seed)
    torch.set_num_threads(1)
    rngs = [np.random.default_rng([TRAIN_STREAM, 3, settings.seed, rank + 1]) for rank in range(settings.processes)]
    local = SamTrainSettings(**{**settings.__dict__, "images_per_step": 1, "processes": 1})
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
            grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in sam.parameters()])
        for p, *per_rank in zip(sam.parameters(), *grads):
            p.grad = sum(per_rank) / len(per_rank)
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
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


def test_processes_must_divide_the_scenes_of_a_step(capsys):
    with pytest.raises(ValueError, match="divide images_per_step"):
        SamTrainSettings(images_per_step=8, processes=3)
    with pytest.raises(SystemExit):
        main(["--quick", "--sam-processes", "3"])
    assert "--sam-processes must divide" in capsys.readouterr().err
