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
    if precision == "bfloat16" and on_gpu and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError("This GPU has no native bfloat16 (e.g. a T4); use 'float16' (or 'float32').")
    return precision


def autocast(device: str | torch.device, precision: str = "float32") -> contextlib.AbstractContextManager:
    """A context that runs matrix products in ``precision`` (nothing changes for float32)."""
    if check_precision(precision, device) == "float32":
        return contextlib.nullcontext()
    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype=getattr(torch, precision))
