"""The README's picture of the demo page: `avatarcast serve` as a user starts it (the default engine), the page in
headless Chromium over WebRTC, a sentence typed, and the page shot mid-reaction at 1280x860.

    python -m tools.demo_screenshot --out docs/demo.png [--text "I am so happy right now!"] [--server-args "..."]

Needs Chromium (`apt-get install chromium`) and Playwright (the dev extra), as the browser tests do.
"""

from __future__ import annotations

import argparse
import os
import shlex
import tempfile
import time
from pathlib import Path

from avatarcast.realtime.bench.server import ServerProcess

CHROMIUM = os.environ.get("AVATARCAST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    # a microphone the page can open (Chromium's fake device, silent until someone holds to talk), as a user has
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/demo.png"))
    ap.add_argument("--text", default="I am so happy right now!")
    ap.add_argument("--server-args", default="", help="extra `avatarcast serve` flags")
    ap.add_argument("--after-s", type=float, default=2.5, help="seconds between sending the text and the shot")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    cache = tempfile.mkdtemp(prefix="avatarcast-demo-")  # a fresh machine's first start: no cache yet
    server = ServerProcess(["--cache-dir", cache, *shlex.split(args.server_args)], ready_timeout=120.0)
    try:
        server.start()  # inside: a server that never got ready is stopped too
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pg = browser.new_page(viewport={"width": 1280, "height": 860})
            pg.goto(server.url + "/")
            pg.wait_for_function(
                "() => { const v = document.getElementById('video');"
                " return v.videoWidth === 640 && v.currentTime > 1; }",
                timeout=60_000,
            )
            pg.fill("#say-text", args.text)
            pg.click("#say-send")
            pg.wait_for_function(
                "() => document.getElementById('state').textContent.includes('reacting')", timeout=30_000
            )
            time.sleep(args.after_s)  # into the reaction, past its cached first chunk
            args.out.parent.mkdir(parents=True, exist_ok=True)
            pg.screenshot(path=str(args.out))
            browser.close()
    finally:
        server.stop()
    print(f"{args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
