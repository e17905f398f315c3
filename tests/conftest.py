"""Shared fixtures: one real avatarcast server on loopback for every test module that needs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from avatarcast.realtime.shared_state import RedisState, SharedStateError
from tests.s3_emulator import s3_bucket, s3_endpoint  # noqa: F401 (fixtures: moto's S3 emulator, one per run)


def _kept(draw: Callable[..., Any], keep: int, key: Callable[..., tuple], freeze: Callable[[Any], None]) -> Callable:
    """`draw`, a pure function of its arguments, keeping its last `keep` results by `key(*args)` and handing the same
    one out again (each still drawn once by `draw`; `freeze` marks a new one read-only where its callers only read)."""
    from collections import OrderedDict

    kept: OrderedDict[tuple, Any] = OrderedDict()
    lock = threading.Lock()

    def drawn(*args: Any) -> Any:
        k = key(*args)
        with lock:
            got = kept.get(k)
            if got is not None:
                kept.move_to_end(k)
                return got
        got = draw(*args)
        freeze(got)
        with lock:
            kept[k] = got
            while len(kept) > keep:
                kept.popitem(last=False)
        return got

    return drawn


def _keep_drawn_effect_sprites(keep: int = 16) -> None:
    """Drawing an avatar's effect sprites (engines/avatar_world/reference.py effect_sprites) is a pure function of the
    avatar and takes ~0.1 s; every motion engine a test makes prepares its avatars: test_motion_onnx,
    test_motion_cheaper and test_motion_torch_folder drew them 80 times (pip 21, luna 13). This process keeps
    the last `keep` avatars' sprites (~5 MB each) and hands the same ones out again: each avatar's
    are still drawn by the real function, and engines, trainers and evals lay them as before (they only read them:
    EffectLayer, the device compose). Processes the tests start draw their own."""
    from avatarcast.engines.avatar_world import reference
    from avatarcast.engines.tiny.engine import avatar_cache_key

    reference.effect_sprites = _kept(
        reference.effect_sprites, keep, lambda avatar: (avatar_cache_key(avatar),), lambda got: None
    )


_keep_drawn_effect_sprites()


def _keep_drawn_face_atlases(keep: int = 8) -> None:
    """An avatar's face atlas (engines/avatar_world/layers.py face_atlas: every atlas pose's face drawn at the cut-out
    scale) is a pure function of the avatar and the scale and takes ~1-2 s; every engine on the cut-out draw (the CPU
    default) prepares its avatars with it (engines/tiny/cutout.py prepare), so one test that compares engines or
    prepares an avatar again drew the same atlas two or three times. As for the effect sprites above: this process
    keeps the last `keep` atlases, each still drawn once by the real function, and hands the same one out again,
    its arrays read-only (a caller that wrote into one would fail, not change another test's). Processes the tests
    start draw their own."""
    from avatarcast.engines.avatar_world import layers
    from avatarcast.engines.tiny import cutout
    from avatarcast.engines.tiny.engine import avatar_cache_key

    def freeze(got: Any) -> None:
        for a in (got.fields, got.pupil_reach, got.brow_heights):
            a.flags.writeable = False
        for pictures in got.layers.values():
            for x in pictures:
                if x is not None:
                    x.pixels.flags.writeable = False

    draw = layers.face_atlas

    def face_atlas(avatar: Any, scale: int = layers.CUTOUT_SCALE) -> Any:
        return kept(avatar, scale)

    kept = _kept(draw, keep, lambda avatar, scale: (avatar_cache_key(avatar), scale), freeze)
    layers.face_atlas = cutout.face_atlas = face_atlas


_keep_drawn_face_atlases()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(
    base: str, timeout_s: float, alive: Callable[[], bool] = lambda: True, headers: dict[str, str] | None = None
) -> None:
    """Poll /readyz until 200; fail at once if the server reports a failed start or `alive()` turns false."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = httpx.get(base + "/readyz", timeout=2, headers=headers)
            if r.status_code == 200:
                return
            if r.json().get("error") == "start_failed":
                raise RuntimeError(f"server failed to start: {r.text}")
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not alive():
            raise RuntimeError(f"server at {base} did not become ready in {timeout_s:g} s")
        time.sleep(0.2)


class WsRecorder:
    """A WebSocket client's record of what arrived: frames (recv time, header, image bytes) and events."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[tuple[float, Any, bytes]] = []
        self.events: list[dict] = []

    def take(self, m: bytes | str) -> None:
        """Sort one received message into frames or events."""
        from avatarcast.realtime.protocol import unpack_frame

        if isinstance(m, bytes):
            h, img = unpack_frame(m)
            self.frames.append((time.monotonic(), h, img))
        else:
            self.events.append(json.loads(m))


# For servers whose tests are about something other than the engine (auth, origins, input rates, ICE, WHEP offers,
# ASR languages): the shipped copy draw, one decoder folder and no cheaper decode to measure at start-up, ~3 s less a
# start than the default adaptive draw (two folders, realtime/decode_cost.py's measurement). The session server
# below, `inproc` and the load-control tests keep the default.
NOT_ABOUT_THE_DRAW: dict[str, Any] = {"motion_draw": "copy"}


@contextlib.contextmanager
def running_server(**settings: Any) -> Iterator[tuple[str, Any]]:
    """Start uvicorn + the app in a thread; yield (base URL, hub) once /readyz answers 200."""
    import uvicorn

    from avatarcast.realtime.server import create_app, uvicorn_config
    from avatarcast.realtime.settings import Settings

    port = free_port()
    clips = tempfile.mkdtemp(prefix="avatarcast-clips-")
    s = Settings(port=port, clip_cache_dir=clips, **settings)
    app = create_app(s)
    server = uvicorn.Server(
        uvicorn_config(
            app,
            s,
            host="127.0.0.1",
            log_level="warning",
            log_config=uvicorn.config.LOGGING_CONFIG,
            timeout_graceful_shutdown=None,
        )
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), name="uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, 180, thread.is_alive)
    try:
        yield base, app.state.hub
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def _server() -> Iterator[tuple[str, Any]]:
    # admission control and the degradation ladder off: these tests check behaviour (sampled frames,
    # several sessions) that load control would change on a busy CI machine; tests/realtime/test_hardening.py
    # covers load control on its own server
    with running_server(admission=0, ladder=0) as pair:
        yield pair


@pytest.fixture(scope="session")
def server_url(_server: tuple[str, Any]) -> str:
    return _server[0]


@pytest.fixture(scope="session")
def base(server_url: str) -> str:
    """The HTTP tests' short name for server_url."""
    return server_url


@pytest.fixture(scope="session")
def server_hub(_server: tuple[str, Any]) -> Any:
    return _server[1]


@contextlib.contextmanager
def app_in_process(**settings: Any) -> Iterator[tuple[Any, Any]]:
    """The app in this process, without sockets (Starlette's TestClient): yields (client, hub) once ready.

    The Hub, its runners and the WebSocket handler run on the client's event loop; tests call into
    them with `client.portal.call(fn, *args)` (coroutine functions are awaited there)."""
    from starlette.testclient import TestClient

    from avatarcast.realtime.server import create_app
    from avatarcast.realtime.settings import Settings

    s = Settings(clip_cache_dir=tempfile.mkdtemp(prefix="avatarcast-clips-"), **settings)
    with TestClient(create_app(s)) as client:
        hub = client.app.state.hub
        deadline = time.monotonic() + 180
        while not hub.ready.is_set():
            if hub.start_error or time.monotonic() > deadline:
                raise RuntimeError(f"the in-process app did not start: {hub.start_error}")
            time.sleep(0.1)
        yield client, hub


@pytest.fixture(scope="session")
def inproc() -> Iterator[tuple[Any, Any]]:
    """One in-process app for the direct tests of the runner and the WebSocket handler (load control off)."""
    with app_in_process(admission=0, ladder=0) as pair:
        yield pair


# --- a real redis-server on loopback (tests of --redis-url) ---

REDIS_SERVER = "/usr/bin/redis-server"  # Debian's redis-server (tools/test.sh installs it)


class RedisServer:
    """A throwaway redis-server: no persistence, loopback only; stop() and start() again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([REDIS_SERVER, *args], stdout=subprocess.DEVNULL)
        probe = RedisState(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.check()
                break
            except SharedStateError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)
        probe.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
