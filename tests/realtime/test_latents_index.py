"""The latents-cache index and artefact storage across machines, on a real redis-server (loopback) and, for s3://,
moto's S3 emulator on loopback (not real object storage): each entry and clip is built once between them."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avatarcast.artifacts import open_store
from avatarcast.engines.tiny.engine import TinyEngine
from avatarcast.realtime.clips import ClipRenderer, ClipRequest
from avatarcast.realtime.latents_index import SharedLatentsIndex, claim_key, entry_key, index_for
from avatarcast.realtime.shared_state import PREFIX, LocalState, RedisState
from avatarcast.templates import load_templates
from avatarcast.templates.cache import LatentsCache
from tests.conftest import RedisServer


@pytest.fixture(scope="module")
def machines() -> list[TinyEngine]:
    """Two engines, as on two machines (one engine is not re-entrant)."""
    return [TinyEngine.load(backend="onnxruntime", steps=1) for _ in range(2)]


def counted(engine: TinyEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = engine.sample_chunks

    def counting(states: Any) -> Any:
        calls.append(len(states))
        return real(states)

    monkeypatch.setattr(engine, "sample_chunks", counting)
    return calls


def test_two_machines_build_each_entry_once(
    redis_server: RedisServer, machines: list[TinyEngine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two caches (own engines, own directories, own Redis connections) precompute the same entries at once."""
    templates = load_templates()
    calls = [counted(e, monkeypatch) for e in machines]
    caches = [
        LatentsCache(e, templates, tmp_path / n, index=SharedLatentsIndex(RedisState(redis_server.url)))
        for e, n in zip(machines, "ab")
    ]
    jobs: dict[str, Any] = {"avatars": [0, 1], "emotions": ["happy", "sad"], "variants": 1, "batch": 1}
    stats: list[dict] = [{}, {}]

    def run(i: int) -> None:
        stats[i] = caches[i].precompute(**jobs)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    a, b = stats
    assert a["computed"] + b["computed"] == 4, stats  # without the index: 8, each machine all 4
    assert a["loaded"] + b["loaded"] == 4 and sum(map(len, calls)) == 4, (stats, calls)
    assert len(caches[0]) == len(caches[1]) == 4
    weights = machines[0].weights_hash
    probe = RedisState(redis_server.url)
    for avatar in (0, 1):
        for emotion in ("happy", "sad"):
            x, y = (c.get(avatar, emotion) for c in caches)
            np.testing.assert_array_equal(x.frames, y.frames)
            np.testing.assert_array_equal(x.ctx, y.ctx)
            published = json.loads(probe.client.get(PREFIX + entry_key(weights, x.key)))
            assert published["emotion"] == emotion and Path(published["url"]).is_file()
            assert probe.client.get(PREFIX + claim_key(weights, x.key)) is None  # claims released
    # the one home of the key format: weights hash in front, the cache's reaction key after it
    assert entry_key("w", "k") == "latents:w:k" and claim_key("w", "k") == "latents:claim:w:k"
    assert sorted(probe.client.keys(f"{PREFIX}latents:{weights}:*")) == sorted(
        PREFIX + entry_key(weights, caches[0].key(av, em)) for av in (0, 1) for em in ("happy", "sad")
    )
    assert index_for(LocalState()) is None and isinstance(index_for(probe), SharedLatentsIndex)


