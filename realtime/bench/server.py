"""The server a benchmark measures: attached to (--url) or started as `avatarcast serve` on a free loopback
port, waited for (/readyz), read (/v1/status) and stopped; and the machine's CPU use while the benchmark runs.
`bench latency` and `bench load` share it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatarcast.engines.backends import cpu_name

log = logging.getLogger("avatarcast.bench.server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float) -> tuple[int, str]:
    """(status, body) of a GET; OSError when nothing answers. The standard library's client: the benchmarks
    run after the plain install, which has no HTTP client package (httpx is a dev dependency)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:  # 4xx/5xx: still an answer
        return exc.code, exc.read().decode("utf-8", "replace")


class ServerProcess:
    """`python -m avatarcast.realtime.cli serve --port P ...` as a child; log in a temporary file."""

    def __init__(self, extra_args: list[str], ready_timeout: float = 180.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = extra_args
        self.ready_timeout = ready_timeout
        self.log = tempfile.NamedTemporaryFile(prefix="avatarcast-bench-server-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "avatarcast.realtime.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if "--log-level" not in self.extra:
            cmd += ["--log-level", "warning"]
        cmd += self.extra
        log.info("starting server: %s (log %s)", " ".join(cmd), self.log.name)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}:\n{self.tail()}")
            try:
                status, text = http_get(self.url + "/readyz", timeout=2.0)
                if status == 200:
                    break
                if status == 503 and "start_failed" in text:
                    raise RuntimeError(f"the server failed to start: {text}\n{self.tail()}")
            except OSError:
                pass
            if time.monotonic() - t0 > self.ready_timeout:
                raise RuntimeError(f"the server was not ready after {self.ready_timeout:g} s:\n{self.tail()}")
            time.sleep(0.25)
        self.ready_s = round(time.monotonic() - t0, 2)
        log.info("server ready at %s after %.1f s", self.url, self.ready_s)

    def tail(self, n: int = 30) -> str:
        try:
            self.log.flush()
            lines = Path(self.log.name).read_text(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    def stop(self) -> dict | None:
        """Stop the server as an operator's Ctrl-C does (SIGINT: it drains its sessions), and say how it went:
        {"code": its exit status, "clean": exited by itself with 0 or 130 and no traceback in its log,
        "tracebacks": how many}. A benchmark whose server crashed or logged a traceback says so in its report."""
        p = self.proc
        if p is None:
            self.log.close()
            return None
        forced = False
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                forced = True
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.log.close()
        try:
            tracebacks = Path(self.log.name).read_text(errors="replace").count("Traceback (most recent call last)")
        except OSError:
            tracebacks = -1
        clean = not forced and p.returncode in (0, 130) and tracebacks == 0
        if not clean:
            log.warning("the server exited with %s, %d traceback(s) in %s", p.returncode, tracebacks, self.log.name)
        return {"code": p.returncode, "clean": clean, "tracebacks": tracebacks, "log": self.log.name}


def server_status(base_url: str) -> dict | None:
    try:
        status, text = http_get(base_url.rstrip("/") + "/v1/status", timeout=5.0)
        return json.loads(text) if status == 200 else None
    except Exception:
        return None


PROCESS_METRICS = {"process_resident_memory_bytes": "rss_bytes", "process_open_fds": "open_fds"}


def server_process(base_url: str) -> dict | None:
    """The server process's RSS and open fds, from its /metrics (prometheus_client's process collector)."""
    try:
        status, text = http_get(base_url.rstrip("/") + "/metrics", timeout=5.0)
    except Exception:
        return None
    if status != 200:
        return None
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in PROCESS_METRICS:
            found[PROCESS_METRICS[name]] = float(value)
    if len(found) < len(PROCESS_METRICS):
        return None
    return {"rss_mb": round(found["rss_bytes"] / 2**20, 1), "open_fds": int(found["open_fds"])}


def wait_ready(base_url: str, timeout: float) -> None:
    t0 = time.monotonic()
    while True:
        try:
            if http_get(base_url.rstrip("/") + "/readyz", timeout=2.0)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{base_url}/readyz did not answer 200 within {timeout:g} s")
        time.sleep(0.5)


class CpuMonitor:
    """Machine-wide CPU use during the run (from /proc), split into bench client, server and others.

    The machine may be shared: other processes' load makes the latency numbers noisy, so it is
    reported next to them (in cores: 1.0 = one CPU fully busy on average over the run)."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid

    @staticmethod
    def _jiffies() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            idle = v[3] + v[4]
            return sum(v) - idle, sum(v)
        except (OSError, ValueError, IndexError):
            return None

    def _server_ticks(self) -> int | None:
        if self.server_pid is None:
            return None
        try:
            with open(f"/proc/{self.server_pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            return int(parts[11]) + int(parts[12])  # utime + stime (fields 14, 15)
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> CpuMonitor:
        self.j0, self.t0, self.w0, self.s0 = self._jiffies(), os.times(), time.monotonic(), self._server_ticks()
        self.load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
        self.result: dict = {}
        return self

    def __exit__(self, *exc: Any) -> None:
        j1, t1, wall, s1 = self._jiffies(), os.times(), time.monotonic() - self.w0, self._server_ticks()
        ncpu = os.cpu_count() or 1
        r: dict[str, Any] = {"wall_s": round(wall, 1)}
        if self.load0 is not None:
            r["loadavg_1m_start"] = round(self.load0[0], 2)
            r["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
        bench = ((t1.user - self.t0.user) + (t1.system - self.t0.system)) / max(wall, 1e-9)
        r["bench_cores"] = round(bench, 2)
        server = None
        if self.s0 is not None and s1 is not None:
            server = (s1 - self.s0) / os.sysconf("SC_CLK_TCK") / max(wall, 1e-9)
            r["server_cores"] = round(server, 2)
        if self.j0 is not None and j1 is not None and j1[1] > self.j0[1]:
            busy = (j1[0] - self.j0[0]) / (j1[1] - self.j0[1]) * ncpu
            r["busy_cores"] = round(busy, 2)
            if server is not None:
                r["other_cores"] = round(max(0.0, busy - bench - server), 2)
        self.result = r


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        cpu = cpu_name() or cpu
    except Exception:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": affinity,
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


@dataclass
class ServerRun:
    """What one benchmark run against a server gives its report."""

    base: str
    started: bool  # we started the server (no --url)
    ready_s: float | None
    result: Any  # what the work returned
    wall_s: float
    host_cpu: Any  # CpuMonitor.result
    status: Any  # the server's /v1/status at the end
    server_exit: dict | None = None  # a server we started: how it stopped (ServerProcess.stop)


def run_on_server(args: argparse.Namespace, work) -> ServerRun:
    """Attach to --url's server or start `avatarcast serve`, run `await work(base)` under the CPU
    monitor, read the server's status, and stop the server we started. RuntimeError says what failed."""
    server: ServerProcess | None = None
    try:
        if args.url:
            base = args.url.rstrip("/")
            wait_ready(base, args.ready_timeout)
        else:
            server = ServerProcess(shlex.split(args.server_args), args.ready_timeout)
            server.start()
            base = server.url
        t0 = time.monotonic()
        with CpuMonitor(server.proc.pid if server is not None and server.proc is not None else None) as cpu:
            result = asyncio.run(work(base))
        wall = time.monotonic() - t0
        status = server_status(base)
        started, ready_s, exit_ = server is not None, None if server is None else server.ready_s, None
        if server is not None:
            exit_, server = server.stop(), None
        return ServerRun(base, started, ready_s, result, wall, cpu.result, status, exit_)
    finally:
        if server is not None:
            server.stop()
