import pytest

from helpers import config as cfg


def test_smoke_profile_is_labelled_everywhere(monkeypatch):
    monkeypatch.setenv("SAMCLIP_PROFILE", "smoke")
    config = cfg.load_config()
    assert config.is_smoke and config.sam_model == "sam_tiny" and config.clip_model == "clip_tiny"
    assert "SMOKE TEST" in cfg.banner(config) and config.title("x").startswith("[SMOKE TEST")
    assert config.checkpoint_dir == config.root / "outputs" / "smoke" / "checkpoints"  # never mixed with real ones
    assert config.sam_overrides["pred_iou_thresh"] == 0.0


def test_full_profile_picks_the_model_by_device(monkeypatch):
    for name in ("SAMCLIP_PROFILE", "SAMCLIP_SAM_MODEL", "SAMCLIP_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    config = cfg.load_config()
    assert config.profile == "full" and "SMOKE" not in cfg.banner(config) and config.title("x") == "x"
    assert config.sam_model == ("vit_h" if config.device == "cuda" else "vit_b")
    assert cfg.default_sam_model("cuda") == "vit_h" and cfg.default_sam_model("cpu") == "vit_b"
    monkeypatch.setenv("SAMCLIP_SAM_MODEL", "vit_l")
    assert cfg.load_config().sam_model == "vit_l"


def test_bad_settings_say_what_to_do(monkeypatch):
    monkeypatch.setenv("SAMCLIP_PROFILE", "fast")
    with pytest.raises(ValueError, match="use one of"):
        cfg.load_config()
    monkeypatch.setattr(cfg.torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        cfg.choose_device("cuda")
    assert cfg.choose_device("auto") == "cpu"
