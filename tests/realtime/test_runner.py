"""The session runner (realtime/runner.py) driven directly, without a transport: real engine, scheduler, avatars
and pools from an in-process app, a recording sink in place of a socket."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from avatarcast.realtime.runner import OutFrame, SessionRunner


class RecordingSink:
    """A runner sink that keeps everything it is offered (the runner calls it on the app's event loop)."""

    def __init__(self, image_format: str | None = "jpeg") -> None:
        self.image_format = image_format
        self.frames: list[OutFrame] = []
        self.events: list[dict] = []

    def offer_frame(self, frame: OutFrame) -> None:
        self.frames.append(frame)

    def offer_event(self, event_json: str) -> None:
        self.events.append(json.loads(event_json))

    def of(self, kind: str) -> list[dict]:
        return [e["payload"] for e in self.events if e["type"] == kind]


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout:g} s")


@pytest.fixture()
def session(inproc: tuple[Any, Any]):
    client, hub = inproc
    runner = client.portal.call(lambda: hub.create_session("pip"))
    sink = RecordingSink()
    client.portal.call(runner.attach, sink)
    yield client, hub, runner, sink
    client.portal.call(hub.close_session, runner.id)


def test_a_runner_streams_idle_frames_then_reacts_in_order(session) -> None:
    client, hub, runner, sink = session
    assert sink.events[0]["type"] == "hello" and sink.events[0]["payload"]["avatar"] == "pip"
    wait_for(lambda: len(sink.frames) >= 4, 10, "idle frames")
    assert {f.source for f in sink.frames} == {"idle"}
    assert all(f.encoded["jpeg"][:2] == b"\xff\xd8" for f in sink.frames)  # JPEG
    client.portal.call(runner.set_emotion, "happy", 0.8)
    wait_for(lambda: any(f.source == "sampler" for f in sink.frames), 30, "a sampled frame")
    idx = [f.index for f in sink.frames]
    assert idx == sorted(set(idx))  # one frame per index, in order
    reaction = [f for f in sink.frames if f.source in ("cache", "sampler")]
    assert reaction[0].source == "cache" and {f.emotion for f in reaction} == {"happy"}
    assert any(p["to"] == "reacting" for p in sink.of("state_changed"))
    latency = wait_for(lambda: sink.of("latency"), 10, "a latency event")[0]
    assert latency["tter_ms"] is not None and latency["first_frame_source"] == "cache"
    assert runner.info()["state"] == "reacting" and runner.frames_sent >= len(sink.frames)


def test_a_switch_mid_chunk_shows_the_new_emotion_on_the_next_frame(session) -> None:
    """A revised emotion plays from the very next frame (its cached first chunk), not from the playing chunk's
    end, and nothing the old emotion made plays after it: the real engine, latents cache and playout."""
    client, hub, runner, sink = session
    s = runner.session
    client.portal.call(runner.set_emotion, "happy", 0.8)
    wait_for(lambda: any(f.source == "sampler" for f in sink.frames), 30, "a sampled frame")  # chunks queued ahead

    def switch_mid_chunk() -> int | None:
        """On the loop, between frames: switch only when the next frame is inside a chunk (offset > 0)."""
        nxt = s.next_frame_source(s.clock.upcoming(time.monotonic()))
        if nxt.offset == 0 or nxt.emotion != "happy":
            return None
        runner.set_emotion("sad", 0.8)
        return nxt.index

    index = wait_for(lambda: client.portal.call(switch_mid_chunk), 10, "a mid-chunk moment")
    wait_for(lambda: any(f.source == "sampler" and f.emotion == "sad" for f in sink.frames), 30, "a sampled sad frame")
    after = [f for f in sink.frames if f.index >= index]  # a frame planned before the switch may still be encoding
    assert (after[0].index, after[0].emotion, after[0].source) == (index, "sad", "cache")
    assert {f.emotion for f in after} == {"sad"}, "no frame of the old emotion after the switch"
    idx = [f.index for f in sink.frames]
    assert idx == sorted(set(idx))


def test_a_failing_sink_is_detached_and_the_others_go_on(session) -> None:
    client, hub, runner, sink = session

    class Broken(RecordingSink):
        def offer_frame(self, frame: OutFrame) -> None:
            raise RuntimeError("the socket is gone")

    broken = Broken()
    client.portal.call(runner.attach, broken)
    wait_for(lambda: broken not in runner.sinks, 5, "the broken sink detached")
    n = len(sink.frames)
    wait_for(lambda: len(sink.frames) >= n + 3, 5, "more frames for the good sink")


def test_a_runner_needs_only_the_services_and_asks_its_owner_to_end_it(inproc) -> None:
    client, hub = inproc
    ended: list[str] = []

    async def on_failure(sid: str) -> None:
        ended.append(sid)
        await runner.close()

    runner = client.portal.call(lambda: SessionRunner(hub.services, "direct", "bun", on_failure=on_failure))
    sink = RecordingSink(image_format=None)  # raw RGBA, as a WebRTC track takes it
    client.portal.call(runner.attach, sink)
    assert "direct" not in hub.sessions and sink.of("hello")[0]["avatar"] == "bun"
    wait_for(lambda: len(sink.frames) >= 2, 10, "frames")
    assert sink.frames[0].encoded == {} and sink.frames[0].rgba.shape == (360, 640, 4)

    def explode(req: Any) -> Any:
        raise ZeroDivisionError("injected")

    runner.playout.show = explode  # the next frame fails inside the frame loop
    wait_for(lambda: runner.closed.is_set(), 5, "the session ended")
    assert ended == ["direct"]
    err = sink.of("error")[-1]
    assert err["code"] == "internal" and err["fatal"] is True
