"""Seeded fuzzing of a running server: malformed WebSocket messages and HTTP requests by the hundred,
while a well-behaved session watches its frame rate. The server must answer every bad input
with a 4xx or an error event (never a 5xx, a crash, or a dropped healthy stream).

AVATARCAST_FUZZ_N sets how many inputs (default 400: the CI version; run more by hand).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import subprocess
import sys
import time
import wave

import httpx
import numpy as np
import pytest
import websockets

from avatarcast.realtime.bench import server as bench_server
from avatarcast.realtime.protocol import TAG_CLIP, TAG_PCM, unpack_frame
from tests.conftest import free_port, wait_ready

N = int(os.environ.get("AVATARCAST_FUZZ_N", "400"))


def tiny_wav(rng: random.Random) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(rng.choice([1, 2]))
        w.setsampwidth(2)
        w.setframerate(rng.choice([8000, 16000, 44100, 96000]))
        w.writeframes(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 4000))))
    return buf.getvalue()


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 8)):
        op = rng.randrange(3)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)) :]
        else:
            b[rng.randrange(len(b) + 1) : 0] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
    return bytes(b)


def junk_value(rng: random.Random, depth: int = 0):
    kinds = [
        None,
        True,
        3,
        -1e308,
        1e400 if False else 1.5,
        "x" * rng.randrange(0, 3000),
        "😀\x00\u202e",
        [],
        {},
        "happy",
        "say",
        "emotion",
    ]
    v = rng.choice(kinds)
    if depth < 3 and rng.random() < 0.3:
        return {str(rng.choice(["type", "text", "label", "intensity", "a"])): junk_value(rng, depth + 1)}
    return v


def ws_message(rng: random.Random) -> str | bytes:
    r = rng.random()
    if r < 0.25:
        msg = {"type": rng.choice(["say", "emotion", "audio_end", "ping", "dance", "", None, 5])}
        for k in rng.sample(["text", "label", "intensity", "extra"], rng.randrange(0, 4)):
            msg[k] = junk_value(rng)
        return json.dumps(msg)
    if r < 0.4:
        return rng.choice(["", "{", "[]", "null", '{"type":', "\x00\x01", "nan", "{" * 500 + "}" * 500])
    if r < 0.6:
        n = rng.choice([0, 1, 3, 320, 641, 3200])
        return TAG_PCM + bytes(rng.getrandbits(8) for _ in range(n))
    if r < 0.85:
        return TAG_CLIP + mutate(tiny_wav(rng), rng)
    return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))


def http_request(rng: random.Random, sid: str) -> tuple[str, str, dict]:
    r = rng.random()
    if r < 0.3:
        return "POST", f"/v1/sessions/{sid}/clips", {"content": mutate(tiny_wav(rng), rng)}
    if r < 0.45:
        return "POST", f"/v1/sessions/{sid}/say", {"content": json.dumps({"text": junk_value(rng)})}
    if r < 0.6:
        return (
            "POST",
            f"/v1/sessions/{sid}/emotion",
            {"content": json.dumps({"label": junk_value(rng), "intensity": junk_value(rng)})},
        )
    if r < 0.7:
        return "POST", "/v1/sessions", {"content": json.dumps({"avatar": junk_value(rng), "quality": junk_value(rng)})}
    if r < 0.8:
        return (
            "POST",
            f"/v1/sessions/{sid}/whep",
            {
                "content": mutate(b"v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\nm=video 9 UDP 96\r\n", rng),
                "headers": {"content-type": "application/sdp"},
            },
        )
    if r < 0.9:
        return "POST", "/v1/clips", {"content": json.dumps({"emotion": junk_value(rng), "seconds": junk_value(rng)})}
    return (
        rng.choice(["GET", "DELETE", "PUT"]),
        rng.choice([f"/v1/sessions/{sid}x", "/v1/../etc/passwd", "/v1/sessions/%00"]),
        {},
    )


@pytest.fixture(scope="module")
def server_process():
    """The server in its own process, as deployed: the fuzzing client must not share its GIL."""
    port = free_port()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "avatarcast.realtime.cli",
            "serve",
            "--port",
            str(port),
            "--max-sessions",
            "16",
            "--admission",
            "0",
            "--rate-sessions-per-min",
            "60000",
            "--rate-http-per-s",
            "10000",
        ],  # fuzzing input, not capacity or rate limits (tests/realtime/test_hardening.py): inputs reach the routes
        stdout=subprocess.DEVNULL,
        stderr=open(os.environ.get("AVATARCAST_FUZZ_LOG", os.devnull), "w"),
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, 120, lambda: p.poll() is None)
    yield base
    p.terminate()
    p.wait(30)
    assert p.returncode in (0, -15), p.returncode  # a clean shutdown, not a crash


@pytest.mark.slow
def test_fuzzed_inputs_never_break_the_server_or_a_healthy_stream(server_process: str) -> None:
    rng = random.Random(20261126)
    base = server_process
    ws_base = base.replace("http://", "ws://")
    stats = {"ws_sent": 0, "http_sent": 0, "http_5xx": 0, "ws_internal_close": 0, "error_events": 0}

    async def watcher(stop: asyncio.Event) -> list[float]:
        times: list[float] = []
        async with websockets.connect(ws_base + "/v1/ws?avatar=pip") as ws:
            while not stop.is_set():
                try:
                    m = await asyncio.wait_for(ws.recv(), 1.0)
                except TimeoutError:
                    continue
                if isinstance(m, bytes):
                    # the server's send time: the server's pacing, not this busy client's receive loop
                    times.append(unpack_frame(m)[0].sent_at)
        return times

    ws_inputs = [ws_message(rng) for _ in range(N * 3 // 4)]  # made up front: the run itself only sends
    http_inputs = [rng.random() for _ in range(N // 4)]

    async def ws_fuzzer(count: int) -> None:
        sent = 0
        while sent < count:
            async with websockets.connect(ws_base + "/v1/ws?avatar=pip", max_size=None) as ws:
                try:
                    for _ in range(min(50, count - sent)):
                        await ws.send(ws_inputs[sent])
                        sent += 1
                        stats["ws_sent"] += 1
                        await asyncio.sleep(0.005)
                except websockets.exceptions.ConnectionClosed as exc:  # too deep (1008), too big (1009): answered
                    stats["ws_internal_close"] += exc.rcvd is not None and exc.rcvd.code == 1011
                    stats["ws_policy_close"] = stats.get("ws_policy_close", 0) + 1
                    continue
                end = time.monotonic() + 0.5
                while time.monotonic() < end:  # drain what came back
                    try:
                        m = await asyncio.wait_for(ws.recv(), 0.1)
                    except TimeoutError:
                        continue
                    except websockets.exceptions.ConnectionClosed as exc:
                        if exc.rcvd is not None and exc.rcvd.code == 1011:
                            stats["ws_internal_close"] += 1
                        break
                    if isinstance(m, str) and json.loads(m)["type"] == "error":
                        stats["error_events"] += 1

    async def http_fuzzer(count: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            sid = (await c.post("/v1/sessions", json={})).json()["id"]
            reqs = [http_request(random.Random(x), sid) for x in http_inputs[:count]]
            for method, path, kw in reqs:
                r = await c.request(method, path, **kw)
                stats["http_sent"] += 1
                if r.status_code >= 500:
                    stats["http_5xx"] += 1
            await c.delete(f"/v1/sessions/{sid}")

    import threading

    stop_flag = threading.Event()
    watched: list[float] = []

    def watch_thread() -> None:  # its own loop: a busy fuzzing loop must not delay its reads
        async def run_watcher() -> None:
            stop = asyncio.Event()

            async def poll() -> None:
                while not stop_flag.is_set():
                    await asyncio.sleep(0.05)
                stop.set()

            poller = asyncio.create_task(poll())
            watched.extend(await watcher(stop))
            await poller

        asyncio.run(run_watcher())

    th = threading.Thread(target=watch_thread, daemon=True)
    th.start()
    time.sleep(1.0)
    t0 = time.time()

    async def go() -> None:
        await asyncio.gather(ws_fuzzer(N * 3 // 4), http_fuzzer(N // 4))

    asyncio.run(go())
    time.sleep(1.0)
    stop_flag.set()
    th.join(10)
    times = [t for t in watched if t >= t0 - 0.2]
    gaps = np.diff(times)
    stats["frames"], stats["max_gap_s"], stats["p99_gap_s"] = (
        len(times),
        round(float(gaps.max()), 3),
        round(float(np.percentile(gaps, 99)), 3),
    )
    stats["max_gap_at"] = (
        time.strftime("%H:%M:%S", time.localtime(times[int(np.argmax(gaps))]))
        + f"{times[int(np.argmax(gaps))] % 1:.3f}"[1:]
    )
    print("fuzz stats:", stats)
    assert stats["ws_sent"] + stats["http_sent"] >= N
    assert stats["http_5xx"] == 0 and stats["ws_internal_close"] == 0, stats
    assert stats["error_events"] > 0  # bad inputs were answered, not ignored
    assert httpx.get(base + "/readyz").status_code == 200
    gaps = np.diff(times)
    span = times[-1] - times[0]
    assert len(times) >= 0.85 * 8 * span, (len(times), span)  # the healthy session kept (about) 8 fps
    # The 1.0-1.7 s stall once per 3000-input run is gone (max gap 0.17 s after): it was a fuzzed WAV header
    # claiming a 14.6 MHz sample rate (the resampler spent ~1 s on it; now refused at once), plus
    # first-use loads on the event loop (the Silero VAD at the first PCM, aiortc at the first WHEP offer).
    assert gaps.max() < 0.6, stats
    deadline = time.monotonic() + 5
    while httpx.get(base + "/v1/status").json()["sessions"] and time.monotonic() < deadline:
        time.sleep(0.1)  # the sessions of closed sockets go away
    assert httpx.get(base + "/v1/status").json()["sessions"] == 0


# --- WHEP: mutated real SDP offers and trickle fragments ---------------------------------------------

SDP_N = int(os.environ.get("AVATARCAST_FUZZ_SDP_N", "120"))
SDP_TYPE = {"content-type": "application/sdp"}
FRAG_TYPE = {"content-type": "application/trickle-ice-sdpfrag"}
JUNK_VALUES = [
    "",
    "-1",
    "0",
    "99999999999999999999",
    "NaN",
    "x" * 5000,
    "😀\x00\u202e",
    "a=b=c",
    " ",
    "\t",
    "192.0.2.1 1 udp",
    "sha-256 ZZ:ZZ",
]


def real_offer() -> str:
    """What a WHEP client really sends: aiortc's offer (video to receive, a data channel, its candidates)."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    async def make() -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="sendrecv")
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


