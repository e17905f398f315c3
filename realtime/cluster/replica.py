"""The engine replica: one model and one EngineScheduler, so the chunk requests of every session
routed here batch together exactly as they do in a single-process server.

Sessions are sticky to a replica (see app.py) but the replica holds no session state: each request
brings its stream state and the reply takes the new one back (realtime/cluster/wire.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from avatarcast.realtime.avatars import resolve_avatar
from avatarcast.realtime.cluster.wire import ChunkCall, ChunkReply
from avatarcast.realtime.decode_cost import measure_decodes
from avatarcast.realtime.engine_loader import load_engine
from avatarcast.realtime.ladder import ladder_for
from avatarcast.realtime.logs import JsonFormatter
from avatarcast.realtime.scheduler import ChunkJob, EngineScheduler
from avatarcast.realtime.settings import Settings

log = logging.getLogger("avatarcast.cluster.replica")


class EngineReplica:
    """Serve deployment body (app.py wraps it): `chunk(call) -> ChunkReply`."""

    def __init__(self, settings: dict) -> None:
        self.settings = Settings(**settings)
        log_to_stderr(self.settings)
        t0 = time.perf_counter()
        self.engine = load_engine(self.settings)
        # warm up before Serve marks this replica running: the first live chunk must not pay for
        # ONNX Runtime's first run or the start-up avatars' reference latents
        for name in self.settings.avatar_list() or [self.settings.first_avatar]:
            self.engine.next_chunk([self.engine.start_stream(resolve_avatar(name)[1], "idle", 0.5, 0)])
        # this replica's ladder steps up from its cheaper decode by the full decode's load (realtime/decode_cost.py)
        first = resolve_avatar(self.settings.first_avatar)[1]
        self.decode_costs = measure_decodes(self.engine, first)
        self.name: str = ray.get_runtime_context().get_actor_name() or ray.get_runtime_context().get_actor_id()
        self._scheduler: Any = None
        self._starting: asyncio.Lock | None = None
        log.info("engine replica %s ready in %.2f s", self.name, time.perf_counter() - t0)

    async def _started(self) -> Any:
        if self._scheduler is None:  # the scheduler's task must live on the loop Serve runs requests on
            self._starting = self._starting or asyncio.Lock()
            async with self._starting:
                if self._scheduler is None:
                    sch = EngineScheduler(self.engine)
                    sch.ladder = ladder_for(self.engine, self.settings)
                    sch.ladder.cost_ratio = None if self.decode_costs is None else self.decode_costs.ratio
                    await sch.start()
                    self._scheduler = sch
        return self._scheduler

    async def chunk(self, call: ChunkCall) -> ChunkReply:
        """One stream's next chunk, batched with the other sessions' chunks waiting here."""
        sch = await self._started()
        t_in = time.monotonic()  # a StreamStart state is made on the engine thread, like a local new stream
        res = await sch.submit(
            ChunkJob(call.session_id, call.state, t_in + call.due_in_s, call.emotion, call.intensity)
        )
        full = sch.ladder is None or sch.ladder.level == 0  # this batch ran at full quality (near enough)
        return ChunkReply(
            res.frames,
            res.state,
            self.name,
            max(0.0, res.started - t_in),
            res.sampled - res.started,
            res.finished - res.sampled,
            res.batch,
            res.started,
            full,
            res.cheaper,
        )

    def status(self) -> dict:
        sch = self._scheduler
        return {
            "replica": self.name,
            "batches": 0 if sch is None else sch.batches,
            "jobs": 0 if sch is None else sch.jobs_done,
            "level": 0 if sch is None or sch.ladder is None else sch.ladder.level,
        }


def log_to_stderr(s: Settings) -> None:
    """avatarcast's own log lines (session events, failovers) on the replica's stderr, in the project's format."""
    lg = logging.getLogger("avatarcast")
    if not lg.handlers:
        h = logging.StreamHandler()
        h.setFormatter(
            JsonFormatter()
            if s.log_format == "json"
            else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        lg.addHandler(h)
        lg.propagate = False
    lg.setLevel(s.log_level.upper())
