"""Copies between the host and a CUDA device that do not make the host wait, for the motion engine's torch path.

A tensor made on the device from host numbers (`torch.tensor(..., device=cuda)`, or `.to(cuda)` from pageable
memory, which the driver may stage after the queue) is copied with a wait for every call queued before it: the host
could not queue the next decoder call while the device ran the last. And `.cpu()` copies into fresh pageable memory:
0.74 GB a chunk at 200 streams, its pages faulted in at every chunk and staged through the driver's buffer. Both go
through page-locked memory here (measured on an H100: docs/bench/motion_gpu_fast_2026-12-06). torch's pinned
allocator caches its blocks and keeps one until its copy is done, so each call still gets memory of its own.
Elsewhere than CUDA these are the plain copies.
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


def to_host(t: torch.Tensor) -> np.ndarray:
    """A device tensor as a numpy array, copied through page-locked memory from CUDA."""
    if t.device.type != "cuda":
        return t.cpu().numpy()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t)
    return host.numpy()
