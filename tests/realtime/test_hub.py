"""The Hub (realtime/hub.py) directly: lifecycle, the session registry, refusals by code, and drain."""

from __future__ import annotations

from typing import Any

import pytest

from avatarcast.engines.errors import AvatarcastError, ErrorCode
from avatarcast.realtime.admission import NEW_SESSION_DUTY
from avatarcast.realtime.hub import Hub, HubError
from avatarcast.realtime.settings import Settings
from tests.conftest import app_in_process
from tests.realtime.test_runner import RecordingSink, wait_for


@pytest.fixture(scope="module")
def app():
    with app_in_process(admission=0, ladder=0) as pair:  # its own Hub: the last test drains it
        yield pair


def refused(client: Any, fn: Any) -> AvatarcastError:
    with pytest.raises(AvatarcastError) as info:
        client.portal.call(fn)
    return info.value


def test_a_hub_before_start_reports_and_refuses() -> None:
    hub = Hub(Settings())
    st = hub.status()
    assert not st["ready"] and st["engine"]["steps"] is None and st["scheduler"] is None and st["load"] is None
    assert hub.emotions == ()
    with pytest.raises(HubError) as info:
        hub.create_session("pip")
    assert (info.value.code, info.value.status, info.value.close_code) == (ErrorCode.STARTING, 503, 1013)
    hub.pools.shutdown()


def test_sessions_are_registered_found_and_closed(app) -> None:
    client, hub = app
    runner = client.portal.call(lambda: hub.create_session("luna", image_format="webp", quality=70))
    assert hub.get_session(runner.id) is runner and runner.info()["image_format"] == "webp"
    assert client.portal.call(hub.close_session, runner.id) is True
    assert runner.closed.is_set() and client.portal.call(hub.close_session, runner.id) is False
    err = refused(client, lambda: hub.get_session(runner.id))
    assert (err.code, err.status) == (ErrorCode.NO_SESSION, 404)


def test_bad_session_requests_are_refused_by_code(app) -> None:
    client, hub = app
    cases = {
        ErrorCode.BAD_IMAGE_FORMAT: {"image_format": "gif"},
        ErrorCode.BAD_QUALITY: {"quality": 0},
        ErrorCode.BAD_LANGUAGE: {"language": "xx"},
    }  # no such Whisper language
    for code, kw in cases.items():
        err = refused(client, lambda kw=kw: hub.create_session("pip", **kw))
        assert (err.code, err.status, err.close_code, err.retry_after) == (code, 400, 1008, None)
    assert refused(client, lambda: hub.create_session("nobody")).code == ErrorCode.BAD_AVATAR
    assert hub.sessions == {}


def test_the_session_cap_refuses_with_busy(app) -> None:
    client, hub = app
    saved, hub.settings.max_sessions = hub.settings.max_sessions, 1
    before = hub.stats["sessions_rejected_max_sessions"]
    try:
        first = client.portal.call(lambda: hub.create_session("pip"))
        err = refused(client, lambda: hub.create_session("pip"))
        assert (err.code, err.status, err.retry_after) == (ErrorCode.BUSY, 503, "5")
        assert hub.stats["sessions_rejected_max_sessions"] == before + 1
        client.portal.call(hub.close_session, first.id)
    finally:
        hub.settings.max_sessions = saved


def test_admission_counts_a_young_session_only_beyond_its_measured_reacting(app) -> None:
    """The Hub names its young sessions to admission control by the ids their chunk jobs carry, so a session
    that has reacted counts less than the half reaction assumed of an unmeasured one."""
    client, hub = app
    runner = client.portal.call(lambda: hub.create_session("pip"))
    try:
        fresh = client.portal.call(hub.admission)
        assert fresh.added is not None and fresh.young_duty == pytest.approx(NEW_SESSION_DUTY * fresh.added)
        client.portal.call(runner.attach, RecordingSink())
        client.portal.call(runner.set_emotion, "happy", 0.9)
        window, sch = hub.settings.capacity_window_s, hub.services.scheduler
        wait_for(lambda: sch.busy_by_session(window).get(runner.id, 0.0) > 0.0, 15, "the session's engine time")
        v = client.portal.call(hub.admission)
        assert v.added is not None and v.young_duty < NEW_SESSION_DUTY * v.added, v
        assert hub.status()["load"]["young_duty"] <= round(NEW_SESSION_DUTY * v.added, 3)
    finally:
        client.portal.call(hub.close_session, runner.id)


def test_admission_lets_out_a_closed_sessions_engine_time(app) -> None:
    """The Hub names the sessions it closed to admission control, by the ids their chunk jobs carry: a session
    that reacted and closed leaves its share of busy in the engine's figure but out of the counted load, while
    the calibration chunk (no session's) stays in it."""
    client, hub = app
    runner = client.portal.call(lambda: hub.create_session("pip"))
    window, sch = hub.settings.capacity_window_s, hub.services.scheduler
    try:
        client.portal.call(runner.attach, RecordingSink())
        client.portal.call(runner.set_emotion, "happy", 0.9)
        wait_for(lambda: sch.busy_by_session(window).get(runner.id, 0.0) > 0.0, 15, "the session's engine time")
        # open: all of its reacting counts (what is let out is the earlier tests' closed sessions')
        before = client.portal.call(hub.admission).gone_busy
    finally:
        client.portal.call(hub.close_session, runner.id)
    v = client.portal.call(hub.admission)
    # priced as admission control prices it (--motion-draw adaptive, the default: at the copy draw's cost)
    scale = hub.cheaper_ratio if hub.settings.admits_at_cheaper_decode and hub.cheaper_ratio is not None else 1.0
    share = sch.busy_by_session(window, full_scale=scale)[runner.id]
    assert share > 0.0 and v.gone_busy == pytest.approx(before + share, abs=0.005), (v, before, share)
    assert v.counted_busy == pytest.approx(v.busy - v.gone_busy) and v.counted_busy < v.busy
    load = hub.status()["load"]
    assert load["counted_busy"] < load["engine_busy"], load


def test_drain_tells_every_session_and_refuses_new_ones(app) -> None:
    client, hub = app
    runner = client.portal.call(lambda: hub.create_session("pip"))
    sink = RecordingSink()
    client.portal.call(runner.attach, sink)
    wait_for(lambda: sink.frames, 10, "a frame")
    client.portal.call(hub.drain, "maintenance")
    assert sink.of("closing") == [{"reason": "maintenance"}] and runner.close_code == 1001
    assert runner.closed.is_set() and hub.sessions == {}
    assert refused(client, lambda: hub.create_session("pip")).code == ErrorCode.SHUTTING_DOWN
