"""The WebRTC transport (aiortc): the avatar as a video track, the microphone in, events on a data channel.

Signaling is WHEP (realtime/whep.py): the client POSTs an SDP offer, `answer_offer` returns the
answer with every server candidate in it (gathering is awaited) plus a resource id; the client may
trickle its own candidates later (`add_candidates`, a PATCH); DELETE of the resource ends the peer
(`close_peer`). The peer gathers with the configured STUN/TURN servers (realtime/ice.py); with none,
host candidates only, which reach loopback machines and LANs, not across NATs.

Per peer:
- video: `AvatarVideoTrack` is a runner sink (image_format None: raw RGBA). It keeps only the
  newest OutFrame; `recv()` waits for a frame newer than the last one sent, so the sender is
  paced by the runner's 8 fps frame loop (no busy loop, no buffer). Frames are composited over
  the background and converted to yuv420p on a worker thread; pts = index * 90000 // FPS in 1/90000.
  VP8 is preferred, then H264 (whatever the offer allows).
- audio (optional): a sending audio m-line in the offer (the browser microphone) is consumed,
  resampled to 16 kHz mono s16 and fed to `runner.pcm` in ~100 ms batches, in order.
- data channel (opened by the client, any label; "events" recommended): the session's JSON events
  go out on it, JSON commands come in and are handled exactly like WebSocket text messages.

A peer ends (pc closed, sink detached, the session closed too if the peer owns it) on DELETE, when
its connection fails or closes, when its session closes, when it is not connected within
CONNECT_TIMEOUT_S, and at shutdown (`close_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import secrets
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as aiosdp
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatarcast.engines.errors import AvatarcastError, ErrorCode
from avatarcast.realtime.commands import error_event, handle_command
from avatarcast.realtime.held_tasks import run_held
from avatarcast.realtime.hub import Hub
from avatarcast.realtime.ice import IceServer
from avatarcast.realtime.protocol import TAG_PCM
from avatarcast.realtime.runner import OutFrame, SessionRunner
from avatarcast.realtime.video import composite_image
from avatarcast.vocabulary import FPS

log = logging.getLogger("avatarcast.webrtc")

VIDEO_CLOCK = 90000  # RTP's clock for video (RFC 3551)
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
CONNECT_TIMEOUT_S = 30.0  # a peer not "connected" by then is closed
NEGOTIATE_TIMEOUT_S = 15.0  # set offer + create answer + ICE gathering
PCM_BATCH = 1600  # samples (100 ms at 16 kHz) per runner.pcm call
MAX_PENDING_EVENTS = 256  # events kept while no data channel is open yet
MAX_CHANNEL_BUFFER = 1 << 20  # bytes queued on a data channel before events are dropped
CODEC_ORDER = ("video/vp8", "video/h264")


MAX_PEERS_PER_SESSION = 4  # viewers of one avatar stream; each costs a video encoder
MAX_TRICKLED_CANDIDATES = 64  # remote candidates a peer may add after its offer (each adds ICE checks)


class OfferError(AvatarcastError, ValueError):
    """A bad SDP offer."""

    code = ErrorCode.BAD_OFFER


class CandidateError(AvatarcastError, ValueError):
    """Trickled candidates that cannot be added (the code says why: a bad fragment, an ICE restart, no peer)."""

    code = ErrorCode.BAD_SDPFRAG


@dataclass(frozen=True)
class Answer:
    """What a WHEP POST answers: the SDP answer, the peer's resource id, and its ICE session's entity tag."""

    sdp: str
    resource: str
    etag: str


@dataclass(frozen=True)
class TrickledCandidates:
    """A trickle-ICE SDP fragment's content (RFC 8840): the ICE credentials it names, its candidates by mid."""

    ufrag: str | None
    pwd: str | None
    candidates: tuple[tuple[str | None, str], ...]  # (mid, the a=candidate: value)
    end: bool  # a=end-of-candidates


# -- video --


def _to_video_frame(rgba: np.ndarray, pts: int) -> av.VideoFrame:
    """RGBA (360, 640, 4) -> yuv420p VideoFrame over the background (runs on a worker thread)."""
    frame = av.VideoFrame.from_image(composite_image(rgba)).reformat(format="yuv420p")
    frame.pts = pts
    frame.time_base = VIDEO_TIME_BASE
    return frame


