"""`avatarcast serve` as a user starts it: a real process, TLS, and clear errors for bad settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

IGNORE_MOTION = shutil.ignore_patterns("motion")  # the shipped tiny folder holds motion's folder too


def serve(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "avatarcast.realtime.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_serves_https_with_a_certificate(tmp_path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    p = serve("--port", str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or p.poll() is not None:
                    raise AssertionError(p.stdout.read() if p.poll() is not None else "no answer in 60 s") from None
                time.sleep(0.3)
        assert r.status_code == 200 and r.json() == {"ok": True}
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)  # plain HTTP is not served
    finally:
        p.terminate()
        p.wait(30)


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--image-format", "gif"], {}, "image_format must be jpeg or webp"),
        (["--port", "70000"], {}, "port must be 0..65535, got 70000 (port from flag --port)"),
        ([], {"AVATARCAST_MAX_SESSIONS": "many"}, "max_sessions = 'many' (env AVATARCAST_MAX_SESSIONS): input should"),
        (["--auth-secret", "short"], {}, "auth_secret must be at least 32 characters"),
        (["--capacity-headroom", "1.5"], {}, "capacity_headroom must be in (0, 1]"),
        ([], {"AVATARCAST_RATE_HTTP_PER_S": "-1"}, "rate_http_per_s must be >= 0"),
        (["--ice-server", "turn:turn.example.org"], {}, "has no credentials: give --turn-secret"),
    ],
)
def test_bad_settings_fail_at_once_with_a_clear_message(args, env, message) -> None:
    p = serve(*args, env=env)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 2 and message in out, out


def _wait_ready(p, port: int, timeout_s: float = 120.0) -> None:
    """Until the server process answers /readyz 200 (fails if it exits or takes too long)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and p.poll() is None, "server did not become ready"
        time.sleep(0.3)


@pytest.mark.slow
def test_json_logs_carry_the_session_id() -> None:
    port = free_port()
    p = serve("--port", str(port), "--log-format", "json", "--max-sessions", "2")
    try:
        _wait_ready(p, port)
        sid = httpx.post(f"http://127.0.0.1:{port}/v1/sessions", json={}).json()["id"]
        assert httpx.delete(f"http://127.0.0.1:{port}/v1/sessions/{sid}").status_code == 204
    finally:
        p.terminate()
        out, _ = p.communicate(timeout=30)
    import json

    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    mine = [r for r in records if r.get("session") == sid]
    assert any("created" in r["msg"] for r in mine) and any("closed" in r["msg"] for r in mine)


@pytest.mark.parametrize("damage", ["missing", "corrupt", "tiny_folder_for_motion"])
def test_missing_or_corrupt_weights_fail_at_start_up_with_a_clear_message(tmp_path, damage) -> None:
    """tiny's folder checks (--engine tiny), and a tiny folder given to the CPU's default engine (motion) alone."""
    weights = tmp_path / "weights"
    if damage != "missing":
        shutil.copytree(Path(__file__).resolve().parents[2] / "engines/tiny/weights", weights, ignore=IGNORE_MOTION)
    if damage == "corrupt":
        onnx = weights / "denoiser.onnx"
        onnx.write_bytes(onnx.read_bytes()[:1000])  # truncated
    engine = [] if damage == "tiny_folder_for_motion" else ["--engine", "tiny"]
    p = serve("--port", str(free_port()), "--weights", str(weights), *engine)
    out, _ = p.communicate(timeout=90)
    assert p.returncode == 1, out
    expected = {
        "missing": "no manifest.json",
        "corrupt": "denoiser.onnx does not match the sha256",
        "tiny_folder_for_motion": "it holds tiny engine weights: serve them with --engine tiny",
    }[damage]
    assert "avatarcast: error: start-up failed" in out and expected in out, out[-2000:]


@pytest.mark.slow
def test_shutdown_drains_sessions_with_a_closing_event_and_1001() -> None:
    import asyncio
    import json
    import signal

    import websockets

    port = free_port()
    p = serve("--port", str(port))
    try:
        _wait_ready(p, port)

        async def go() -> tuple[list[str], int | None, str | None]:
            async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws?avatar=pip") as ws:
                await ws.recv()
                p.send_signal(signal.SIGTERM)
                events = []
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        m = await asyncio.wait_for(ws.recv(), 10)
                        if isinstance(m, str):
                            events.append(json.loads(m)["type"])
                return events, ws.close_code, ws.close_reason

        events, code, reason = asyncio.run(go())
        assert "closing" in events and code == 1001 and "shutting down" in reason, (events, code, reason)
        assert p.wait(30) in (0, -15)  # uvicorn re-raises the signal once it has shut down cleanly
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
