"""What every session of a server shares: built once by the Hub when its models are loaded, then handed
to each session's runner (realtime/runner.py), which sees nothing else of the Hub.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from engines.contract import StreamEngine
from realtime.asr import Transcriber
from realtime.avatars import AvatarStore
from realtime.emotion import EmotionReader
from realtime.metrics import Metrics
from realtime.scheduler import Scheduler
from realtime.session import SessionConfig
from realtime.settings import Settings
from templates.cache import LatentsCache


@dataclass(frozen=True)
class Pools:
    """One thread pool per kind of blocking work, so none of it runs on the event loop."""

    cpu: ThreadPoolExecutor = field(  # audio decoding, emotion reading (short numpy/ONNX work)
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="cpu"))
    asr: ThreadPoolExecutor = field(  # transcription (long; the model's lock serializes it)
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="asr"))
    encode: ThreadPoolExecutor = field(  # JPEG/WebP and video frames
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode"))

    def shutdown(self) -> None:
        for pool in (self.cpu, self.asr, self.encode):
            pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class Services:
    """The loaded models, the engine's scheduler, the avatars, the pools and the metrics."""

    settings: Settings
    engine: StreamEngine
    scheduler: Scheduler
    avatars: AvatarStore
    cache: LatentsCache
    transcriber: Transcriber
    reader: EmotionReader
    session_config: SessionConfig
    pools: Pools
    metrics: Metrics
    stats: Counter = field(default_factory=Counter)  # event counts for /v1/status (shared, so mutable)

    @property
    def emotions(self) -> tuple[str, ...]:
        return tuple(self.engine.emotions)