def mutate_sdp(sdp: str, rng: random.Random) -> bytes:
    """Structure-aware damage to an SDP: lines dropped, repeated, reordered, values and m-lines replaced,
    candidates multiplied, line endings changed; sometimes byte-level damage on top."""
    lines = [ln for ln in sdp.split("\r\n") if ln]
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(8)
        i = rng.randrange(len(lines)) if lines else 0
        if op == 0 and lines:
            del lines[i]
        elif op == 1 and lines:
            lines.insert(i, lines[i])
        elif op == 2 and len(lines) > 1:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3 and lines:  # a value replaced: "a=setup:junk", "c=IN IP4 -1", ...
            key, sep, _ = lines[i].partition(":" if lines[i].startswith("a=") else "=")
            lines[i] = key + (sep or "=") + rng.choice(JUNK_VALUES)
        elif op == 4:  # an m-line's fields replaced
            ms = [k for k, ln in enumerate(lines) if ln.startswith("m=")]
            if ms:
                k = rng.choice(ms)
                f = lines[k][2:].split(" ")
                f[rng.randrange(len(f))] = rng.choice(JUNK_VALUES + ["application", "RTP/AVP", "65536", "9"])
                lines[k] = "m=" + " ".join(f)
        elif op == 5:  # many candidates (the offer's size limit, the agent's candidate handling)
            cands = [ln for ln in lines if ln.startswith("a=candidate:")] or [
                "a=candidate:1 1 udp 1 192.0.2.1 9 typ host"
            ]
            lines[i:i] = [rng.choice(cands)] * rng.choice([2, 64, 600])
        elif op == 6:  # an attribute the offer never had, or an unknown line type
            lines.insert(i, rng.choice(["a=ice-lite", "a=rtcp-mux-only", "z=junk", "a=ssrc:-5 cname:x", "a="]))
        else:
            lines = lines[: rng.randrange(len(lines) + 1)]  # cut short
    text = rng.choice(["\r\n", "\n", "\r"]).join(lines) + "\r\n"
    data = text.encode("utf-8", "surrogatepass")
    return mutate(data, rng) if rng.random() < 0.3 else data


