"""The frame path's compositing (realtime/video.composite_image): the same pixels as composite(), which stays the
definition (video files composite whole clips with it)."""

from __future__ import annotations

import numpy as np

from avatarcast.engines.avatar_world.reference import reference_frame
from avatarcast.realtime.avatars import resolve_avatar
from avatarcast.realtime.video import composite, composite_image


def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(19)
    noise = rng.integers(0, 256, (360, 640, 4), dtype=np.uint8)  # every alpha value, every colour
    return [reference_frame(resolve_avatar(name)[1]) for name in ("pip", "random-5")] + [noise]


def test_composite_image_has_composites_pixels_exactly() -> None:
    for rgba in frames():
        for bg in ((245, 240, 230), (0, 0, 0), (255, 255, 255), (1, 128, 254)):
            img = composite_image(rgba, bg)
            assert img.mode == "RGB" and img.size == (640, 360)
            assert np.array_equal(np.asarray(img), composite(rgba, bg))


def test_a_webrtc_frame_is_what_it_was_before_composite_image() -> None:
    import av

    from avatarcast.realtime.webrtc import _to_video_frame

    for rgba in frames():
        before = av.VideoFrame.from_ndarray(composite(rgba), format="rgb24").reformat(format="yuv420p")
        now = _to_video_frame(rgba, 7)
        assert now.pts == 7 and now.format.name == "yuv420p"
        for a, b in zip(before.planes, now.planes):
            assert bytes(a) == bytes(b)
