"""Send a voice clip, print what the server decides, save the frames as RGBA PNGs (the avatarcast Python client)."""

import asyncio
import contextlib
import sys

from PIL import Image

from avatarcast.client import Client
from avatarcast.realtime.events import Emotion, TranscriptFinal


async def main(url: str, clip_path: str, seconds: float = 6.0) -> None:
    async with Client(url) as client:  # e.g. http://127.0.0.1:8080; token=... for a server with --auth-secret
        session = await client.open(avatar="pip")
        await session.send_clip(clip_path)  # any wav/mp3/ogg/webm/m4a file; or say(), emotion(), send_pcm()
        saved = 0

        async def frames() -> None:
            nonlocal saved
            async for frame in session.frames():  # frame.rgba: (360, 640, 4) uint8
                Image.fromarray(frame.rgba).save(f"frame_{frame.index:05d}.png")
                saved += 1

        async def events() -> None:
            async for ev in session.events():  # typed events: Hello, TranscriptFinal, Emotion, Latency, ...
                if isinstance(ev, TranscriptFinal):
                    print("heard", repr(ev.text))
                elif isinstance(ev, Emotion):
                    print("emotion", ev.label, ev.intensity, "applied" if ev.applied else ev.reason)
                else:
                    print(ev.TYPE)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(frames(), events()), seconds)
        print(f"{saved} frames")


asyncio.run(main(sys.argv[1], sys.argv[2]))
