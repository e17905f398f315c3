"""Copies between the host and a CUDA device that do not make the host wait, for the motion engine's torch path.

A tensor made on the device from host numbers (`torch.tensor(..., device=cuda)`, or `.to(cuda)` from pageable
memory, which the driver may stage after the queue) is copied with a wait for every call queued before it: the host
could not queue the next decoder call while the device ran the last. And `.cpu()` copies into fresh pageable memory:
0.74 GB a chunk at 200 streams, its pages faulted in at every chunk and staged through the driver's buffer. Both go
through page-locked memory here (measured on an H100: docs/bench/motion_gpu_fast_2026-12-06). torch's pinned
allocator caches its blocks and keeps one until its copy is done, so each call still gets memory of its own.
Elsewhere than CUDA these are the plain copies. `PinnedFrames` is an engine call's frames on their way to such
memory, copied without a wait (the engines' launch_chunks on CUDA).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_device(values: Any, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Host numbers (an array, or anything np.asarray takes) as a `dtype` tensor on `device`, not waiting."""
    t = torch.as_tensor(np.ascontiguousarray(values), dtype=dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class PinnedFrames:
    """One engine call's frames on their way to host memory (engines/contract.PendingFrames): `frames` (B, T, ...)
    on the host (page-locked on a GPU), their copy queued before the `events` (start, sampled, done) were recorded;
    None: already there. `keep`: what the queued work reads and must outlive it (an avatar's tensors, say, made on
    another CUDA stream). `copy_out`: wait() hands out a copy, so that the page-locked block goes back to torch's host
    cache at once (the Wan engine's: sessions keep frames for seconds; page-locked memory should stay a few blocks),
    else views of it (the motion engine's: its chunk of 200 streams is 0.74 GB, copied out in about as long as the
    device takes to draw it)."""

    def __init__(self, frames: torch.Tensor, events: tuple | None = None, keep: Any = (), copy_out: bool = True):
        self._frames: torch.Tensor | None = frames
        self._events = events
        self._keep = keep
        self._copy_out = copy_out
        self.gpu_s: tuple[float, float] | None = None  # after wait(): seconds from start / sampled to done

    def wait(self) -> list[np.ndarray]:
        """Block until the frames are on the host (releases the GIL while waiting); one array per stream."""
        frames = self._frames
        assert frames is not None, "wait() takes the frames once"
        self._frames = None
        if self._events is None:
            return list(frames.numpy())
        start, sampled, done = self._events
        done.synchronize()
        self.gpu_s = (start.elapsed_time(done) / 1000, sampled.elapsed_time(done) / 1000)
        self._events = self._keep = None
        return list(frames.numpy().copy() if self._copy_out else frames.numpy())


def to_host(t: torch.Tensor) -> np.ndarray:
    """A device tensor as a numpy array, copied through page-locked memory from CUDA."""
    if t.device.type != "cuda":
        return t.cpu().numpy()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t)
    return host.numpy()
