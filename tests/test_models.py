import numpy as np
import pytest
import torch

from helpers.checkpoints.ensure import CheckpointError, UnknownModelError
from helpers.clip_scoring import encode_images, encode_text
from helpers.models.loading import is_torchscript_archive, load_clip, load_sam
from helpers.models.tiny import TINY_SAM, build_clip_tiny


def test_tiny_checkpoints_load_through_the_user_code_path(tiny_checkpoints):
    assert is_torchscript_archive(tiny_checkpoints["clip"])  # the OpenAI archive format: clip.load(jit=False)
    assert not is_torchscript_archive(tiny_checkpoints["sam"])
    sam = load_sam(TINY_SAM, tiny_checkpoints["sam"])
    saved = torch.load(tiny_checkpoints["sam"], weights_only=True)
    for name, value in sam.model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    clip_model = load_clip(tiny_checkpoints["clip"])
    assert next(clip_model.model.parameters()).dtype == torch.float32
    assert clip_model.model.visual.input_resolution == 32


def test_open_clip_state_dict_converts_to_the_same_model(tiny_checkpoints, tmp_path):
    original = load_clip(tiny_checkpoints["clip"])
    # the open_clip layout: same key names, wrapped, with a rebuilt attention-mask buffer
    state = {f"module.{k}": v for k, v in original.model.state_dict().items()}
    state["attn_mask"] = torch.zeros(77, 77)
    torch.save({"state_dict": state}, tmp_path / "open_clip_pytorch_model.bin")
    converted = load_clip(tmp_path / "open_clip_pytorch_model.bin")
    image = [np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)]
    np.testing.assert_allclose(encode_images(converted, image), encode_images(original, image), atol=1e-6)
    np.testing.assert_allclose(encode_text(converted, ["dog"]), encode_text(original, ["dog"]), atol=1e-6)


def test_wrong_files_give_clear_errors(tiny_checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*00_download_checkpoints"):
        load_sam("vit_b", tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="does not fit SAM 'vit_b'"):
        load_sam("vit_b", tiny_checkpoints["sam"])
    with pytest.raises(UnknownModelError, match="vit_h"):
        load_sam("vit_q", tiny_checkpoints["sam"])
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.bin")
    with pytest.raises(CheckpointError, match="Not an OpenAI-CLIP compatible"):
        load_clip(tmp_path / "other.bin")


def save_tagged_for_cuda(state: dict, path) -> None:
    """Save ``state`` as a GPU run does: every storage tagged "cuda:0" in the file (a tagger
    registered ahead of torch's own, removed again afterwards)."""
    registry = torch.serialization._package_registry
    entry = (0, lambda storage: "cuda:0", lambda storage, location: None)
    registry.insert(0, entry)
    try:
        torch.save(state, path)
    finally:
        registry.remove(entry)


def test_a_gpu_saved_checkpoint_loads_on_cpu(tiny_checkpoints, tmp_path):
    sam_file, clip_file = tmp_path / "sam_gpu.pth", tmp_path / "clip_gpu.bin"
    sam_state = torch.load(tiny_checkpoints["sam"], map_location="cpu", weights_only=True)
    save_tagged_for_cuda(sam_state, sam_file)
    save_tagged_for_cuda(build_clip_tiny().state_dict(), clip_file)
    if not torch.cuda.is_available():  # the files really are GPU files: a plain load needs CUDA
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(sam_file, weights_only=True)
    sam = load_sam(TINY_SAM, sam_file)
    assert sam.device.type == "cpu"
    for name, value in sam.model.state_dict().items():
        assert torch.equal(value, sam_state[name]), name
    assert next(load_clip(clip_file).model.parameters()).device.type == "cpu"
