"""`python -m tools.demo_screenshot` (the README's picture): a real server, the page in headless Chromium over WebRTC,
a typed sentence, the page shot mid-reaction."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("AVATARCAST_CHROMIUM", "/usr/bin/chromium")
BG = np.array([245, 240, 230])

pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"), pytest.mark.slow]


def test_the_demo_page_is_shot_reacting(tmp_path):
    from tools import demo_screenshot

    out = tmp_path / "demo.png"
    assert demo_screenshot.main(["--out", str(out), "--text", "I am so happy right now!", "--after-s", "1"]) == 0
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape == (860, 1280, 3)
    video = img[100:490, 95:810]  # the video's box on the page at this viewport
    off_bg = np.abs(video - BG).sum(axis=2) > 60
    assert 0.03 < off_bg.mean() < 0.6, off_bg.mean()  # an avatar in the picture, not an empty or broken frame
