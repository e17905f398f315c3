"""The WebSocket transport: binary audio and JSON commands in, binary frames and JSON events out.

The wire format is in realtime/protocol.py. Sending is decoupled from producing: the sink
keeps only the newest frame (a slow reader loses stale frames, counted, never a growing
buffer) and a bounded queue of events; one sender task per socket drains them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from avatarcast.engines.errors import CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_NORMAL, AvatarcastError, ErrorCode
from avatarcast.realtime.audio import AudioDecodeError
from avatarcast.realtime.commands import error_event, event, handle_command
from avatarcast.realtime.held_tasks import run_held
from avatarcast.realtime.hub import Hub
from avatarcast.realtime.json_limits import JsonLimitError, JsonLimits
from avatarcast.realtime.protocol import TAG_CLIP, TAG_PCM, pack_frame
from avatarcast.realtime.ratelimit import FloodGuard, client_keys
from avatarcast.realtime.runner import OutFrame, SessionRunner

log = logging.getLogger("avatarcast.ws")


class WebSocketSink:
    """Frames and events for one socket; `offer_*` never blocks (called from the frame loop)."""

    def __init__(self, ws: WebSocket, image_format: str, max_events: int = 256) -> None:
        self.ws = ws
        self.image_format = image_format
        self._frame: OutFrame | None = None
        self._events: deque[str] = deque(maxlen=max_events)
        self._wake = asyncio.Event()
        self.frames_sent = 0
        self.frames_dropped = 0
        self.events_dropped = 0

    def offer_frame(self, frame: OutFrame) -> None:
        if self._frame is not None:
            self.frames_dropped += 1  # the reader has not taken the previous one: it is stale now
        self._frame = frame
        self._wake.set()

    def offer_event(self, event_json: str) -> None:
        if len(self._events) == self._events.maxlen:
            self.events_dropped += 1
        self._events.append(event_json)
        self._wake.set()

    async def flush_events(self) -> None:
        """Send the events still queued (a `closing` event before the close frame)."""
        while self._events:
            await self.ws.send_text(self._events.popleft())

    async def run(self) -> None:
        """Sender task: events first (in order), then the newest frame."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._events:
                await self.ws.send_text(self._events.popleft())
            frame, self._frame = self._frame, None
            if frame is not None:
                data = frame.encoded.get(self.image_format)
                if data is None:
                    continue
                await self.ws.send_bytes(
                    pack_frame(
                        frame.index, frame.pts_s, time.time(), self.image_format, frame.source, frame.emotion, data
                    )
                )
                self.frames_sent += 1


async def refuse(ws: WebSocket, exc: AvatarcastError) -> None:
    """Close an accepted socket with the refusal's close code and its message as the reason."""
    await ws.close(exc.close_code, exc.message[:120])  # a close reason may hold 123 bytes


def viewer_room(hub: Hub, runner: SessionRunner) -> AvatarcastError | None:
    """Why one more socket may not watch this session (every sink, WebRTC peers too, counts), or None."""
    limit = hub.settings.max_viewers_per_session
    if len(runner.sinks) >= limit:
        return AvatarcastError(f"this session already has {limit} viewers", code=ErrorCode.TOO_MANY_VIEWERS)
    return None


async def serve_socket(ws: WebSocket, hub: Hub, runner: SessionRunner, *, owns_session: bool) -> None:
    """Run one accepted socket against a session until either side goes away (or refuse it: too many
    sockets from this client, or on this session)."""
    refusal = hub.sockets.take(ws.scope)
    if refusal is None and (refusal := viewer_room(hub, runner)) is not None:
        hub.sockets.give_back(ws.scope)
    if refusal is not None:
        if owns_session:
            await hub.close_session(runner.id)
        await refuse(ws, refusal)
        return
    try:
        await _serve(ws, hub, runner, owns_session=owns_session)
    finally:
        hub.sockets.give_back(ws.scope)


