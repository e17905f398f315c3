"""Cold start (empty cache dir) of `avatarcast serve` per engine: seconds to /readyz 200, RSS at ready, then RSS
(and peak) after one session reacts for 20 s. From a checkout: PYTHONPATH=. python THIS_FILE > runs.jsonl"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mem(pid):
    d = {}
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            d[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return d


async def react(base, seconds=20.0):
    from avatarcast.client import Client

    n = 0
    async with Client(base) as client:
        s = await client.open(avatar="pip")

        async def frames():
            nonlocal n
            async for _ in s.frames():
                n += 1

        t = asyncio.create_task(frames())
        for text in [
            "I am so happy right now!",
            "This is terrible, I am so sad.",
            "Wow, what a surprise!",
            "I am really angry about this.",
            "I love you so much.",
        ]:
            await s.say(text)
            await asyncio.sleep(seconds / 5)
        t.cancel()
    return n


def run(args):
    port = free_port()
    cache = tempfile.mkdtemp(prefix="lat-")
    env = dict(os.environ)
    t0 = time.monotonic()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "avatarcast.realtime.cli",
            "serve",
            "--port",
            str(port),
            "--cache-dir",
            cache,
            "--clip-cache-dir",
            tempfile.mkdtemp(),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if p.poll() is not None:
                raise SystemExit("died")
            time.sleep(0.1)
        ready = time.monotonic() - t0
        st = httpx.get(base + "/v1/status").json()
        at_ready = mem(p.pid)
        frames = asyncio.run(react(base))
        after = mem(p.pid)
        return {
            "args": args,
            "engine": st["engine"]["name"],
            "ready_s": round(ready, 1),
            "load_s": st["load_s"],
            "rss_mb_ready": at_ready["VmRSS"],
            "rss_mb_after_20s_reacting": after["VmRSS"],
            "peak_rss_mb": after["VmHWM"],
            "frames": frames,
        }
    finally:
        p.terminate()
        p.wait(30)


if __name__ == "__main__":
    for rnd in range(2):
        for args in (["--engine", "tiny"], []) if rnd == 0 else ([], ["--engine", "tiny"]):
            print(json.dumps(run(args)), flush=True)
