"""One healthy session's figures while attackers try every resource bound at once (issue 19 items 5 and 7).

    python -m tools.bench_attack [--seconds 60] [--url http://host:port] [--server-args "..."]

Starts `avatarcast serve` (or attaches to --url), opens one healthy WebSocket session that says an emotional
line every 4 s, and meanwhile, from a process of their own and from other loopback addresses (so the per-IP
caps apply to them and not to the healthy client on 127.0.0.1): deep and oversize JSON on sockets and in
bodies, a new random avatar every second (refused while its last one is being prepared), clip and `say`
floods on the attackers' own sessions, silent WebSockets that never answer a ping, --idle-tcp idle TCP
connections (kept open, reopened when cut) and --slowloris clients sending headers one byte a second. Prints
the healthy session's frame rate, frame interval percentiles, and whether and how fast its reactions arrived;
what the attackers got back; the server's CPU and the machine's other load; and RSS, open fds, sessions, held
reaction frames and the degradation level before, during and after. Run it
under `flock /work/locks/bench.lock` on a shared machine; --attacks none measures the healthy session alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import websockets

from avatarcast.realtime.bench.client import Conn, interval_stats, pct
from avatarcast.realtime.bench.server import run_on_server
from avatarcast.realtime.protocol import TAG_CLIP
from avatarcast.vocabulary import REACTION_SOURCES

SPEECH = Path(__file__).resolve().parents[1] / "tests" / "data" / "speech" / "en"
LINES = [
    "This is the best news I have heard all year!",
    "I am so sorry, that is terribly sad.",
    "Wait, what? I did not expect that at all!",
    "That makes me really angry.",
]
DEEP = "[" * 30_000 + "]" * 30_000
HUGE = "[" * 100_000 + "]" * 100_000


def metrics(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line and line[0] != "#":
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def snapshot(base: str) -> dict[str, Any]:
    m = metrics(base)
    status = httpx.get(base + "/v1/status", timeout=10).json()
    return {
        "rss_mb": round(m.get("process_resident_memory_bytes", 0) / 2**20, 1),
        "open_fds": int(m.get("process_open_fds", 0)),
        "sessions": status["sessions"],
        "connections_open": int(m.get("avatarcast_connections_open", 0)),
        "cut": {k.split('"')[1]: int(v) for k, v in m.items() if k.startswith("avatarcast_connections_cut_total")},
        # the live path's quality: reaction frames that found no chunk ready (held), and the ladder's level
        "chunk_late_frames": int(status["stats"].get("chunk_late_frames", 0)),
        "degradation_level": (status.get("load") or {}).get("degradation_level"),
        # the event loop's lag over the last minute (realtime/loop_lag.py): what every session waited at once
        "loop_lag_ms": {
            k: round(1000 * m.get(f'avatarcast_event_loop_lag_seconds{{stat="{k}"}}', float("nan")), 1)
            for k in ("p99", "max")
        },
    }


class Attack:
    """The attackers' shared stop flag and tallies."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.ws = base.replace("http://", "ws://")
        self.port = int(base.rsplit(":", 1)[1])
        self.stop = asyncio.Event()
        self.got: Counter[str] = Counter()

    def running(self) -> bool:
        return not self.stop.is_set()

    async def nap(self, s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), s)

    # -- 1. JSON --
    async def json_bombs(self, src: str) -> None:
        http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=src), timeout=30)
        sid = None
        while self.running():
            for text in (DEEP, HUGE):
                try:
                    async with websockets.connect(self.ws + "/v1/ws", local_addr=(src, 0), max_queue=None) as ws:
                        await ws.send(text)
                        await asyncio.wait_for(ws.wait_closed(), 10)
                        self.got[f"json ws close {ws.close_code}"] += 1
                except Exception as exc:
                    self.got[f"json ws {type(exc).__name__}"] += 1
            if sid is None:
                r = await http.post(self.base + "/v1/sessions", json={})
                sid = r.json().get("id") if r.status_code == 201 else None
            if sid is not None:
                for body in ('{"text": ' + DEEP + "}", '{"text": ' + HUGE + "}"):
                    r = await http.post(f"{self.base}/v1/sessions/{sid}/say", content=body)
                    self.got[f"json http {r.status_code} {r.json().get('error')}"] += 1
            await self.nap(0.5)
        if sid is not None:
            await http.delete(f"{self.base}/v1/sessions/{sid}")
        await http.aclose()

    # -- 2. avatars --
    async def avatar_churn(self, src: str) -> None:
        http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=src), timeout=30)
        n = int(time.time())
        while self.running():
            n += 1
            r = await http.post(self.base + "/v1/sessions", json={"avatar": f"random-{n}"})
            self.got[f"avatar {r.status_code} {r.json().get('error', '')}".strip()] += 1
            if r.status_code == 201:
                await http.delete(f"{self.base}/v1/sessions/{r.json()['id']}")
            await self.nap(1.0)
        await http.aclose()

    # -- 3. clips and texts on the attacker's own session --
    async def input_flood(self, src: str) -> None:
        clip = (SPEECH / "en06_happy.ogg").read_bytes()
        try:
            async with websockets.connect(self.ws + "/v1/ws", local_addr=(src, 0), max_queue=None) as ws:

                async def read() -> None:
                    async for m in ws:
                        if isinstance(m, str):
                            ev = json.loads(m)
                            if ev["type"] in ("error", "clip"):
                                self.got[f"flood {ev['type']} {ev['payload'].get('code', '')}".strip()] += 1

                reader = asyncio.create_task(read())
                i = 0
                while self.running() and not reader.done():
                    i += 1
                    await ws.send(TAG_CLIP + clip if i % 5 == 0 else json.dumps({"type": "say", "text": LINES[i % 4]}))
                    await self.nap(0.05)
                reader.cancel()
        except Exception as exc:
            self.got[f"flood {type(exc).__name__}"] += 1

    # -- 4. silent sockets, idle TCP --
    async def silent_socket(self, src: str) -> None:
        """A WebSocket handshake by hand, then nothing: no message, no pong; reopened when the server closes it."""
        while self.running():
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(src, 0))
            except OSError:
                self.got["silent connect refused"] += 1
                await self.nap(1.0)
                continue
            key = base64.b64encode(os.urandom(16)).decode()
            w.write(
                f"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            code = await self._close_code(r)
            self.got[f"silent ws {code}"] += 1
            w.close()
            await self.nap(0.5)

    async def _close_code(self, r: asyncio.StreamReader) -> str:
        """Read until the server ends the stream: its close code ('close 1008'), or its HTTP status."""
        buf = b""
        with contextlib.suppress(Exception):
            head = await r.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                return "http " + head.split(b" ")[1].decode()
            while self.running() or buf:
                chunk = await r.read(65536)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 2:
                    op, n, i = buf[0] & 0x0F, buf[1] & 0x7F, 2
                    if n == 126:
                        n, i = (struct.unpack_from("!H", buf, 2)[0], 4) if len(buf) >= 4 else (1 << 62, 4)
                    elif n == 127:
                        n, i = (struct.unpack_from("!Q", buf, 2)[0], 10) if len(buf) >= 10 else (1 << 62, 10)
                    if len(buf) < i + n:
                        break
                    if op == 8:
                        return f"close {struct.unpack_from('!H', buf, i)[0]}"
                    buf = buf[i + n :]
        return "eof"

    async def idle_tcp(self, src: str) -> None:
        """A TCP connection that sends nothing; reopened as soon as the server ends it."""
        while self.running():
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(src, 0))
            except OSError:
                self.got["idle connect refused"] += 1
                await self.nap(1.0)
                continue
            data = b""
            with contextlib.suppress(Exception):
                data = await r.read(200)  # the server's answer when it cuts the connection
            self.got[f"idle tcp {data[9:12].decode() or 'eof'}"] += 1
            w.close()

    # -- 5. slowloris --
    async def slowloris(self, src: str) -> None:
        req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: slowloris\r\nAccept: */*\r\n\r\n"
        while self.running():
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(src, 0))
            except OSError:
                self.got["slowloris connect refused"] += 1
                await self.nap(1.0)
                continue
            answer = asyncio.create_task(r.read(200))
            for b in req:
                if answer.done() or not self.running():
                    break
                with contextlib.suppress(OSError):
                    w.write(bytes([b]))
                await self.nap(1.0)
            with contextlib.suppress(Exception):
                data = await asyncio.wait_for(answer, 5)
                self.got[f"slowloris {data[9:12].decode() or 'eof'}"] += 1
            answer.cancel()
            w.close()


async def healthy(conn: Conn, intervals: list[float], seconds: float) -> dict[str, Any]:
    """The healthy session says a line every 4 s: its frame rate, intervals, and each reaction's delay."""
    says: list[float] = []
    delays: list[int | None] = []
    intervals.clear()
    t_meas = time.monotonic()
    n0 = len(conn.frames)
    while time.monotonic() - t_meas < seconds - 4:
        t = time.monotonic()
        await conn.live().say(LINES[len(says) % len(LINES)])
        says.append(t)
        await asyncio.sleep(4.0)
        # the server's latency event for this line: text in to its first reacting frame (ttff)
        lat = [e["payload"] for _, e in conn.of_type("latency", after=t) if e["payload"].get("ttff_ms") is not None]
        delays.append(round(lat[0]["ttff_ms"]) if lat else None)
    wall = time.monotonic() - t_meas
    got = [d for d in delays if d is not None]
    frames = len(conn.frames) - n0
    await conn.close()
    return {
        "seconds": round(wall, 1),
        "fps": round(frames / wall, 2),
        "interval_ms": interval_stats(intervals),
        "reactions": f"{len(got)}/{len(says)}",
        "reaction_ttff_ms": {"p50": pct(got, 50), "max": max(got, default=None)},
        "reacting_frames": sum(1 for f in conn.frames[n0:] if f[2] in REACTION_SOURCES),
        "closed": conn.close_reason or None,
    }


KINDS = ("json", "avatars", "flood", "silent", "idle", "slowloris")


def chosen_attacks(spec: str) -> list[str]:
    return list(KINDS) if spec == "all" else [k for k in spec.split(",") if k in KINDS]


async def attack(base: str, args: argparse.Namespace) -> dict[str, int]:
    """The attackers (in their own process: the healthy client's loop must not wait behind them), for
    args.seconds; what they got back."""
    a = Attack(base)
    kinds = {
        "json": lambda: [a.json_bombs("127.0.3.1")],
        "avatars": lambda: [a.avatar_churn("127.0.3.2")],
        "flood": lambda: [a.input_flood("127.0.3.3")],
        "silent": lambda: [a.silent_socket(f"127.0.4.{1 + i // 16}") for i in range(args.silent)],
        "idle": lambda: [a.idle_tcp(f"127.0.1.{1 + i // 30}") for i in range(args.idle_tcp)],
        "slowloris": lambda: [a.slowloris(f"127.0.2.{1 + i // 25}") for i in range(args.slowloris)],
    }
    tasks = [asyncio.create_task(c) for k in chosen_attacks(args.attacks) for c in kinds[k]()]
    await asyncio.sleep(args.seconds)
    a.stop.set()
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    for t in tasks:
        t.cancel()
    return dict(sorted(a.got.items()))


async def run(base: str, args: argparse.Namespace) -> dict[str, Any]:
    before = await asyncio.to_thread(snapshot, base)
    chosen = chosen_attacks(args.attacks)
    # the healthy session is opened first: a slot an attacker may not take from it (new sessions while the
    # attackers hold every slot are refused with 503 busy, as for anyone: see the attackers' tallies)
    intervals: list[float] = []
    conn = await Conn.open(base, "pip", intervals)
    await conn.first_frames()
    attackers = None
    if chosen:
        attackers = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tools.bench_attack",
            "--attackers-only",
            "--url",
            base,
            "--attacks",
            ",".join(chosen),
            "--seconds",
            str(args.seconds + 2),
            "--idle-tcp",
            str(args.idle_tcp),
            "--slowloris",
            str(args.slowloris),
            "--silent",
            str(args.silent),
            stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(2.0)  # the attack is on before the measurement starts
    health = await healthy(conn, intervals, args.seconds)
    during = await asyncio.to_thread(snapshot, base)
    got = {}
    if attackers is not None:
        out, _ = await attackers.communicate()
        got = json.loads(out)
    await asyncio.sleep(args.settle)
    after = await asyncio.to_thread(snapshot, base)
    return {
        "attacks": chosen,
        "healthy": health,
        "attackers_got": got,
        "before": before,
        "during": during,
        "after": after,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the healthy session is measured")
    ap.add_argument("--url", default="", help="attach to this server instead of starting one")
    ap.add_argument(
        "--server-args",
        default="--admission 0 --ws-idle-s 10",
        help="for the server it starts (admission off: the attackers' sessions reach the per-session bounds; "
        "a 10 s idle limit so silent sockets are closed within the run)",
    )
    ap.add_argument("--ready-timeout", type=float, default=180.0)
    ap.add_argument("--idle-tcp", type=int, default=500, help="idle TCP connections held open")
    ap.add_argument("--slowloris", type=int, default=50, help="clients sending headers a byte a second")
    ap.add_argument("--silent", type=int, default=20, help="WebSockets that never answer a ping")
    ap.add_argument(
        "--attacks",
        default="all",
        help="comma list of json, avatars, flood, silent, idle, slowloris; all; or none (the healthy session alone)",
    )
    ap.add_argument("--settle", type=float, default=15.0, help="seconds after the attack before 'after'")
    ap.add_argument("--attackers-only", action="store_true", help=argparse.SUPPRESS)  # the attackers' process
    args = ap.parse_args(argv)
    if args.attackers_only:
        print(json.dumps(asyncio.run(attack(args.url, args))))
        return 0
    out = run_on_server(args, lambda base: run(base, args))
    report = {**out.result, "server_args": args.server_args if out.started else None, "host_cpu": out.host_cpu}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
