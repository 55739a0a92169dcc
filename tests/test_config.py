import dataclasses
import subprocess
from pathlib import Path

import pytest

from helpers import config as cfg

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_profile_is_labelled_everywhere():
    config = cfg.load_config({"SAMCLIP_PROFILE": "smoke"})
    assert config.is_smoke and config.sam_model == "sam_tiny" and config.clip_model == "clip_tiny"
    assert "SMOKE TEST" in cfg.banner(config) and config.title("x").startswith("[SMOKE TEST")
    assert config.checkpoint_dir == config.root / "outputs" / "smoke" / "checkpoints"  # never mixed with real ones
    assert config.pipeline.sam == cfg.SMOKE_SAM and config.pipeline.sam.pred_iou_thresh == 0.0
    assert config.max_images == 4


def test_full_profile_picks_the_model_by_device():
    config = cfg.load_config({})
    assert config.profile == "full" and "SMOKE" not in cfg.banner(config) and config.title("x") == "x"
    assert config.sam_model == ("vit_h" if config.device == "cuda" else "vit_b")
    assert cfg.default_sam_model("cuda") == "vit_h" and cfg.default_sam_model("cpu") == "vit_b"
    assert cfg.load_config({"SAMCLIP_SAM_MODEL": "vit_l"}).sam_model == "vit_l"
    assert config.selection.threshold == 0.25 and config.pipeline.sam.points_per_side == 32


def test_the_config_is_frozen():
    config = cfg.load_config({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sam_model = "vit_h"


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("SAMCLIP_PROFILE", "fast", "SAMCLIP_PROFILE='fast'.*full, smoke"),
        ("SAMCLIP_MAX_IMAGES", "two", "SAMCLIP_MAX_IMAGES='two' is not a whole number"),
        ("SAMCLIP_MAX_IMAGES", "0", "SAMCLIP_MAX_IMAGES=0 must be"),
        ("SAMCLIP_SAM_MODEL", "vit_x", "SAMCLIP_SAM_MODEL='vit_x'.*vit_h, vit_l, vit_b"),
        ("SAMCLIP_CLIP_MODEL", "ViT-Z", "SAMCLIP_CLIP_MODEL='ViT-Z'.*ViT-B/32"),
        ("SAMCLIP_DATASET", "kitti", "SAMCLIP_DATASET='kitti'.*demo, coco, camvid, yolo, labelmaps"),
        ("SAMCLIP_PRECISION", "half", "SAMCLIP_PRECISION='half'.*bfloat16"),
        ("SAMCLIP_DEVICE", "tpu", "SAMCLIP_DEVICE='tpu' is not a device"),
    ],
)
def test_every_variable_is_checked_with_a_message_naming_it(name, value, expected):
    with pytest.raises(cfg.ConfigError, match=expected):
        cfg.load_config({name: value})


def test_a_gpu_the_machine_lacks_says_which_it_has(monkeypatch):
    monkeypatch.setattr(cfg.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cfg.torch.cuda, "device_count", lambda: 2)
    assert cfg.choose_device("cuda:1") == "cuda:1" and cfg.choose_device("cuda") == "cuda"
    for wrong in ("cuda:2", "cuda:x"):
        with pytest.raises(cfg.ConfigError, match="has 2 GPU"):
            cfg.choose_device(wrong)


def test_no_cuda_says_what_to_use(monkeypatch):
    monkeypatch.setattr(cfg.torch.cuda, "is_available", lambda: False)
    with pytest.raises(cfg.ConfigError, match="no CUDA GPU"):
        cfg.choose_device("cuda")
    assert cfg.choose_device("auto") == "cpu"


def test_relative_paths_resolve_against_the_start_folder_not_notebooks(tmp_path):
    start = tmp_path / "here"
    env = {
        "SAMCLIP_START_DIR": str(start),
        "SAMCLIP_DATA_PATH": "../shared/data",
        "SAMCLIP_CHECKPOINT_DIR": "weights",
        "SAMCLIP_SAM_CHECKPOINT": "weights/sam.pth",
        "SAMCLIP_MIRROR": "mirror http://127.0.0.1:9/files",
        "SAMCLIP_CLASSES": "chair, person,chair",
    }
    config = cfg.load_config(env)
    assert config.data_path == (tmp_path / "shared" / "data").resolve()
    assert config.checkpoint_dir == start / "weights" and config.sam_checkpoint == start / "weights" / "sam.pth"
    assert config.mirrors == (str(start / "mirror"), "http://127.0.0.1:9/files")
    assert config.classes == ("chair", "person")
    # without a start folder: the project root, wherever the kernel runs
    assert cfg.load_config({"SAMCLIP_DATA_PATH": "data/x"}).data_path == ROOT / "data" / "x"


def test_only_the_config_module_reads_the_environment():
    found = subprocess.run(
        ["grep", "-rln", "os.environ", str(ROOT / "helpers")], capture_output=True, text=True
    ).stdout.split()
    names = sorted(Path(p).name for p in found)
    # allocator.py only asks whether the user tuned glibc's malloc (MALLOC_*_, GLIBC_TUNABLES), no project setting
    assert set(names) - {"run_notebooks.py", "allocator.py"} == {"config.py"}, found
    assert "SAMCLIP" not in (ROOT / "helpers" / "sam" / "allocator.py").read_text()


def test_a_kernel_started_in_notebooks_finds_the_project(monkeypatch):
    """Kernels start in notebooks/ (the nbmake run of ``make test`` starts real ones there)."""
    monkeypatch.chdir(ROOT / "notebooks")
    assert cfg.load_config({}).root == ROOT


def test_a_variable_that_is_no_setting_is_refused_with_the_nearest_name():
    """SAMCLIP_DATAPATH=... was ignored without a word (the run read data/<dataset>): a typo now stops the run."""
    with pytest.raises(
        cfg.ConfigError, match=r"SAMCLIP_DATAPATH is not a setting \(did you mean SAMCLIP_DATA_PATH\?\)"
    ):
        cfg.load_config({"SAMCLIP_DATAPATH": "/data/coco"})
    with pytest.raises(cfg.ConfigError, match=r"SAMCLIP_OUTPUT_DIR is not a setting; the settings are SAMCLIP_PROFILE"):
        cfg.load_config({"SAMCLIP_OUTPUT_DIR": "/tmp/out"})
    with pytest.raises(cfg.ConfigError, match="did you mean SAMCLIP_PROFILE"):
        cfg.load_config({"samclip_profile": "demo"})
    assert cfg.load_config({name: "" for name in cfg.SETTINGS}).profile == "full"  # every setting is one
    documented = (ROOT / "docs" / "settings.md").read_text()
    assert all(f"`{name}`" in documented or name == "SAMCLIP_SAM_CHECKPOINT" for name in cfg.SETTINGS)
