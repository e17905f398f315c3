"""realtime/allocator.py: glibc's allocator set for a long-running server, and the trimming thread."""

from __future__ import annotations

import ctypes
import platform
import time

import pytest

from avatarcast.realtime import allocator
from avatarcast.realtime.settings import Settings, SettingValueError

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and malloc_trim are glibc's")


@glibc
def test_tune_takes_on_glibc() -> None:
    assert allocator.tune(allocator.AllocatorPlan(arena_max=4)) is True
    assert allocator.tune() is True  # back to the server's plan for the rest of this process


@glibc
def test_trimmer_trims_until_stopped() -> None:
    t = allocator.Trimmer(0.02).start()
    assert t.available
    deadline = time.monotonic() + 5
    while t.trims < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    t.stop()
    n = t.trims
    assert n >= 3
    time.sleep(0.1)
    assert t.trims == n, "no trim after stop()"
    assert not t._thread.is_alive()


@glibc
def test_trim_gives_freed_heap_pages_back() -> None:
    """What the trimmer is for: memory freed in the middle of a heap goes back to the system only on a trim."""
    lib = ctypes.CDLL(None)
    lib.malloc.restype = ctypes.c_void_p
    lib.malloc.argtypes = [ctypes.c_size_t]
    lib.free.argtypes = [ctypes.c_void_p]
    # 64 KB blocks: under glibc's mmap threshold (128 KB at least), so they live in the heap

    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS"))

    blocks = [lib.malloc(64 * 1024) for _ in range(3000)]  # ~190 MB
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)  # touched: resident
    keep = blocks[-1]  # holds the top of the heap, so freeing the rest leaves a hole a plain free cannot return
    for b in blocks[:-1]:
        lib.free(b)
    before = rss_kb()
    allocator.Trimmer(1.0).trim()
    after = rss_kb()
    lib.free(keep)
    assert before - after > 100_000, (before, after)


def test_malloc_tune_is_zero_or_one() -> None:
    Settings(malloc_tune=0).validate()
    with pytest.raises(SettingValueError):
        Settings(malloc_tune=2).validate()
