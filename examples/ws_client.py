"""Send a voice clip over WebSocket, print the events, save the frames (a 20-line avatarcast client)."""

import asyncio
import json
import struct
import sys

import websockets  # pip install websockets


async def main(url: str, clip_path: str, seconds: float = 6.0) -> None:
    async with websockets.connect(url) as ws:  # e.g. ws://127.0.0.1:8080/v1/ws?avatar=pip
        await ws.send(b"CLIP" + open(clip_path, "rb").read())  # any wav/mp3/ogg/webm/m4a file
        loop, n = asyncio.get_running_loop(), 0
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            try:
                msg = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            if isinstance(msg, str):  # JSON event
                ev = json.loads(msg)
                print(ev["type"], json.dumps(ev["payload"], ensure_ascii=False)[:100])
            else:  # 28-byte header + JPEG
                _, index, pts, sent_at, fmt, source, emotion = struct.unpack_from("<4sIddBBBx", msg)
                open(f"frame_{index:05d}.jpg", "wb").write(msg[28:])
                n += 1
        print(f"{n} frames")


asyncio.run(main(sys.argv[1], sys.argv[2]))
