"""Keep freed memory in the process while the generator runs (glibc only), instead of returning it.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
unmaps it on free. The decoder allocates tensors of hundreds of MB per batch, so each batch touches
fresh pages: the kernel zeroes them and faults them in one 4 KB page at a time, and on the 2-core
VM this was measured to cost more than the arithmetic itself (the generator ran 1.5-4x slower).
``reuse_freed_memory`` sets ``M_MMAP_MAX=0`` (no mmap: large blocks come from the heap and are reused)
and a 2 GB trim threshold for the duration of the call, first handing back the free heap left by
earlier work (``malloc_trim(0)``, so that it does not count as growth), then restores glibc's
defaults and trims again. Blocks of changing sizes fragment a heap that never shrinks, so the
generator also calls ``trim_if_over`` between steps: once the process has grown 1 GiB since the
last trim, the free heap goes back to the system (a 4000 x 3000 image peaked at 3.75 GiB without
it). The limit trades speed for memory (vit_b, 32x32 points, 1024 x 768, same process, alternating:
512 MiB 37 s, 1 GiB 30 s, 1.5 GiB 25 s: the decoder's working set is trimmed and faulted in again;
8000 x 6000 peaked at 3.1-3.4 GB with 512 MiB, 3.3 GB with 1 GiB, 3.2-3.9 GB with 1.5 GiB).
Nothing happens where glibc is absent, or where the user tuned malloc through the environment
(``MALLOC_MMAP_MAX_`` and co., ``GLIBC_TUNABLES``: their choice is kept).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults
KEEP_TRIM_THRESHOLD = 2**31 - 1
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
USER_SETTINGS += ("GLIBC_TUNABLES",)

KEEP_AT_MOST = 1024 << 20  # growth since the last trim after which trim_if_over trims

_lock = threading.Lock()
_depth = 0  # nesting of reuse_freed_memory
_resident_after_trim = 0  # resident bytes after the last trim (trim_if_over's baseline)


def _libc() -> ctypes.CDLL | None:
    if any(name in os.environ for name in USER_SETTINGS):
        return None
    return _load_libc()


@functools.lru_cache(maxsize=1)
def _load_libc() -> ctypes.CDLL | None:
    """glibc, looked up once (``find_library`` runs ``ldconfig``: 2-3 ms, and the generator asks per batch)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _resident() -> int:
    """Resident bytes of this process (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def trim_if_over(limit: int = KEEP_AT_MOST) -> None:
    """Within ``reuse_freed_memory``: once the process has grown ``limit`` bytes beyond its size after
    the last trim, hand the free heap back to the system (``malloc_trim``), so that blocks of changing
    sizes cannot grow a heap that never shrinks without bound."""
    global _resident_after_trim
    libc = _libc()
    if libc is None or _depth == 0 or _resident() <= _resident_after_trim + limit:
        return
    libc.malloc_trim(0)
    _resident_after_trim = _resident()


@contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Within the block, glibc keeps freed memory for reuse instead of unmapping it (nestable)."""
    global _depth, _resident_after_trim
    libc = _libc()
    if libc is None:
        yield
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
            libc.malloc_trim(0)  # free heap left from before is not counted as this block's growth
            _resident_after_trim = _resident()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
