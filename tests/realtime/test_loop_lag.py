"""The event loop's lag window (realtime/loop_lag.py), with plain calls; and the served figures in /metrics."""

from __future__ import annotations

from typing import Any

import httpx

from avatarcast.realtime.loop_lag import LagWindow


def test_the_lag_window_keeps_the_last_window_and_gives_its_p99_and_max() -> None:
    w = LagWindow(window_s=60.0)
    assert w.max(0.0) == 0.0 and w.quantile(0.0, 0.99) == 0.0
    for i in range(100):
        w.observe(i * 0.01, 0.001)
    w.observe(1.0, 2.5)  # one stall
    w.observe(1.01, -0.0001)  # the clock's jitter: not a negative lag
    assert w.max(1.01) == 2.5 and w.quantile(1.01, 0.99) == 0.001
    assert w.quantile(1.01, 1.0) == 2.5
    assert w.max(61.5) == 0.0 and w.quantile(61.5, 0.99) == 0.0  # a minute later the stall is out of the window
    w.observe(200.0, 0.02)
    assert w.max(200.0) == 0.02 and len(w._seen) == 1  # older samples dropped as new ones come


def test_the_served_metrics_have_the_loop_lag(base: str, server_hub: Any) -> None:
    text = httpx.get(base + "/metrics", timeout=10).text
    assert 'avatarcast_event_loop_lag_seconds{stat="p99"}' in text
    assert 'avatarcast_event_loop_lag_seconds{stat="max"}' in text
