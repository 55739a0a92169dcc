"""Number formats for SAM and CLIP: float32 (exact, the default) or autocast to 16 bits.

bfloat16 runs on recent CPUs (AVX-512 BF16 / AMX) and on Ampere or newer GPUs; float16 is for
GPUs only. Both change scores and masks slightly: the benchmark states by how much.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("float32", "bfloat16", "float16")


def check_precision(precision: str, device: str | torch.device | None = None) -> str:
    """``precision`` when it is known and can run on ``device`` (not checked when None), else a
    ValueError saying what to use instead."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {PRECISIONS}.")
    if device is None:
        return precision
    on_gpu = str(device).startswith("cuda")
    if precision == "float16" and not on_gpu:
        raise ValueError("float16 is for GPUs; on a CPU use 'bfloat16' (or 'float32').")
    if precision == "bfloat16" and on_gpu and not native_bf16(device):
        raise ValueError("This GPU has no native bfloat16 (e.g. a T4); use 'float16' (or 'float32').")
    return precision


def native_bf16(device: str | torch.device) -> bool:
    """Whether the GPU ``device`` computes in bfloat16 natively (Ampere or newer). torch's default check also says
    yes where bfloat16 is only emulated (a T4, a V100), which is slower there than float16."""
    index = torch.device(device).index
    if index is None:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    with torch.cuda.device(index):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def autocast(device: str | torch.device, precision: str = "float32") -> contextlib.AbstractContextManager:
    """A context that runs matrix products in ``precision``. float32 is true float32: on a GPU, TF32 is off
    inside (PyTorch lets cuDNN convolutions use it by default), so a GPU's masks are the CPU's."""
    on_gpu = str(device).startswith("cuda")
    if check_precision(precision, device) == "float32":
        return no_tf32() if on_gpu else contextlib.nullcontext()
    return torch.autocast("cuda" if on_gpu else "cpu", dtype=getattr(torch, precision))


@contextlib.contextmanager
def no_tf32():
    """TF32 off for cuDNN convolutions and CUDA matrix products, restored afterwards (process-wide flags)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
