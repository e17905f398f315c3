"""Browser origins on a real server: WebSocket handshakes from foreign pages are refused, the
server's own page and non-browser clients pass, and --allowed-origins opens CORS to listed apps."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from avatarcast.realtime.origins import origin_allowed, parse_origins
from tests.conftest import NOT_ABOUT_THE_DRAW, running_server

APP = "https://app.example"


@pytest.fixture(scope="module")
def server():
    # no trusted proxy here: X-Forwarded-For must not change who the client is
    with running_server(
        allowed_origins=APP + ", http://localhost:3000/",
        admission=0,
        ladder=0,
        forwarded_allow_ips="",
        **NOT_ABOUT_THE_DRAW,
    ) as (url, hub):
        yield url, hub


async def _hello(url: str, origin: str | None) -> dict:
    async with websockets.connect(url, origin=origin) as ws:
        while True:
            m = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(m, str):
                return json.loads(m)


def test_origin_rules() -> None:
    allowed = parse_origins("https://App.example/, http://localhost:3000")
    assert allowed == ("https://app.example", "http://localhost:3000")
    assert origin_allowed(None, "h:1", ())  # not a browser page
    assert origin_allowed("http://h:1", "h:1", ())  # the server's own page
    assert not origin_allowed("http://evil.example", "h:1", ())
    assert origin_allowed("https://app.example", "h:1", allowed) and origin_allowed("http://x", "h", ("*",))


def test_websocket_origins(server: tuple) -> None:
    server, _ = server
    ws = server.replace("http://", "ws://") + "/v1/ws"
    host = server.split("://", 1)[1]
    assert asyncio.run(_hello(ws, None))["type"] == "hello"  # an app, not a browser page
    assert asyncio.run(_hello(ws, "http://" + host))["type"] == "hello"  # the demo page served here
    assert asyncio.run(_hello(ws, APP))["type"] == "hello"  # listed
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        asyncio.run(_hello(ws, "https://evil.example"))
    assert e.value.response.status_code == 403


def test_cors_for_listed_origins_only(server: tuple) -> None:
    server, _ = server
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    with httpx.Client(base_url=server) as c:
        ok = c.options("/v1/sessions", headers={"Origin": APP, **pre})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == APP
        bad = c.options("/v1/sessions", headers={"Origin": "https://evil.example", **pre})
        assert "access-control-allow-origin" not in bad.headers
        r = c.get("/v1/emotions", headers={"Origin": "http://localhost:3000"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "location" in r.headers.get("access-control-expose-headers", "").lower()
        assert (
            "access-control-allow-origin"
            not in c.get("/v1/emotions", headers={"Origin": "https://evil.example"}).headers
        )


def test_forwarded_for_is_ignored_from_an_untrusted_proxy(server: tuple) -> None:
    url, hub = server
    assert httpx.get(url + "/v1/emotions", headers={"X-Forwarded-For": "198.51.100.9"}).status_code == 200
    keys = set(hub.limits.http._buckets)
    assert "ip:127.0.0.1" in keys and "ip:198.51.100.9" not in keys, keys


def test_bad_allowed_origins_setting_is_refused() -> None:
    from avatarcast.realtime.settings import Settings

    s = Settings(allowed_origins="app.example")
    with pytest.raises(ValueError, match="allowed_origins"):
        s.validate()
