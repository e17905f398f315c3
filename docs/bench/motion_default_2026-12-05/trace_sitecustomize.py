"""How load_s2_motion_traced_batches.jsonl was written (a diagnostic, not shipped): with this file's folder first on
PYTHONPATH (as `sitecustomize.py`) and H16S_TRACE=FILE, the server `bench load` starts logs one line per live batch
(when its jobs were queued, its earliest deadline, start, end, the ladder's level, the engine's busy fraction) and one
per Whisper call (start, end)."""

import json
import os
import sys
import threading
import time

_path = os.environ.get("H16S_TRACE")


def _write(rec: dict) -> None:
    with _lock, open(str(_path), "a") as f:
        f.write(json.dumps(rec) + "\n")


def _patch() -> None:
    from avatarcast.realtime import asr
    from avatarcast.realtime import scheduler as sch

    observe = sch.EngineScheduler._observe
    transcribe = asr.Transcriber.transcribe

    def traced_observe(self, batch, results, degraded, dur):
        r = results[0]
        rec = {"k": "batch", "n": len(batch), "queued": min(j.queued_at for j in batch)}
        rec.update(due=min(j.due_t for j in batch), started=r.started, sampled=r.sampled, finished=r.finished)
        rec.update(dur=dur, degraded=degraded, level=self.ladder.level if self.ladder else None)
        _write({**rec, "busy": self.busy_fraction()})
        return observe(self, batch, results, degraded, dur)

    def traced_transcribe(self, pcm, *a, **k):
        t0 = time.monotonic()
        try:
            return transcribe(self, pcm, *a, **k)
        finally:
            _write({"k": "asr", "t0": t0, "t1": time.monotonic(), "urgent": k.get("urgent", True)})

    sch.EngineScheduler._observe = traced_observe  # type: ignore[method-assign]
    asr.Transcriber.transcribe = traced_transcribe  # type: ignore[method-assign]


def _poll() -> None:  # patch once the server has imported both modules
    for _ in range(600):
        if "avatarcast.realtime.scheduler" in sys.modules and "avatarcast.realtime.asr" in sys.modules:
            time.sleep(0.5)
            _patch()
            return
        time.sleep(0.1)


if _path:
    _lock = threading.Lock()
    threading.Thread(target=_poll, daemon=True).start()
