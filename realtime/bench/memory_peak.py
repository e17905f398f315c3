"""What was allocated at a CUDA memory peak: the largest blocks live at that moment, with where they
were allocated. Reads PyTorch's allocator trace (torch.cuda.memory._record_memory_history), so a
peak that `max_memory_allocated` only reports as a number gets a place in the code.

    torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    ...  # the work
    print(peak_report(torch.cuda.memory._snapshot()))
"""

from __future__ import annotations

import os


def _where(frames: list[dict], keep: int = 6, mine_only: bool = True) -> str:
    """The innermost frames worth reading: this project's and the model code's (else any)."""
    mine = [
        f
        for f in frames
        if any(k in f.get("filename", "") for k in ("/engines/", "/realtime/", "/tools/", "diffusers/"))
    ]
    pick = (mine if mine_only and mine else frames)[:keep]
    return " <- ".join(
        f"{os.path.basename(f.get('filename', '?'))}:{f.get('line', '?')} {f.get('name', '?')}" for f in pick
    )


def peak_report(snapshot: dict, top: int = 8, device: int = 0) -> str:
    """The trace's peak of live bytes (allocations minus completed frees), its largest live blocks
    grouped by where they were allocated, and how many of them were already freed by their tensors but
    not yet returned (a free waits for the streams that used the block: record_stream)."""
    events = snapshot["device_traces"][device]
    live: dict[int, dict] = {}
    requested: set[int] = set()  # freed by the tensor, not yet by the allocator
    cur = peak = 0
    peak_live: dict[int, dict] = {}
    peak_requested: set[int] = set()
    for ev in events:
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
            requested.discard(ev["addr"])
            cur += ev["size"]
            if cur > peak:
                peak, peak_live, peak_requested = cur, dict(live), set(requested)
        elif ev["action"] == "free_requested" and ev["addr"] in live:
            requested.add(ev["addr"])
        elif ev["action"] == "free_completed" and ev["addr"] in live:
            cur -= live.pop(ev["addr"])["size"]
            requested.discard(ev["addr"])
    groups: dict[tuple, list] = {}
    for addr, b in peak_live.items():
        key = (b["size"], b.get("stream", 0), _where(b.get("frames", []), keep=4), addr in peak_requested)
        groups.setdefault(key, []).append(b)
    ranked = sorted(groups.items(), key=lambda kv: -kv[0][0] * len(kv[1]))[:top]
    waiting = sum(peak_live[a]["size"] for a in peak_requested)
    lines = [
        f"peak of the traced allocations: {peak / 2**30:.2f} GiB above the trace's start "
        f"({len(peak_live)} blocks live, {waiting / 2**30:.2f} GiB of them freed but waiting on a stream; "
        f"{len(events)} events)"
    ]
    for (size, stream, where, freed), blocks in ranked:
        inner = _where(blocks[0].get("frames", []), keep=3, mine_only=False)
        wait = "  freed, waiting" if freed else ""
        lines.append(
            f"  {len(blocks):4d} x {size / 2**30:6.3f} GiB  stream {stream}{wait}  {where}  [innermost: {inner}]"
        )
    return "\n".join(lines)
