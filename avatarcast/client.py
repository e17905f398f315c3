"""An asyncio client for avatarcast's WebSocket protocol: open a session, send it text, emotions, voice clips
and live audio, and read its frames (decoded to RGBA numpy arrays) and its events (typed, realtime/events.py).

    async with Client("http://127.0.0.1:8080", token=None) as client:
        session = await client.open(avatar="pip")
        await session.say("I am so happy right now!")
        async for frame in session.frames():    # frame.rgba: (360, 640, 4) uint8
            ...

The wire format is realtime/protocol.py's (one definition for the server and this client); the JSON messages
are described in docs/protocol.schema.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from avatarcast.engines.errors import CLOSE_GOING_AWAY, CLOSE_NORMAL
from avatarcast.realtime.commands import (
    DEFAULT_INTENSITY,
    AudioEnd,
    Command,
    Ping,
    Say,
    SetEmotion,
    SetLanguage,
    command_json,
)
from avatarcast.realtime.events import Hello, ProtocolError, ServerEvent, parse_event
from avatarcast.realtime.protocol import TAG_CLIP, TAG_PCM, FrameHeader, unpack_frame

__all__ = [
    "Client",
    "ClientError",
    "EncodedFrame",
    "Frame",
    "Session",
    "SessionClosed",
    "SessionRefused",
]

E = TypeVar("E", bound=ServerEvent)
Listener = Callable[[float, "EncodedFrame | ServerEvent | None"], None]
Trace = Callable[[str, "str | bytes"], None]  # ("in" | "out", the message as on the wire)
NORMAL_CLOSES = (CLOSE_NORMAL, CLOSE_GOING_AWAY)


class ClientError(Exception):
    """Base of the client's own errors: what the client saw, not a server's error (engines/errors.py's tree)."""


class SessionRefused(ClientError):
    """The server would not open the session: a close before `hello` (busy, bad avatar, rate limited:
    `close_code` and `reason` say which, docs/protocol.md) or an HTTP refusal of the handshake (`status`: 403)."""

    def __init__(self, reason: str, *, close_code: int | None = None, status: int | None = None) -> None:
        super().__init__(f"session refused ({close_code or status}): {reason}")
        self.reason, self.close_code, self.status = reason, close_code, status


class SessionClosed(ClientError):
    """The session's socket closed with an error code (not 1000, not 1001), or a send after the close."""

    def __init__(self, close_code: int | None, reason: str) -> None:
        super().__init__(f"session closed ({close_code}): {reason}")
        self.close_code, self.reason = close_code, reason


@dataclass(frozen=True)
class EncodedFrame:
    """A frame as it arrived: its header, its image (JPEG, or WebP with alpha), its arrival (time.monotonic())."""

    header: FrameHeader
    image: bytes
    received_at: float

    def decode(self) -> Frame:
        """The image as RGBA pixels (JPEG frames are opaque)."""
        from PIL import Image  # PIL: only where frames are decoded (a bench reads headers only)

        with Image.open(io.BytesIO(self.image)) as im:
            rgba = np.asarray(im.convert("RGBA"))
        return Frame(self.header, rgba, self.received_at)


@dataclass(frozen=True)
class Frame:
    """A decoded frame: `rgba` is (height, width, 4) uint8, straight alpha."""

    header: FrameHeader
    rgba: np.ndarray
    received_at: float

    @property
    def index(self) -> int:
        return self.header.index

    @property
    def source(self) -> str:
        """idle, listening, cache or sampler: what the frame shows."""
        return self.header.source

    @property
    def emotion(self) -> str:
        return self.header.emotion


def ws_base(url: str) -> str:
    """http(s)://host:port, ws(s)://host:port or host:port -> the ws(s):// base."""
    u = url.rstrip("/")
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if u.startswith(http):
            return ws + u[len(http) :]
    return u if u.startswith(("ws://", "wss://")) else "ws://" + u


class Session:
    """One session over one WebSocket (made by Client.open). Frames and events are kept in bounded queues
    until read: a reader slower than 8 fps loses the oldest frames (counted in `frames_dropped`)."""

    def __init__(
        self, ws: ClientConnection, *, max_frames: int = 16, max_events: int = 4096, trace: Trace | None = None
    ) -> None:
        self._ws = ws
        self._trace = trace
        self._frames: deque[EncodedFrame] = deque(maxlen=max_frames)
        self._events: deque[ServerEvent] = deque(maxlen=max_events)
        self._frame_ready = asyncio.Event()
        self._event_ready = asyncio.Event()
        self._listeners: list[Listener] = []
        self._hello: asyncio.Future[Hello] = asyncio.get_running_loop().create_future()
        self._closed = asyncio.Event()
        self._closing = False  # this side asked for the close
        self.frames_dropped = 0
        self.events_dropped = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self._receiver = asyncio.create_task(self._receive(), name="avatarcast-client-receive")

    # -- what the server said --

    @property
    def hello(self) -> Hello:
        """The session's `hello` event (Client.open returns once it has arrived)."""
        return self._hello.result()

    async def wait_hello(self) -> Hello:
        """The `hello` event once it arrives; SessionRefused when the socket closes first."""
        return await asyncio.shield(self._hello)

    @property
    def id(self) -> str:
        return self.hello.session

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames as they arrive, decoded to RGBA (off the event loop); ends when the session closes.
        Raises SessionClosed when the server closed it with an error code."""
        async for enc in self.encoded_frames():
            yield await asyncio.to_thread(enc.decode)

    async def encoded_frames(self) -> AsyncIterator[EncodedFrame]:
        """Frames as they arrive, not decoded. frames() reads the same queue: use one of the two."""
        while True:
            while self._frames:
                yield self._frames.popleft()
            if self.closed:
                self._raise_if_failed()
                return
            self._frame_ready.clear()
            await self._frame_ready.wait()

    async def events(self) -> AsyncIterator[ServerEvent]:
        """Every event from `hello` on, in order; ends when the session closes (as frames() does)."""
        while True:
            while self._events:
                yield self._events.popleft()
            if self.closed:
                self._raise_if_failed()
                return
            self._event_ready.clear()
            await self._event_ready.wait()

    async def wait_for(self, kind: type[E], match: Callable[[E], bool] = lambda e: True, *, timeout: float = 30.0) -> E:
        """The next event of `kind` (that `match` accepts) from now on, without taking it from events().
        Raises TimeoutError, or SessionClosed when the session ends first."""
        fut: asyncio.Future[E] = asyncio.get_running_loop().create_future()

        def listen(_: float, item: EncodedFrame | ServerEvent | None) -> None:
            if fut.done():
                return
            if item is None:
                fut.set_exception(SessionClosed(self.close_code, self.close_reason or "closed before the event"))
            elif isinstance(item, kind) and match(item):
                fut.set_result(item)

        if self.closed:
            raise SessionClosed(self.close_code, self.close_reason or "closed")
        remove = self.add_listener(listen)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            remove()

    def add_listener(self, fn: Listener) -> Callable[[], None]:
        """Call fn(received_at, item) for each frame (not decoded) and event as it arrives, and fn(t, None) once
        when the socket closes; fn runs on the receiving task and must not block. Returns its remover."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    # -- what the client says --

    async def say(self, text: str) -> None:
        """Assistant text: shown as a transcript; the avatar reacts to its emotion."""
        await self.send(Say(text))

    async def emotion(self, label: str, intensity: float = DEFAULT_INTENSITY) -> None:
        """An explicit emotion (one of hello.emotions but listening); it overrides inferred ones."""
        await self.send(SetEmotion(label, intensity))

    async def language(self, language: str) -> None:
        """The ASR language of the next utterances: auto, en, zh, ... (answered by a Language event)."""
        await self.send(SetLanguage(language))

    async def audio_end(self) -> None:
        """The live audio paused (push-to-talk released): close the open utterance now."""
        await self.send(AudioEnd())

    async def ping(self) -> None:
        """Answered by a Pong event with the session's info."""
        await self.send(Ping())

    async def send(self, command: Command) -> None:
        await self._send(command_json(command))

    async def send_clip(self, clip: bytes | str | PathLike[str]) -> None:
        """A whole voice clip (wav, mp3, ogg/opus, webm, m4a, flac): its bytes or its path. The server answers
        with transcript_final, emotion and clip events."""
        data = clip if isinstance(clip, bytes) else Path(clip).read_bytes()
        await self._send(TAG_CLIP + data)

    async def send_pcm(self, samples: np.ndarray | bytes) -> None:
        """Live audio, 16 kHz mono: int16 samples, float samples in [-1, 1], or little-endian int16 bytes."""
        if isinstance(samples, (bytes, bytearray, memoryview)):
            body = bytes(samples)
            if len(body) % 2:
                raise ValueError("PCM bytes must be whole 16-bit samples")
        else:
            a = np.asarray(samples)
            if a.ndim != 1:
                raise ValueError(f"PCM must be mono (one dimension), got shape {a.shape}")
            if a.dtype.kind == "f":
                a = (np.clip(a, -1.0, 1.0) * 32767.0).round()
            elif a.dtype != np.int16:
                raise ValueError(f"PCM samples must be int16 or float, got {a.dtype}")
            body = a.astype("<i2").tobytes()
        await self._send(TAG_PCM + body)

    async def close(self) -> None:
        """Close the socket (code 1000); the server then ends a session this socket opened."""
        self._closing = True
        with contextlib.suppress(Exception):
            await self._ws.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self._receiver), 5.0)
        self._receiver.cancel()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals --

    async def _send(self, message: str | bytes) -> None:
        if self._trace is not None:
            self._trace("out", message)
        try:
            await self._ws.send(message)
        except ConnectionClosed as exc:
            raise SessionClosed(exc.rcvd.code if exc.rcvd else None, "the session is closed") from None

    def _raise_if_failed(self) -> None:
        if not self._closing and self.close_code not in NORMAL_CLOSES:
            raise SessionClosed(self.close_code, self.close_reason)

    def _notify(self, t: float, item: EncodedFrame | ServerEvent | None) -> None:
        for fn in list(self._listeners):
            fn(t, item)

    async def _receive(self) -> None:
        try:
            async for msg in self._ws:
                now = time.monotonic()
                if self._trace is not None:
                    self._trace("in", msg)
                if isinstance(msg, bytes):
                    try:
                        h, image = unpack_frame(msg)
                    except ValueError:
                        continue  # not a frame: a newer server's message this version cannot read
                    frame = EncodedFrame(h, image, now)
                    if len(self._frames) == self._frames.maxlen:
                        self.frames_dropped += 1
                    self._frames.append(frame)
                    self._frame_ready.set()
                    self._notify(now, frame)
                    continue
                try:
                    ev = parse_event(msg)
                except ProtocolError:
                    continue
                if isinstance(ev, Hello) and not self._hello.done():
                    self._hello.set_result(ev)
                if len(self._events) == self._events.maxlen:
                    self.events_dropped += 1
                self._events.append(ev)
                self._event_ready.set()
                self._notify(now, ev)
        except ConnectionClosed:
            pass
        finally:
            self.close_code, self.close_reason = self._ws.close_code, self._ws.close_reason or ""
            self._closed.set()
            self._frame_ready.set()
            self._event_ready.set()
            if not self._hello.done():
                self._hello.set_exception(SessionRefused(self.close_reason or "closed", close_code=self.close_code))
            self._notify(time.monotonic(), None)