def test_a_dead_builders_claim_lapses_and_redis_going_away_builds_here(
    redis_server: RedisServer,
    machines: list[TinyEngine],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = machines[0]
    calls = counted(engine, monkeypatch)
    shared = RedisState(redis_server.url)
    cache = LatentsCache(engine, load_templates(), tmp_path, index=SharedLatentsIndex(shared))
    key = cache.key(2, "angry", 0)
    assert shared.claim(claim_key(engine.weights_hash, key), "a-dead-machine", 0.6)
    t0 = time.monotonic()
    cache.get(2, "angry", 0)
    assert time.monotonic() - t0 >= 0.5 and calls == [1]  # waited for the claim to lapse, then built it
    redis_server.stop()
    with caplog.at_level(logging.WARNING, "avatarcast.shared_state"):
        other = LatentsCache(engine, load_templates(), tmp_path / "b", index=SharedLatentsIndex(shared))
        other.precompute([3], ["angry", "sad"], variants=1)
    assert calls == [1, 2]  # built here, in one batch, rather than failing
    assert sum("shared state unavailable" in r.message for r in caplog.records) == 1


def test_cache_and_clips_in_s3_through_the_index(
    redis_server: RedisServer,
    machines: list[TinyEngine],
    server_hub: Any,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--artifact-url s3://... (moto's emulator): what one machine builds, another loads from the bucket."""
    engine = machines[0]
    calls = counted(engine, monkeypatch)

    def machine(kind: str) -> tuple[Any, SharedLatentsIndex]:  # a store and an index of their own
        return open_store(f"{s3_bucket}/arts/{kind}"), SharedLatentsIndex(RedisState(redis_server.url))

    store, index = machine("latents")
    first = LatentsCache(engine, load_templates(), tmp_path / "a", store=store, index=index)
    assert first.precompute([0], ["happy"], variants=1)["computed"] == 1
    url = index.where(engine.weights_hash, first.key(0, "happy"))
    assert url is not None and url.startswith(s3_bucket + "/arts/latents/")
    assert not (tmp_path / "a").exists()  # the store is the bucket, not the directory
    store, index = machine("latents")
    second = LatentsCache(engine, load_templates(), tmp_path / "b", store=store, index=index)
    assert (second.precompute([0], ["happy"], variants=1)["loaded"], calls) == (1, [1])
    # clips: two gateways with their own directories render once; a third, without Redis, copies it from the bucket
    hub = server_hub
    gw = [
        ClipRenderer(hub.services, str(tmp_path / n), shared=RedisState(redis_server.url), store=machine("clips")[0])
        for n in ("ga", "gb")
    ]
    req = ClipRequest(emotion="happy", seconds=0.5, seed=11)

    def on_hub(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, hub.loop).result(120)

    async def both() -> list:
        return list(await asyncio.gather(gw[0].render(req), gw[1].render(req)))

    ra, rb = on_hub(both())
    assert gw[0].renders + gw[1].renders == 1 and ra.path != rb.path
    assert ra.path.read_bytes() == rb.path.read_bytes() and ra.path.stat().st_size > 0
    assert open_store(f"{s3_bucket}/arts/clips").get(ra.path.name) == ra.path.read_bytes()
    alone = ClipRenderer(hub.services, str(tmp_path / "gc"), store=machine("clips")[0])
    rc = on_hub(alone.render(req))
    assert rc.cached and alone.renders == 0 and rc.path.read_bytes() == ra.path.read_bytes()


def test_precompute_fills_the_artifact_url_and_the_index(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`avatarcast precompute --redis-url ... --artifact-url ...`: a second run (another machine) builds nothing."""
    from avatarcast.realtime import precompute
    from avatarcast.realtime.settings import Settings

    url = f"memory://precompute-{secrets.token_hex(4)}"
    argv = ["--avatars", "0", "--emotions", "happy", "--variants", "1", "--steps", "1", "--json", "--quiet"]
    argv += ["--redis-url", redis_server.url, "--artifact-url", url, "--cache-dir", str(tmp_path)]
    runs = []
    for _ in range(2):
        assert precompute.main(argv) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert [(r["computed"], r["loaded"]) for r in runs] == [(1, 0), (0, 1)], runs
    store = open_store(url + "/latents")
    assert runs[0]["cache_dir"] == store.root and not list(tmp_path.glob("*.npz"))
    (key,) = RedisState(redis_server.url).client.keys(f"{PREFIX}latents:{runs[0]['weights']}:*")
    assert json.loads(RedisState(redis_server.url).client.get(key))["url"].startswith(store.root + "/")
    assert Settings.from_env({"AVATARCAST_ARTIFACT_URL": "s3://b/x"}).artifact_url == "s3://b/x"