async def _serve(ws: WebSocket, hub: Hub, runner: SessionRunner, *, owns_session: bool) -> None:
    sink = WebSocketSink(ws, runner.image_format)
    runner.attach(sink)
    hub.open_sockets += 1
    sender = asyncio.create_task(sink.run(), name=f"ws-send-{runner.id}")
    tasks: set[asyncio.Task] = set()
    max_bytes = hub.settings.max_message_bytes
    limits = JsonLimits(hub.settings.max_json_bytes, hub.settings.max_json_depth)
    guard = FloodGuard(hub.limits.ws, client_keys(ws.scope))

    def spawn(coro: Any) -> None:
        t = asyncio.create_task(coro)
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    async def run_clip(data: bytes) -> None:
        try:
            with runner.clip_slot():
                result = await runner.clip(data)
            sink.offer_event(event("clip", result))
        except AudioDecodeError:
            pass  # the runner already sent a bad_audio error event
        except AvatarcastError as exc:  # too_many_clips: the socket stays open
            sink.offer_event(error_event(exc.code, exc.message))
        except Exception as exc:
            log.exception("session %s: clip failed", runner.id)
            sink.offer_event(error_event(ErrorCode.CLIP_FAILED, f"{type(exc).__name__}: {exc}"))

    close_code: int | None = CLOSE_NORMAL
    reason = ""
    try:
        while not runner.closed.is_set():
            recv = asyncio.create_task(ws.receive())
            closed = asyncio.create_task(runner.closed.wait())
            done, _ = await asyncio.wait({recv, closed, sender}, return_when=asyncio.FIRST_COMPLETED)
            if recv not in done:
                recv.cancel()
                closed.cancel()
                if sender in done and sender.exception() is not None:
                    raise sender.exception()  # type: ignore[misc]
                break
            closed.cancel()
            msg = recv.result()
            if msg["type"] == "websocket.disconnect":
                break
            verdict, wait = guard.check()
            if verdict != "ok":
                hub.metrics.rate_limited.labels("ws").inc()
                if verdict == "close":
                    close_code, reason = ErrorCode.RATE_LIMITED.close, "rate limit exceeded: too many messages"
                    sink.offer_event(
                        error_event(ErrorCode.RATE_LIMITED, "too many messages; closing", retry_after_s=round(wait, 2))
                    )
                    break
                if verdict == "notify":
                    sink.offer_event(
                        error_event(
                            ErrorCode.RATE_LIMITED,
                            f"over {hub.limits.ws.rate:g} messages/s; messages dropped",
                            retry_after_s=round(wait, 2),
                        )
                    )
                continue
            data, text = msg.get("bytes"), msg.get("text")
            if data is not None:
                if len(data) > max_bytes:
                    close_code, reason = ErrorCode.TOO_LARGE.close, f"message over {max_bytes} bytes"
                    break
                tag, body = data[:4], data[4:]
                if tag == TAG_PCM:
                    if len(body) % 2:
                        sink.offer_event(error_event(ErrorCode.BAD_PCM, "PCM1 data must be whole 16-bit samples"))
                        continue
                    spawn(runner.pcm(np.frombuffer(body, dtype="<i2").copy()))
                elif tag == TAG_CLIP:
                    spawn(run_clip(bytes(body)))
                else:
                    sink.offer_event(error_event(ErrorCode.BAD_BINARY, "binary messages start with b'PCM1' or b'CLIP'"))
                continue
            if text is None:
                continue
            try:  # a text message is a JSON command: over its size (1009) or depth (1008) ends the socket
                limits.check(text)
            except JsonLimitError as exc:
                close_code, reason = exc.close_code, exc.message
                break
            await handle_command(text, runner, sink, spawn, limits)
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("session %s: socket failed", runner.id)
        close_code, reason = ErrorCode.INTERNAL.close, "internal error"
    finally:
        if runner.close_code == CLOSE_GOING_AWAY and close_code == CLOSE_NORMAL:
            close_code, reason = CLOSE_GOING_AWAY, "server shutting down"

        async def finish() -> None:
            if not sender.done():  # events still queued (an error, `closing`) go out before the close frame
                sender.cancel()
                await asyncio.wait({sender}, timeout=1.0)  # let it stop first: one writer at a time
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sink.flush_events(), 1.0)
            runner.detach(sink)
            sender.cancel()
            for t in list(tasks):
                t.cancel()
            try:
                if owns_session:
                    await hub.close_session(runner.id)
            finally:
                hub.open_sockets -= 1
                with contextlib.suppress(Exception):
                    await ws.close(close_code or CLOSE_INTERNAL, reason)

        # A handler cancelled by its server (a client gone mid-stream can end the ASGI task at once)
        # would stop at the first await of its cleanup and leave the session running with no socket:
        # the cleanup is its own task, shielded, and runs to the end either way.
        await asyncio.shield(run_held(finish(), name=f"ws-close-{runner.id}"))