def sdp_fragment(offer: str, rng: random.Random) -> bytes:
    """A trickle fragment (RFC 8840) built from the offer's own ICE lines, then damaged like an offer."""
    keep = [ln for ln in offer.split("\r\n") if ln.startswith(("a=ice-ufrag", "a=ice-pwd", "a=mid", "a=candidate"))]
    return mutate_sdp("\r\n".join(keep[:8]), rng)


async def delete_when_allowed(c: httpx.AsyncClient, url: str) -> httpx.Response:
    """DELETE as a polite client does: over the HTTP rate limit (429), again after its Retry-After."""
    for _ in range(50):
        r = await c.delete(url)
        if r.status_code != 429:
            return r
        await asyncio.sleep(float(r.headers.get("retry-after", "0.5")))
    return r


def open_fds(base: str) -> int:
    figures = bench_server.server_process(base)  # the soak's reading of /metrics
    assert figures is not None, "no process figures on /metrics"
    return figures["open_fds"]


@pytest.mark.slow
def test_mutated_real_sdp_offers_never_break_whep(server_process: str) -> None:
    """Mutated real offers against POST /v1/whep and /v1/sessions/{id}/whep, mutated trickle fragments against
    a live resource: every answer a 2xx or a 4xx with the API's error body, every peer an accepted offer made
    is deleted, and afterwards no session, no peer, and the open fds where they started."""
    base = server_process
    offer = real_offer()
    rng = random.Random(20261204)
    cases = []
    for _ in range(SDP_N):
        r = rng.random()
        cases.append(("whep_new" if r < 0.45 else "whep_session" if r < 0.75 else "patch", mutate_sdp(offer, rng)))
        if cases[-1][0] == "patch":
            cases[-1] = ("patch", sdp_fragment(offer, rng))
    seen: dict[int, int] = {}
    bad: list[tuple] = []

    async def go() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            fds0 = open_fds(base)
            sid = (await c.post("/v1/sessions", json={})).json()["id"]
            r = await c.post("/v1/whep", content=offer, headers=SDP_TYPE)  # the PATCH target: a real peer
            assert r.status_code == 201, r.text
            target = r.headers["location"]
            for kind, body in cases:
                if kind == "whep_new":
                    r = await c.post("/v1/whep", content=body, headers=SDP_TYPE)
                elif kind == "whep_session":
                    r = await c.post(f"/v1/sessions/{sid}/whep", content=body, headers=SDP_TYPE)
                else:
                    r = await c.patch(target, content=body, headers=FRAG_TYPE)
                seen[r.status_code] = seen.get(r.status_code, 0) + 1
                if r.status_code == 201:  # the damage left a valid offer: end the peer it made
                    assert (await delete_when_allowed(c, r.headers["location"])).status_code == 204
                elif r.status_code >= 300 and not (
                    400 <= r.status_code < 500 and isinstance(r.json().get("error"), str) and "message" in r.json()
                ):
                    bad.append((kind, r.status_code, r.text[:200], body[:300]))
            await delete_when_allowed(c, target)  # gone already if it was never connected (CONNECT_TIMEOUT_S)
            assert (await delete_when_allowed(c, f"/v1/sessions/{sid}")).status_code == 204
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                st = (await c.get("/v1/status")).json()
                if st["sessions"] == 0 and st["webrtc_peers"] == 0 and open_fds(base) <= fds0 + 2:
                    break
                await asyncio.sleep(0.2)
            st = (await c.get("/v1/status")).json()
            print("sdp fuzz statuses:", dict(sorted(seen.items())), "fds", fds0, "->", open_fds(base))
            assert st["sessions"] == 0 and st["webrtc_peers"] == 0, st
            assert open_fds(base) <= fds0 + 2, (fds0, open_fds(base))

    asyncio.run(go())
    assert not bad, bad[:5]
    assert sum(seen.values()) == SDP_N
    assert len([s for s in seen if 400 <= s < 500]) >= 2, seen  # the damage was answered in more than one way
    assert httpx.get(base + "/readyz").status_code == 200
