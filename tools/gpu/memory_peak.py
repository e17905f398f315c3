"""What was allocated at a CUDA memory peak: the largest blocks live at that moment, with where they
were allocated. Reads PyTorch's allocator trace (torch.cuda.memory._record_memory_history), so a
peak that `max_memory_allocated` only reports as a number gets a place in the code.

    torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    ...  # the work
    print(peak_report(torch.cuda.memory._snapshot()))
"""
from __future__ import annotations

import os


def _where(frames: list[dict], keep: int = 6) -> str:
    """The innermost frames worth reading: this project's and the model code's, then torch's."""
    mine = [f for f in frames if any(k in f.get("filename", "") for k in ("/engines/", "/realtime/", "/tools/",
                                                                         "diffusers/"))]
    pick = (mine or frames)[:keep]
    return " <- ".join(f"{os.path.basename(f.get('filename', '?'))}:{f.get('line', '?')} {f.get('name', '?')}"
                       for f in pick)


def peak_report(snapshot: dict, top: int = 8, device: int = 0) -> str:
    """The trace's peak of live bytes (allocations minus completed frees) and its largest live blocks."""
    events = snapshot["device_traces"][device]
    live: dict[int, dict] = {}
    cur = peak = 0
    peak_live: dict[int, dict] = {}
    for ev in events:
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
            cur += ev["size"]
            if cur > peak:
                peak, peak_live = cur, dict(live)
        elif ev["action"] in ("free_completed",) and ev["addr"] in live:
            cur -= live.pop(ev["addr"])["size"]
    blocks = sorted(peak_live.values(), key=lambda e: -e["size"])[:top]
    lines = [f"peak of the traced allocations: {peak / 2**30:.2f} GiB above the trace's start "
             f"({len(peak_live)} blocks live, {len(events)} events)"]
    lines += [f"  {b['size'] / 2**30:7.2f} GiB  stream {b.get('stream', 0)}  {_where(b.get('frames', []))}"
              for b in blocks]
    return "\n".join(lines)