class AvatarVideoTrack(MediaStreamTrack):
    """The session's frames as a video track; also the peer's runner sink (frames and events)."""

    kind = "video"
    image_format = None  # the runner hands raw RGBA

    def __init__(self, peer: Peer) -> None:
        super().__init__()
        self._peer = peer
        self._frame: OutFrame | None = None  # newest frame not yet sent
        self._wake = asyncio.Event()
        self._last_index = -1
        self.frames_sent = 0
        self.frames_dropped = 0

    # sink side (called by the runner's frame loop; never blocks)

    def offer_frame(self, frame: OutFrame) -> None:
        if self._frame is not None:
            self.frames_dropped += 1  # the encoder has not taken the previous one: stale now
        self._frame = frame
        self._wake.set()

    def offer_event(self, event_json: str) -> None:
        self._peer.send_event(event_json)

    # track side (called by aiortc's RTCRtpSender)

    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            frame, self._frame = self._frame, None
            if frame is not None and frame.index > self._last_index:
                break
            self._wake.clear()
            await self._wake.wait()
        self._last_index = frame.index
        pts = frame.index * VIDEO_CLOCK // FPS
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._peer.pool, _to_video_frame, frame.rgba, pts)
        self.frames_sent += 1
        return out

    def stop(self) -> None:
        super().stop()
        self._wake.set()


# -- one peer --


