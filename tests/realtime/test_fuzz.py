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
            "600",
        ],  # fuzzing input, not capacity
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
