"""The WebSocket handler (realtime/ws.py) in process (Starlette's TestClient, no sockets): the hello, commands
through the shared handler, frames, and the close codes of the error table."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import anyio
import pytest
from starlette.websockets import WebSocket, WebSocketDisconnect

from avatarcast.realtime.protocol import unpack_frame
from avatarcast.realtime.ws import serve_socket


def take(ws: Any, until: Any, limit: int = 200) -> tuple[list[dict], list[Any]]:
    """Receive until `until(events, frames)` holds: (events, frame headers)."""
    events: list[dict] = []
    frames: list[Any] = []
    for _ in range(limit):
        m = ws.receive()
        if m["type"] == "websocket.close":
            raise WebSocketDisconnect(m.get("code", 1000), m.get("reason"))
        if m.get("text") is not None:
            events.append(json.loads(m["text"]))
        elif m.get("bytes") is not None:
            frames.append(unpack_frame(m["bytes"])[0])
        if until(events, frames):
            return events, frames
    raise AssertionError(f"not met in {limit} messages: {[e['type'] for e in events]}, {len(frames)} frames")


def test_a_socket_session_says_hello_answers_commands_and_streams(inproc) -> None:
    client, hub = inproc
    with client.websocket_connect("/v1/ws?avatar=tok&image_format=webp") as ws:
        events, _ = take(ws, lambda e, f: e)
        assert events[0]["type"] == "hello" and events[0]["payload"]["image_format"] == "webp"
        sid = events[0]["payload"]["session"]
        assert sid in hub.sessions
        ws.send_text("not json")
        ws.send_text(json.dumps({"type": "ping"}))
        events, frames = take(ws, lambda e, f: any(x["type"] == "pong" for x in e) and f)
        assert [e["payload"]["code"] for e in events if e["type"] == "error"] == ["bad_json"]
        pong = next(e for e in events if e["type"] == "pong")["payload"]["info"]
        assert pong["id"] == sid and pong["state"] == "idle"
        assert frames[0].image_format == "webp" and frames[0].source == "idle"
        ws.send_text(json.dumps({"type": "emotion", "label": "surprised", "intensity": 0.9}))
        _, frames = take(ws, lambda e, f: any(h.emotion == "surprised" for h in f))
    # The socket owned its session: the handler closes it once it sees the disconnect, on the server's loop,
    # which may run a moment after the client's context exits (a loaded CI machine took longer than the exit).
    deadline = time.monotonic() + 10.0
    while sid in hub.sessions and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sid not in hub.sessions


def test_a_cancelled_handler_still_closes_its_session(inproc) -> None:
    """A server may cancel the handler when its client goes (Starlette's TestClient does, racing the disconnect):
    the session it owns must close anyway, and its socket count must come back."""
    client, hub = inproc

    async def run() -> tuple[bool, int]:
        sockets = hub.open_sockets
        runner = await hub.open_session("tok")
        sent: list[dict] = []
        connected = False
        never = asyncio.Event()

        async def receive() -> dict:
            nonlocal connected
            if not connected:
                connected = True
                return {"type": "websocket.connect"}
            await never.wait()  # the client says nothing more: only the cancellation ends the handler
            return {"type": "websocket.disconnect", "code": 1000}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": "/v1/ws", "query_string": b"", "headers": [], "client": ("127.0.0.1", 1)}
        ws = WebSocket(scope, receive, send)
        await ws.accept()
        scope_of_handler = anyio.CancelScope()  # as the TestClient's: its cancellation hits every later await too

        async def handle() -> None:
            with scope_of_handler:
                await serve_socket(ws, hub, runner, owns_session=True)

        handler = asyncio.create_task(handle())
        while not any(m.get("bytes") for m in sent):  # streaming: frames are going out
            await asyncio.sleep(0.01)
        scope_of_handler.cancel()
        await handler
        deadline = time.monotonic() + 5.0
        while runner.id in hub.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return runner.id in hub.sessions, hub.open_sockets - sockets

    still_open, sockets_left = client.portal.call(run)
    assert not still_open and sockets_left == 0


def test_a_message_over_the_limit_closes_with_1009(inproc) -> None:
    client, hub = inproc
    saved, hub.settings.max_message_bytes = hub.settings.max_message_bytes, 1000
    try:
        with client.websocket_connect("/v1/ws") as ws:
            take(ws, lambda e, f: e)
            ws.send_bytes(b"PCM1" + bytes(2000))
            with pytest.raises(WebSocketDisconnect) as info:
                take(ws, lambda e, f: False, limit=1000)
            assert info.value.code == 1009
    finally:
        hub.settings.max_message_bytes = saved


def test_a_socket_for_an_unknown_session_closes_with_1008(inproc) -> None:
    client, _ = inproc
    with client.websocket_connect("/v1/sessions/nope/ws") as ws:
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_text()
    assert info.value.code == 1008 and "no session" in info.value.reason
