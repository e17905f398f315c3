"""glibc's allocator, set for a long-running server (issue 19: RSS flat over an hour of sessions).

Why: in a 50-minute soak (2 sessions speaking clips) the server's RSS grew 20% after warm-up while Python's
own allocations stayed flat (tracemalloc: no growing allocation site); nearly all of the RSS is anonymous
memory in glibc's heaps, and the heaps held more and more freed memory (mallinfo2: free bytes inside the
arenas rising with the RSS). glibc gives a thread that contends for the heap a heap ("arena") of its own, up to
8 per core, and returns freed memory to the system only from the top of a heap: the ASR, emotion, engine,
encoder and event-loop threads each grow and fragment their own. `tune()` caps the arenas and `Trimmer`
calls malloc_trim(0) every few seconds, which gives the free pages inside every heap back (madvise), not only
the top of the main heap.

Measured (docs/security.md, 2026-12-04, two servers side by side under the same load, 2 sessions each):
12 minutes, RSS after warm-up 730 -> 769 MB (+5.3%) with glibc's defaults, 677 -> 659 MB (-2.6%, max 719) with
this; reaction and frame figures the same. A fixed mmap threshold (128 KB: frames mapped and unmapped
each time) took the level 100 MB lower still but cost frames (26-41 dropped against 1 per session), so glibc's
dynamic threshold stays.

No-op (tune() returns False) where the C library has no mallopt/malloc_trim (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


@dataclass(frozen=True)
class AllocatorPlan:
    arena_max: int = 2  # heaps shared by all threads (the machine this serves on has 2+ cores)
    trim_every_s: float = 10.0  # malloc_trim(0) walks the heaps: about a millisecond here


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if lib is None or not hasattr(lib, "mallopt") or not hasattr(lib, "malloc_trim"):
        return None
    return lib


def tune(plan: AllocatorPlan = AllocatorPlan()) -> bool:
    """Cap the arenas; True when the C library took it. Call before threads start: a thread keeps its arena."""
    lib = _libc()
    if lib is None:
        return False
    ok = lib.mallopt(M_ARENA_MAX, plan.arena_max) == 1
    log.debug("allocator: at most %d arenas: %s", plan.arena_max, ok)
    return ok


class Trimmer:
    """A daemon thread that returns the heaps' free pages every `every_s` seconds until stop()."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self._stop = threading.Event()
        self._lib = _libc()
        self.trims = 0
        self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)

    @property
    def available(self) -> bool:
        return self._lib is not None

    def start(self) -> Trimmer:
        if self.available:
            self._thread.start()
        return self

    def trim(self) -> None:
        if self._lib is not None:
            self._lib.malloc_trim(0)
            self.trims += 1

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.trim()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
