"""Prometheus metrics of one Hub, served at /metrics.

Each Hub has its own registry (tests run several servers in one process). Latency figures
come from the sessions' own latency events, so /metrics and the `latency` events agree.
The process's own figures (process_resident_memory_bytes, process_cpu_seconds_total,
process_open_fds, ...: prometheus_client's process collector, read from /proc on Linux) and the
Python runtime's (python_gc_*, python_info) are in every registry too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # RSS, CPU seconds, open and max fds, start time
        PlatformCollector(registry=r)
        r.register(GC_COLLECTOR)  # the one process-wide GC collector, in this registry as well
        self.sessions_active = Gauge("avatarcast_sessions_active", "sessions open now", registry=r)
        self.sessions_created = Counter("avatarcast_sessions_created", "sessions created", registry=r)
        self.sessions_rejected = Counter(
            "avatarcast_sessions_rejected",
            "sessions refused: max_sessions, capacity, degraded, rate_limit, shutting_down",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "avatarcast_rate_limited", "requests or messages over a per-client rate limit", ["kind"], registry=r
        )
        self.degradation_level = Gauge(
            "avatarcast_degradation_level",
            "0 full, 1 fewer sampler steps, 2 also the engine's cheaper decode, 3 also cached loops for new reactions",
            registry=r,
        )
        self.engine_busy = Gauge(
            "avatarcast_engine_busy_ratio", "fraction of recent time the engine ran live batches", registry=r
        )
        self.webrtc_peers = Gauge("avatarcast_webrtc_peers", "WebRTC peers connected or connecting", registry=r)
        self.ttff = Histogram(
            "avatarcast_ttff_seconds",
            "end of speech (or input) to the first reacting frame",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tter = Histogram(
            "avatarcast_tter_seconds",
            "end of speech (or input) to the first frame of the emotion",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "avatarcast_stage_seconds",
            "time of each pipeline stage per utterance",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.frames_sent = Counter("avatarcast_frames_sent", "frames handed to the transports", registry=r)
        # per-session fps over 1 s windows, as a distribution (a label per session would grow without bound)
        self.session_fps = Histogram(
            "avatarcast_session_fps",
            "frames per second of each session, per 1 s window",
            buckets=(1, 2, 4, 5, 6, 7, 7.5, 8, 8.5, 10),
            registry=r,
        )
        self.frames_dropped = Counter(
            "avatarcast_frames_dropped", "frames skipped because the session ran late", registry=r
        )
        self.chunk_late_frames = Counter(
            "avatarcast_chunk_late_frames",
            "reaction frames that held the previous frame (sampler chunk late)",
            registry=r,
        )
        self.queue_depth = Gauge("avatarcast_engine_queue_depth", "chunk jobs waiting for the engine", registry=r)
        self.batch_size = Histogram(
            "avatarcast_engine_batch_size",
            "streams per sampler call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "avatarcast_engine_batch_seconds", "sample + decode time of one batch", buckets=STAGE_BUCKETS, registry=r
        )
        self.errors = Counter("avatarcast_session_errors", "error events sent to clients", ["code"], registry=r)
        self.loop_lag = Gauge(
            "avatarcast_event_loop_lag_seconds",
            "how late the event loop woke a 10 ms sleep, over the last minute (realtime/loop_lag.py)",
            ["stat"],
            registry=r,
        )

    def bind(self, sessions: Callable[[], int], peers: Callable[[], int], queue: Callable[[], int]) -> None:
        """Gauges read live values when scraped (no bookkeeping to drift)."""
        self.sessions_active.set_function(sessions)
        self.webrtc_peers.set_function(peers)
        self.queue_depth.set_function(queue)

    def bind_connections(self, open_now: Callable[[], int], cut: Mapping[str, int]) -> None:
        """The server's connection guard (realtime/conn_guard.py): connections open, and those it ended."""
        old = getattr(self, "_connections", None)
        if old is not None:  # bound again (a second uvicorn config for the same app): the newest guard counts
            self.registry.unregister(old)
        self._connections = _ConnectionCollector(open_now, cut)
        self.registry.register(self._connections)

    def bind_load(self, level: Callable[[], int], busy: Callable[[], float]) -> None:
        self.degradation_level.set_function(level)
        self.engine_busy.set_function(busy)

    def bind_loop_lag(self, p99: Callable[[], float], worst: Callable[[], float]) -> None:
        self.loop_lag.labels("p99").set_function(p99)
        self.loop_lag.labels("max").set_function(worst)

    def observe_latency(self, payload: dict[str, Any]) -> None:
        kind = str(payload.get("kind") or "unknown")
        if payload.get("ttff_ms") is not None:
            self.ttff.labels(kind).observe(payload["ttff_ms"] / 1000.0)
        if payload.get("tter_ms") is not None:
            self.tter.labels(kind).observe(payload["tter_ms"] / 1000.0)
        for stage, ms in (payload.get("stages_ms") or {}).items():
            if ms is not None and ms >= 0:
                self.stage.labels(stage).observe(ms / 1000.0)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ConnectionCollector(Collector):
    def __init__(self, open_now: Callable[[], int], cut: Mapping[str, int]) -> None:
        self.open_now, self.cut = open_now, cut

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            "avatarcast_connections_open", "TCP connections open and counted per client IP", value=self.open_now()
        )
        c = CounterMetricFamily(
            "avatarcast_connections_cut",
            "connections the server ended: header_timeout, body_too_slow, ws_idle, per_ip (refused)",
            labels=["reason"],
        )
        for reason, n in sorted(self.cut.items()):
            c.add_metric([reason], n)
        yield c