class Client:
    """A server's address and credentials; `open()` starts sessions, and leaving `async with` closes them."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        token: str | None = None,
        open_timeout: float = 30.0,
        trace: Trace | None = None,
    ) -> None:
        """`token`: a server started with --auth-secret wants one (`avatarcast token`); `trace(direction,
        message)` sees every message sent and received, raw (debugging, protocol checks)."""
        self.url = ws_base(url)
        self.token = token
        self.open_timeout = open_timeout
        self.trace = trace
        self._sessions: list[Session] = []

    async def open(
        self,
        avatar: str = "",
        *,
        image_format: str | None = None,
        quality: int | None = None,
        language: str | None = None,
        session_id: str | None = None,
    ) -> Session:
        """A new session (avatar "": the server's first; image_format jpeg or webp with alpha; language auto,
        en, zh, ...), or with `session_id` a new client of an existing one. Returns once `hello` arrived;
        raises SessionRefused when the server refuses it."""
        if session_id is not None:
            url = f"{self.url}/v1/sessions/{urllib.parse.quote(session_id, safe='')}/ws"
        else:
            query = {"avatar": avatar, "image_format": image_format, "quality": quality, "language": language}
            q = urllib.parse.urlencode({k: v for k, v in query.items() if v not in (None, "")})
            url = f"{self.url}/v1/ws" + (f"?{q}" if q else "")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = await connect(
                url, additional_headers=headers, max_size=1 << 24, open_timeout=self.open_timeout, close_timeout=2
            )
        except InvalidStatus as exc:
            body = exc.response.body.decode(errors="replace") if exc.response.body else ""
            raise SessionRefused(body or str(exc), status=exc.response.status_code) from None
        session = Session(ws, trace=self.trace)
        try:
            await asyncio.wait_for(session.wait_hello(), self.open_timeout)
        except BaseException:
            await session.close()
            raise
        self._sessions.append(session)
        return session

    async def close(self) -> None:
        """Close every session this client opened."""
        sessions, self._sessions = self._sessions, []
        await asyncio.gather(*(s.close() for s in sessions))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
