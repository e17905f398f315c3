"""What every session of a server shares: built once by the Hub when its models are loaded, then handed
to each session's runner (realtime/runner.py), which sees nothing else of the Hub.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from avatarcast.engines.contract import StreamEngine
from avatarcast.realtime.asr import Transcriber
from avatarcast.realtime.avatars import AvatarStore
from avatarcast.realtime.emotion import EmotionReader
from avatarcast.realtime.fair_pool import FairPool
from avatarcast.realtime.metrics import Metrics
from avatarcast.realtime.scheduler import Scheduler
from avatarcast.realtime.session import SessionConfig
from avatarcast.realtime.settings import Settings
from avatarcast.templates.cache import LatentsCache


@dataclass(frozen=True)
class Pools:
    """One thread pool per kind of blocking work, so none of it runs on the event loop."""

    cpu: ThreadPoolExecutor = field(  # audio decoding, live VAD (short numpy/ONNX work)
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="cpu")
    )
    asr: ThreadPoolExecutor = field(  # transcription (long; the model's lock serializes it)
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="asr")
    )
    encode: ThreadPoolExecutor = field(  # JPEG/WebP and video frames
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")
    )
    # emotion reads and prosody: on the reaction's critical path, so never queued behind decodes or live VAD,
    # and sessions take turns (a session's backlog does not delay another's reaction)
    emotion: FairPool = field(default_factory=lambda: FairPool(2, "emotion"))

    def shutdown(self) -> None:
        for pool in (self.cpu, self.asr, self.encode, self.emotion):
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
