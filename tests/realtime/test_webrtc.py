"""WebRTC end to end: a real aiortc client against the real server on loopback.

Video frames decoded by the client, events and commands on the data channel, espeak-ng speech
sent as a microphone track, WHEP signaling errors, DELETE and the not-connected timeout.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import wave
from collections.abc import Callable
from fractions import Fraction

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

ESPEAK = shutil.which("espeak-ng")
BG = np.array([245, 240, 230])
SDP = {"Content-Type": "application/sdp"}


def run(coro, timeout: float = 40.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Client:
    """An aiortc viewer: recvonly video, an "events" data channel, optionally a microphone track."""

    def __init__(self, base: str, audio: MediaStreamTrack | None = None) -> None:
        self.base = base
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        if audio is not None:
            self.pc.addTransceiver(audio, direction="sendonly")
        self.channel = self.pc.createDataChannel("events")
        self.events: list[dict] = []
        self._new_event = asyncio.Event()
        self.opened = asyncio.Event()
        self.connected = asyncio.Event()
        self.video: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        self.location = self.session = ""

        @self.channel.on("open")
        def _open() -> None:
            self.opened.set()

        @self.channel.on("message")
        def _message(msg) -> None:
            self.events.append(json.loads(msg))
            self._new_event.set()

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not self.video.done():
                self.video.set_result(track)

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()

    async def connect(self, path: str = "/v1/whep") -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(timeout=20) as http:
            r = await http.post(
                self.base + path, content=self.pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
            )
        assert r.status_code == 201, r.text
        assert r.headers["content-type"].startswith("application/sdp")
        self.answer = r.text
        self.location, self.session = r.headers["location"], r.headers["x-session-id"]
        assert self.location.startswith("/v1/webrtc/")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
        await asyncio.wait_for(self.connected.wait(), 15)

    async def wait_event(self, pred: Callable[[dict], bool], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if pred(ev):
                    return ev
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                types = [(e["type"], e["payload"].get("label") or e["payload"].get("text")) for e in self.events]
                raise AssertionError(f"no matching event in {timeout} s; got {types}")
            self._new_event.clear()
            try:
                await asyncio.wait_for(self._new_event.wait(), left)
            except TimeoutError:
                pass

    async def close(self) -> None:
        await self.pc.close()


def is_emotion(label: str) -> Callable[[dict], bool]:
    return lambda e: e["type"] == "emotion" and e["payload"]["label"] == label


def test_video_and_data_channel(base: str) -> None:
    async def go() -> None:
        c = Client(base)
        try:
            await c.connect()
            t_connected = time.monotonic()
            track = await asyncio.wait_for(c.video, 5)
            frames = []
            while time.monotonic() - t_connected < 3.0:
                try:
                    frames.append(await asyncio.wait_for(track.recv(), 3.0 - (time.monotonic() - t_connected)))
                except TimeoutError:
                    break
            assert len(frames) >= 8, f"only {len(frames)} frames in the first 3 s after connecting"
            f = frames[-1]
            assert (f.width, f.height) == (640, 360)
            rgb = f.to_ndarray(format="rgb24").astype(np.int16)
            differs = (np.abs(rgb - BG).max(axis=2) > 40).mean()
            assert differs > 0.02, f"the frame looks empty: {differs:.3%} of pixels differ from the background"
            assert rgb.reshape(-1, 3).std(axis=0).max() > 10  # not a uniform colour

            await asyncio.wait_for(c.opened.wait(), 5)
            hello = await c.wait_event(lambda e: e["type"] == "hello", 5)
            assert hello["payload"]["session"] == c.session and hello["payload"]["fps"] == 8
            c.channel.send(json.dumps({"type": "ping"}))
            pong = await c.wait_event(lambda e: e["type"] == "pong", 5)
            assert pong["payload"]["info"]["id"] == c.session
            c.channel.send(json.dumps({"type": "say", "text": "I am so happy right now!"}))
            await c.wait_event(is_emotion("happy"), 15)
            lat = await c.wait_event(lambda e: e["type"] == "latency", 15)
            assert lat["payload"]
            c.channel.send("not json")
            err = await c.wait_event(lambda e: e["type"] == "error", 5)
            assert err["payload"]["code"] == "bad_json"
            # the video keeps flowing while the avatar reacts
            more = [await asyncio.wait_for(track.recv(), 3) for _ in range(4)]
            assert more[-1].pts > f.pts
        finally:
            await c.close()

    run(go())


def first_video_codec(sdp: str) -> str:
    lines = sdp.splitlines()
    m = next(ln for ln in lines if ln.startswith("m=video"))
    pt = m.split()[3]
    return next(ln.split()[1].split("/")[0] for ln in lines if ln.startswith(f"a=rtpmap:{pt} "))


def test_codec_negotiation(base: str) -> None:
    """The server prefers VP8 even when the offer lists H264 first; an H264-only offer still gets video."""
    caps = RTCRtpReceiver.getCapabilities("video").codecs
    by = lambda mime: [x for x in caps if x.mimeType.lower() == mime]  # noqa: E731

    async def go(prefs: list, expect: str) -> None:
        c = Client(base)
        c.pc.getTransceivers()[0].setCodecPreferences(prefs)
        try:
            await c.connect()
            assert first_video_codec(c.answer) == expect
            track = await asyncio.wait_for(c.video, 5)
            frames = [await asyncio.wait_for(track.recv(), 3) for _ in range(3)]
            f = frames[-1]
            assert (f.width, f.height) == (640, 360)
            assert (np.abs(f.to_ndarray(format="rgb24").astype(np.int16) - BG).max(axis=2) > 40).mean() > 0.02
            assert [x.pts for x in frames] == sorted(x.pts for x in frames)
            assert all(x.pts % (90000 // 8) == 0 for x in frames)
        finally:
            await c.close()

    run(go(by("video/h264") + by("video/vp8"), "VP8"))
    run(go(by("video/h264"), "H264"))


def speech_wav(path, text: str, before_s: float = 0.3, after_s: float = 1.5) -> str:
    raw = path.with_suffix(".raw.wav")
    subprocess.run([ESPEAK, "-w", str(raw), text], check=True)
    with wave.open(str(raw)) as w:
        rate, ch = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    pad = lambda s: np.zeros(int(s * rate) * ch, np.int16)  # noqa: E731
    with wave.open(str(path), "wb") as w:
        w.setnchannels(ch)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.concatenate([pad(before_s), pcm, pad(after_s)]).astype("<i2").tobytes())
    return str(path)


@pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_microphone_track(base: str, tmp_path) -> None:
    from aiortc.contrib.media import MediaPlayer

    wav = speech_wav(tmp_path / "speech.wav", "I am so happy right now")

    async def go() -> None:
        player = MediaPlayer(wav)
        c = Client(base, audio=player.audio)
        try:
            await c.connect()
            ev = await c.wait_event(
                lambda e: e["type"] == "transcript_final" and "happy" in e["payload"]["text"].lower(), 20
            )
            assert ev["payload"]["source"] != "say"
            await c.wait_event(is_emotion("happy"), 10)
        finally:
            player.audio.stop()
            await c.close()

    run(go())


def test_signaling_errors_and_delete(base: str) -> None:
    r = httpx.post(base + "/v1/whep", content=b"this is not sdp", headers={"Content-Type": "application/sdp"})
    assert r.status_code == 400
    assert r.json()["error"] == "bad_offer" and r.json()["message"]
    r = httpx.post(base + "/v1/whep", content=b"v=0\r\n", headers={"Content-Type": "application/sdp"})
    assert r.status_code == 400

    async def go() -> None:
        # an offer without video is refused too (and its session is not left behind)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(timeout=20) as http:
            before = (await http.get(base + "/v1/status")).json()["sessions"]
            r = await http.post(base + "/v1/whep", content=pc.localDescription.sdp, headers=SDP)
            assert r.status_code == 400 and "video" in r.json()["message"]
            assert (await http.get(base + "/v1/status")).json()["sessions"] == before
        await pc.close()

        # a peer that owns its session: DELETE ends both
        c = Client(base)
        try:
            await c.connect()
            async with httpx.AsyncClient(timeout=20) as http:
                assert (await http.get(f"{base}/v1/sessions/{c.session}")).json()["clients"] == 1
                assert (await http.delete(base + c.location)).status_code == 204
                assert (await http.get(f"{base}/v1/sessions/{c.session}")).status_code == 404
                r = await http.delete(base + c.location)
                assert r.status_code == 404 and r.json()["error"] == "no_peer"
        finally:
            await c.close()

        # a peer on an existing session: DELETE detaches it and leaves the session;
        # closing the session closes the peer
        async with httpx.AsyncClient(timeout=20) as http:
            sid = (await http.post(base + "/v1/sessions", json={})).json()["id"]
            c = Client(base)
            try:
                await c.connect(f"/v1/sessions/{sid}/whep")
                assert c.session == sid
                await asyncio.wait_for(c.video, 5)
                assert (await http.delete(base + c.location)).status_code == 204
                info = (await http.get(f"{base}/v1/sessions/{sid}")).json()
                assert info["clients"] == 0
            finally:
                await c.close()
            c = Client(base)
            try:
                await c.connect(f"/v1/sessions/{sid}/whep")
                assert (await http.delete(f"{base}/v1/sessions/{sid}")).status_code == 204
                for _ in range(50):
                    if (await http.delete(base + c.location)).status_code == 404:
                        break  # the server already closed the peer
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the peer outlived its session")
            finally:
                await c.close()

    run(go())


def test_not_connected_peer_times_out(base: str) -> None:
    from avatarcast.realtime import webrtc

    async def go() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        await pc.close()  # the answer is never used: the server side cannot connect
        async with httpx.AsyncClient(timeout=20) as http:
            r = await http.post(base + "/v1/whep", content=pc.localDescription.sdp, headers=SDP)
            assert r.status_code == 201, r.text
            sid = r.headers["x-session-id"]
            for _ in range(40):
                if (await http.get(f"{base}/v1/sessions/{sid}")).status_code == 404:
                    return
                await asyncio.sleep(0.1)
            raise AssertionError("the unconnected peer's session was not closed")

    old = webrtc.CONNECT_TIMEOUT_S
    webrtc.CONNECT_TIMEOUT_S = 1.0  # the server runs in this process (a thread): shorten its timeout
    try:
        run(go())
    finally:
        webrtc.CONNECT_TIMEOUT_S = old


# -- the peer's parts directly, in process (no ICE): the video track as a runner sink, events while no channel --


def test_the_video_track_sends_each_newest_frame_once_with_the_frame_clock_pts(inproc) -> None:
    from avatarcast.realtime import webrtc
    from avatarcast.realtime.runner import OutFrame

    client, hub = inproc
    runner = client.portal.call(lambda: hub.create_session("pip"))
    try:

        async def go() -> tuple[list, int, int, list[str], int]:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            peer = webrtc.Peer(hub, runner, pc, "direct", owns_session=False)
            track = peer.track
            rgba = np.zeros((360, 640, 4), np.uint8)
            rgba[..., 0], rgba[..., 3] = 200, 255  # opaque red over the background
            frame = lambda i: OutFrame(i, i, i / 8, "idle", "idle", rgba)  # noqa: E731
            track.offer_frame(frame(5))
            track.offer_frame(frame(7))  # the encoder had not taken 5: it is stale now
            sent = [await track.recv()]
            track.offer_frame(frame(6))  # older than what went out: never sent
            stale = asyncio.ensure_future(track.recv())
            await asyncio.sleep(0.2)
            assert not stale.done()
            track.offer_frame(frame(9))
            sent.append(await stale)
            for i in range(webrtc.MAX_PENDING_EVENTS + 3):  # no data channel open yet: kept, the oldest dropped
                peer.send_event(f'{{"n":{i}}}')
            pending, dropped = list(peer.pending), peer.events_dropped
            track.stop()
            await pc.close()
            return sent, track.frames_sent, track.frames_dropped, pending, dropped

        sent, n_sent, n_dropped, pending, dropped = client.portal.call(go)
    finally:
        client.portal.call(hub.close_session, runner.id)
    assert [f.pts for f in sent] == [7 * 90000 // 8, 9 * 90000 // 8] and sent[0].time_base == Fraction(1, 90000)
    assert sent[0].format.name == "yuv420p" and (sent[0].width, sent[0].height) == (640, 360)
    assert (n_sent, n_dropped) == (2, 1)  # frame 5 was replaced before it went out; frame 6 was skipped as old
    assert len(pending) == webrtc.MAX_PENDING_EVENTS and pending[0] == '{"n":3}' and dropped == 3
    red = sent[0].to_ndarray(format="rgb24")[180, 320]
    assert red[0] > 150 and red[1] < 80  # the frame's pixels, composited