class Peer:
    def __init__(
        self, hub: Hub, runner: SessionRunner, pc: RTCPeerConnection, resource: str, owns_session: bool
    ) -> None:
        self.hub = hub
        self.runner = runner
        self.pc = pc
        self.resource = resource
        self.owns_session = owns_session
        self.pool = hub.pools.encode
        self.track = AvatarVideoTrack(self)
        self.channels: list[RTCDataChannel] = []
        self.pending: deque[str] = deque(maxlen=MAX_PENDING_EVENTS)
        self.events_dropped = 0
        self.connected = asyncio.Event()
        self.closing = False
        self.created = time.monotonic()
        self.tasks: set[asyncio.Task] = set()
        self.etag = '"' + secrets.token_urlsafe(9) + '"'  # names this ICE session for WHEP PATCH (If-Match)
        self.trickled = 0

    def spawn(self, coro: Any, name: str | None = None) -> asyncio.Task:
        t = asyncio.create_task(coro, name=name)
        self.tasks.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task) -> None:
        self.tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("peer %s: task %s failed: %r", self.resource, t.get_name(), t.exception())

    # events out

    def send_event(self, text: str) -> None:
        open_ = [ch for ch in self.channels if ch.readyState == "open"]
        if not open_:
            if len(self.pending) == self.pending.maxlen:
                self.events_dropped += 1
            self.pending.append(text)
            return
        for ch in open_:
            if ch.bufferedAmount > MAX_CHANNEL_BUFFER:
                self.events_dropped += 1  # the peer does not read: drop rather than grow
                continue
            try:
                ch.send(text)
            except Exception as exc:  # closed under us
                log.debug("peer %s: send on %r failed: %r", self.resource, ch.label, exc)

    def _flush_pending(self) -> None:
        while self.pending and any(ch.readyState == "open" for ch in self.channels):
            self.send_event(self.pending.popleft())

    # data channel

    def add_channel(self, ch: RTCDataChannel) -> None:
        log.info("peer %s: data channel %r", self.resource, ch.label)
        self.channels.append(ch)

        @ch.on("open")
        def _open() -> None:
            self._flush_pending()

        @ch.on("close")
        def _close() -> None:
            with contextlib.suppress(ValueError):
                self.channels.remove(ch)

        @ch.on("message")
        def _message(msg: Any) -> None:
            if self.closing:
                return
            max_bytes = self.hub.settings.max_message_bytes
            if isinstance(msg, str):
                if len(msg) > max_bytes:
                    self.send_event(error_event(ErrorCode.TOO_BIG, f"message over {max_bytes} bytes"))
                    return
                self.spawn(handle_command(msg, self.runner, self.track, self._spawn_input), name="dc-command")
            elif bytes(msg[:4]) == TAG_PCM and len(msg) % 2 == 0:
                self._spawn_input(self.runner.pcm(np.frombuffer(bytes(msg[4:]), dtype="<i2").copy()))
            else:
                self.send_event(
                    error_event(
                        ErrorCode.BAD_BINARY,
                        "binary data channel messages are b'PCM1' + int16 "
                        "samples; send the microphone as an audio track",
                    )
                )

        if ch.readyState == "open":
            self._flush_pending()

    def _spawn_input(self, coro: Any) -> None:
        self.spawn(coro, name="input")

    # audio in

    async def consume_audio(self, track: MediaStreamTrack) -> None:
        """Remote microphone -> 16 kHz mono int16 -> runner.pcm, ~100 ms per call, in order.

        Each batch is its own task (like a WebSocket PCM1 message): the runner's FIFO audio
        lock keeps them in order, and its backlog limit drops audio (with an error event)
        when ASR falls behind, so this loop never stops reading and nothing grows unbounded.
        """
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        parts: list[np.ndarray] = []
        n = 0
        try:
            while not self.closing:
                frame = cast(av.AudioFrame, await track.recv())
                for out in resampler.resample(frame):
                    a = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                    parts.append(a)
                    n += a.size
                if n >= PCM_BATCH:
                    self._spawn_input(self.runner.pcm(np.concatenate(parts)))
                    parts, n = [], 0
        except MediaStreamError:
            pass
        finally:
            if n and not self.closing and not self.runner.closed.is_set():
                self._spawn_input(self.runner.pcm(np.concatenate(parts)))
        log.info("peer %s: audio track ended", self.resource)

    async def drain(self, track: MediaStreamTrack) -> None:
        """A remote track we have no use for (video from the client): read and drop, so it never queues."""
        with contextlib.suppress(MediaStreamError):
            while not self.closing:
                await track.recv()

    # life cycle

    async def watch(self) -> None:
        """Close when not connected within CONNECT_TIMEOUT_S, or when the session ends."""
        closed = asyncio.create_task(self.runner.closed.wait())
        connected = asyncio.create_task(self.connected.wait())
        try:
            done, _ = await asyncio.wait(
                {closed, connected}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                log.warning("peer %s: not connected after %.0f s; closing", self.resource, CONNECT_TIMEOUT_S)
                _schedule_close(self.hub, self.resource)
                return
            await closed
            log.info("peer %s: session %s closed; closing the peer", self.resource, self.runner.id)
            _schedule_close(self.hub, self.resource)
        finally:
            closed.cancel()
            connected.cancel()

    async def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.runner.detach(self.track)
        self.track.stop()
        current = asyncio.current_task()
        for t in list(self.tasks):
            if t is not current:
                t.cancel()
        try:
            await self.pc.close()
        except Exception:
            log.exception("peer %s: closing the peer connection failed", self.resource)
        if self.owns_session:
            await self.hub.close_session(self.runner.id)
        log.info(
            "peer %s closed (session %s, %d frames sent, %d stale dropped, %.1f s)",
            self.resource,
            self.runner.id,
            self.track.frames_sent,
            self.track.frames_dropped,
            time.monotonic() - self.created,
        )


# -- registry and the public calls --


def _schedule_close(hub: Hub, resource: str) -> None:
    """close_peer from a callback (state change, watcher): a task of its own, kept alive until done."""
    run_held(close_peer(hub, resource), name=f"webrtc-close-{resource}")


def _prefer_codecs(transceiver: Any) -> None:
    """VP8 first, then H264, then anything else; RTX kept. The offer still decides what is common."""
    caps = RTCRtpSender.getCapabilities("video").codecs

    def rank(c: Any) -> int:
        m = c.mimeType.lower()
        return CODEC_ORDER.index(m) if m in CODEC_ORDER else len(CODEC_ORDER)

    transceiver.setCodecPreferences(sorted(caps, key=rank))


@contextlib.contextmanager
def _bad_offer(doing: str) -> Iterator[None]:
    """aiortc's errors on an offer (any exception type) as OfferError: the client's offer is bad (400)."""
    try:
        yield
    except Exception as exc:
        raise OfferError(f"cannot {doing} this SDP offer: {exc or type(exc).__name__}") from None


def _check_sdp(sdp: str) -> None:
    text = sdp.strip()
    if not text:
        raise OfferError("the request body is empty; send the SDP offer (Content-Type: application/sdp)")
    if not text.startswith("v=") or "\nm=" not in text.replace("\r\n", "\n"):
        raise OfferError("the body is not an SDP offer (it must start with 'v=0' and have m= lines)")


async def answer_offer(
    hub: Hub, runner: SessionRunner, sdp: str, *, owns_session: bool, ice_servers: Sequence[IceServer] = ()
) -> Answer:
    """Answer a WHEP offer for `runner`'s session: the SDP answer with all candidates, gathered with `ice_servers`
    (aiortc uses the first STUN and the first TURN server of them)."""
    _check_sdp(sdp)
    if runner.closed.is_set():
        raise OfferError("the session is closed")
    if sum(1 for p in hub.peers.values() if p.runner is runner) >= MAX_PEERS_PER_SESSION:
        raise OfferError(f"this session already has {MAX_PEERS_PER_SESSION} WebRTC peers")
    servers = [RTCIceServer(s.url, s.username or None, s.credential or None) for s in ice_servers]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
    resource = secrets.token_urlsafe(12)
    peer = Peer(hub, runner, pc, resource, owns_session)
    video = pc.addTransceiver(peer.track, direction="sendonly")
    _prefer_codecs(video)

    @pc.on("track")
    def _on_track(track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            log.info("peer %s: microphone track", resource)
            peer.spawn(peer.consume_audio(track), name=f"webrtc-audio-{resource}")
        else:
            peer.spawn(peer.drain(track), name=f"webrtc-drain-{resource}")

    @pc.on("datachannel")
    def _on_channel(ch: RTCDataChannel) -> None:
        peer.add_channel(ch)

    @pc.on("connectionstatechange")
    def _on_state() -> None:
        state = pc.connectionState
        log.info("peer %s: connection %s", resource, state)
        if state == "connected":
            peer.connected.set()
        elif state in ("failed", "closed") and not peer.closing:
            _schedule_close(hub, resource)

    async def negotiate() -> str:
        with _bad_offer("use"):
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if video.mid is None:
            raise OfferError("the offer has no video m-line; add a video transceiver (direction recvonly)")
        # aiortc accepts some offers it then cannot answer (a data channel's m-line naming an unknown media, m-lines
        # that its answer does not match: AttributeError, ValueError); found by mutated real offers
        # (tests/realtime/test_fuzz.py): a bad offer, not a server error
        with _bad_offer("answer"):
            answer = await pc.createAnswer()
        if _direction(answer.sdp, video.mid) not in ("sendonly", "sendrecv"):
            raise OfferError("the offer's video m-line does not receive; use direction recvonly or sendrecv")
        with _bad_offer("answer"):
            await pc.setLocalDescription(answer)  # aiortc gathers every ICE candidate here (non-trickle)
        return pc.localDescription.sdp

    try:
        answer_sdp = await asyncio.wait_for(negotiate(), NEGOTIATE_TIMEOUT_S)
    except BaseException as exc:
        peer.closing = True
        peer.track.stop()
        for t in list(peer.tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await pc.close()
        if isinstance(exc, asyncio.TimeoutError):
            raise OfferError(f"negotiation did not finish in {NEGOTIATE_TIMEOUT_S:.0f} s") from None
        if isinstance(exc, OfferError):
            log.info("session %s: bad offer: %s", runner.id, exc)
        raise
    hub.peers[resource] = peer
    runner.attach(peer.track)
    peer.spawn(peer.watch(), name=f"webrtc-watch-{resource}")
    if pc.connectionState in ("failed", "closed"):  # it ended before it was registered
        _schedule_close(hub, resource)
    log.info(
        "peer %s: answered for session %s (video %s%s)",
        resource,
        runner.id,
        _codec_name(video),
        ", owns the session" if owns_session else "",
    )
    return Answer(answer_sdp, resource, peer.etag)


def _direction(sdp: str, mid: str) -> str | None:
    """The direction of the m-line with this mid in an SDP."""
    for m in aiosdp.SessionDescription.parse(sdp).media:
        if m.rtp.muxId == mid:
            return m.direction
    return None


def _codec_name(transceiver: Any) -> str:
    codecs = getattr(transceiver, "_codecs", None) or []
    return codecs[0].mimeType if codecs else "?"


def parse_sdpfrag(text: str) -> TrickledCandidates:
    """A trickle-ICE SDP fragment (application/trickle-ice-sdpfrag) -> its ICE credentials and candidates."""
    ufrag = pwd = mid = None
    candidates: list[tuple[str | None, str]] = []
    end = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=ice-pwd:"):
            pwd = line[len("a=ice-pwd:") :]
        elif line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=candidate:"):
            candidates.append((mid, line[len("a=candidate:") :]))
        elif line == "a=end-of-candidates":
            end = True
        elif line and not (line.startswith("a=") or line.startswith("m=") or line.startswith("c=")):
            raise CandidateError(f"not a trickle-ICE SDP fragment line: {line[:80]!r}")
    if not candidates and not end and ufrag is None:
        raise CandidateError("the fragment has no a=candidate, a=end-of-candidates or a=ice-ufrag line")
    return TrickledCandidates(ufrag, pwd, tuple(candidates), end)


async def add_candidates(hub: Hub, resource: str, frag: TrickledCandidates, if_match: str | None) -> None:
    """Trickle ICE (a WHEP PATCH): add the client's candidates to its peer. An ICE restart is refused
    (aiortc cannot restart ICE): CandidateError with ICE_RESTART_UNSUPPORTED; a stale If-Match: ETAG_MISMATCH."""
    peer = hub.peers.get(resource)
    if peer is None or peer.closing:
        raise CandidateError(f"no WebRTC peer {resource!r}", code=ErrorCode.NO_PEER)
    remote = aiosdp.SessionDescription.parse(peer.pc.remoteDescription.sdp)
    ice = remote.media[0].ice if remote.media else None
    restart = if_match == "*" or (
        frag.ufrag is not None and ice is not None and (frag.ufrag, frag.pwd) != (ice.usernameFragment, ice.password)
    )
    if restart:
        raise CandidateError(
            "ICE restarts are not supported: DELETE this peer and POST a new offer",
            code=ErrorCode.ICE_RESTART_UNSUPPORTED,
        )
    if if_match is not None and if_match != peer.etag:
        raise CandidateError(f"If-Match {if_match} does not name this ICE session", code=ErrorCode.ETAG_MISMATCH)
    if peer.trickled + len(frag.candidates) > MAX_TRICKLED_CANDIDATES:
        raise CandidateError(f"over {MAX_TRICKLED_CANDIDATES} trickled candidates", code=ErrorCode.TOO_LARGE)
    # with BUNDLE, aiortc keeps one transport, the group's first mid's: a candidate for another mid goes there
    first = {str(m): str(g.items[0]) for g in remote.group if g.semantic == "BUNDLE" and g.items for m in g.items}
    candidates = []
    for mid, value in frag.candidates:  # all parsed before any is added: a bad fragment changes nothing
        try:
            candidate = aiosdp.candidate_from_sdp(value)
        except (AssertionError, ValueError, IndexError):
            raise CandidateError(f"bad candidate {value[:80]!r}") from None
        candidate.sdpMid = first.get(mid or "", mid)
        if candidate.sdpMid is None:
            candidate.sdpMLineIndex = 0
        candidates.append(candidate)
    for candidate in candidates:
        await peer.pc.addIceCandidate(candidate)
        peer.trickled += 1
    if frag.end:
        await peer.pc.addIceCandidate(None)


async def close_peer(hub: Hub, resource: str) -> bool:
    """End one peer (and its session if it owns it); False if there is no such peer."""
    peer = hub.peers.pop(resource, None)
    if peer is None:
        return False
    await peer.close()
    return True


async def close_all(hub: Hub) -> None:
    """Shutdown: end every peer."""
    peers = hub.peers
    await asyncio.gather(*(close_peer(hub, r) for r in list(peers)), return_exceptions=True)
