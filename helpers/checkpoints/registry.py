"""The known SAM and CLIP checkpoints: file names, sizes, published sha256 and URLs.

CLIP names carry an alternate: the open_clip copy of the same OpenAI weights (no published
checksum; ``helpers.checkpoints`` checks its size and structure instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; every message says what to do next."""


class UnknownModelError(CheckpointError, KeyError):
    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class Checkpoint:
    """One weight file: where it comes from and how to recognise it."""

    name: str
    family: str  # "sam" or "clip"
    filename: str
    sha256: str | None
    size: int | None
    urls: tuple[str, ...]
    format: str  # "sam" (state dict), "openai" (OpenAI TorchScript archive), "open_clip" (state dict)
    alternates: tuple["Checkpoint", ...] = field(default=(), compare=False)


_META = "https://dl.fbaipublicfiles.com/segment_anything/"
_HF_SAM = "https://huggingface.co/ybelkada/segment-anything/resolve/main/checkpoints/"
_SAM = {  # name: (file, bytes, sha256)
    "vit_h": (
        "sam_vit_h_4b8939.pth",
        2_564_550_879,
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "vit_l": (
        "sam_vit_l_0b3195.pth",
        1_249_524_607,
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_b": ("sam_vit_b_01ec64.pth", 375_042_383, "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
}
_OPENAI = "https://openaipublic.azureedge.net/clip/models/"
_CLIP = {  # name: (sha256, file, bytes or None, timm hub id of the open_clip copy)
    "RN50": (
        "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
        "RN50.pt",
        None,
        "resnet50_clip.openai",
    ),
    "RN101": (
        "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599",
        "RN101.pt",
        None,
        "resnet101_clip.openai",
    ),
    "RN50x4": (
        "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd",
        "RN50x4.pt",
        None,
        "resnet50x4_clip.openai",
    ),
    "RN50x16": (
        "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa",
        "RN50x16.pt",
        None,
        "resnet50x16_clip.openai",
    ),
    "RN50x64": (
        "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c",
        "RN50x64.pt",
        None,
        "resnet50x64_clip.openai",
    ),
    "ViT-B/32": (
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        "ViT-B-32.pt",
        353_976_522,
        "vit_base_patch32_clip_224.openai",
    ),
    "ViT-B/16": (
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        "ViT-B-16.pt",
        None,
        "vit_base_patch16_clip_224.openai",
    ),
    "ViT-L/14": (
        "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
        "ViT-L-14.pt",
        None,
        "vit_large_patch14_clip_224.openai",
    ),
    "ViT-L/14@336px": (
        "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
        "ViT-L-14-336px.pt",
        None,
        "vit_large_patch14_clip_336.openai",
    ),
}


def _build_registry() -> dict[str, Checkpoint]:
    registry = {
        name: Checkpoint(name, "sam", file, sha, size, (_META + file, _HF_SAM + file), "sam")
        for name, (file, size, sha) in _SAM.items()
    }
    for name, (sha, file, size, hub) in _CLIP.items():
        # The open_clip copy holds the same OpenAI weights under the key names that
        # clip.model.build_model expects; its checksum is not published, so its size and structure
        # are checked before it is accepted (helpers.checkpoints.check_clip_state_dict_file).
        open_clip_copy = Checkpoint(
            name,
            "clip",
            file.replace(".pt", ".open_clip.bin"),
            None,
            None,
            (f"https://huggingface.co/timm/{hub}/resolve/main/open_clip_pytorch_model.bin",),
            "open_clip",
        )
        registry[name] = Checkpoint(
            name, "clip", file, sha, size, (f"{_OPENAI}{sha}/{file}",), "openai", alternates=(open_clip_copy,)
        )
    return registry


REGISTRY: dict[str, Checkpoint] = _build_registry()


def register_checkpoint(checkpoint: Checkpoint) -> None:
    """Add a checkpoint (fine-tuned weights, test models) to the registry."""
    REGISTRY[checkpoint.name] = checkpoint


def get_checkpoint(name: str) -> Checkpoint:
    """The registry entry ``name``; an unknown name lists the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownModelError(f"Unknown model name {name!r}. Known checkpoints: {known}.") from None


# Download sizes OpenAI's progress bars show, for people deciding what to fetch (MiB, rounded;
# never used to verify: only ``Checkpoint.size`` is exact).
APPROX_MIB = {
    "RN50": 244, "RN101": 278, "RN50x4": 402, "RN50x16": 630, "RN50x64": 1260,
    "ViT-B/32": 338, "ViT-B/16": 335, "ViT-L/14": 890, "ViT-L/14@336px": 891,
}  # fmt: skip


def checkpoint_table() -> list[dict]:
    """One row per known checkpoint: name, family, file, size in MiB (``~`` where not published
    to the byte) and how many sources are tried."""
    rows = []
    for c in REGISTRY.values():
        size = f"{c.size / 2**20:.0f}" if c.size else (f"~{APPROX_MIB[c.name]}" if c.name in APPROX_MIB else "?")
        rows.append({"name": c.name, "family": c.family, "file": c.filename, "MiB": size,
                     "sources": len(c.urls) + len(c.alternates)})  # fmt: skip
    return rows
