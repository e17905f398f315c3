"""Signed tokens on a real server started with an auth secret: HTTP, WebSocket, WHEP, and the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest
import websockets

from avatarcast.realtime.auth import mint
from tests.conftest import NOT_ABOUT_THE_DRAW, running_server

SECRET = "test-secret-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def server():
    with running_server(auth_secret=SECRET, **NOT_ABOUT_THE_DRAW) as (url, hub):
        yield url


def test_http_needs_a_valid_token(server: str) -> None:
    good = mint(SECRET, "tester", 60)
    with httpx.Client(base_url=server) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200 and c.get("/").status_code == 200  # open
        r = c.get("/v1/status")
        assert (
            r.status_code == 401 and r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        )
        assert "missing token" in r.json()["message"]
        assert (
            "invalid token"
            in c.get(
                "/v1/status",
                headers={"Authorization": "Bearer " + mint("another-secret-of-the-same-length-xyz", "x", 60)},
            ).json()["message"]
        )
        assert (
            c.get("/v1/status", headers={"Authorization": "Bearer " + mint(SECRET, "x", -10)}).json()["message"]
            == "token expired"
        )
        assert c.get("/v1/status", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        assert c.get(f"/v1/status?token={good}").status_code == 200
        assert c.post("/v1/whep", content="v=0\r\n", headers={"content-type": "application/sdp"}).status_code == 401


def test_websocket_needs_a_token_and_works_with_one(server: str) -> None:
    ws_base = server.replace("http://", "ws://")

    async def go() -> dict:
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with websockets.connect(ws_base + "/v1/ws"):
                pass
        async with websockets.connect(ws_base + "/v1/ws?token=" + mint(SECRET, "ws", 60)) as ws:
            while True:
                m = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(m, str):
                    return json.loads(m)

    assert asyncio.run(go())["type"] == "hello"


def test_the_python_client_sends_its_token(server: str) -> None:
    from avatarcast.client import Client, SessionRefused

    async def go() -> tuple[SessionRefused, SessionRefused, str]:
        async with Client(server) as anonymous, Client(server, token="not-a-token") as forged:
            with pytest.raises(SessionRefused) as no_token:
                await anonymous.open()
            with pytest.raises(SessionRefused) as bad_token:
                await forged.open()
        async with Client(server, token=mint(SECRET, "py", 60)) as client:
            session = await client.open()
            return no_token.value, bad_token.value, session.id

    no_token, bad_token, sid = asyncio.run(go())
    assert no_token.status == 403 and bad_token.status == 403 and sid


def test_cli_mints_a_token_the_server_accepts(server: str) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "avatarcast.realtime.cli",
            "token",
            "--secret",
            SECRET,
            "--subject",
            "app",
            "--ttl",
            "60",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    token = out.stdout.strip()
    assert httpx.get(server + "/v1/emotions", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    env = {k: v for k, v in __import__("os").environ.items() if k != "AVATARCAST_AUTH_SECRET"}
    bad = subprocess.run(
        [sys.executable, "-m", "avatarcast.realtime.cli", "token"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "no secret" in bad.stderr
