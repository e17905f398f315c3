"""avatarcast on Ray Serve (realtime/cluster/): a real local Ray cluster, the gateway and two engine
replicas of the CPU's default engine (motion, its adaptive draw, onnxruntime, 1 thread each: its streams' state
crosses the replicas as it would in production), real WebSocket sessions through Serve's HTTP proxy on loopback.

Checks session affinity (every chunk of a session on one replica while the replicas are unchanged),
and failover: one engine replica is killed (ray.kill) while four sessions react; every session keeps
getting fresh frames within a bounded gap, the killed replica's sessions move to the other one, the
gateway stays healthy, and Serve starts a replacement replica. About a minute and a half on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install -e '.[ray]')")
serve = pytest.importorskip("ray.serve")
websockets = pytest.importorskip("websockets")

from avatarcast.realtime.settings import Settings  # noqa: E402
from tests.conftest import WsRecorder, free_port, wait_ready  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# The longest a reacting session may go without a new image across a replica kill. On the 2-core test
# machine four reacting sessions already overload two 1-thread replicas (gaps up to ~2 s before the kill),
# and after it one replica serves all four while Serve starts the replacement: 2.3-4.7 s measured on a quiet
# machine, 6.6 and 7.6 s in two CI runs beside an hour-long soak (2026-12-04). The bound is the failover's
# correctness, not its speed (that is a benchmark's): frames come back from the surviving replica, sampled,
# with no engine_failed, and the moved sessions are off the victim (all checked below).
MAX_FRESH_GAP_S = 10.0
SESSIONS = 4
GATEWAYS = 2
PIN = {"X-Session-Id": "ray-test-sessions"}  # the test's sockets and status calls: one gateway
EMOTION = "happy"
CHUNKS = 4  # sampled chunks per session the affinity test waits for: enough to see a session stay put
AFFINITY_DEADLINE_S = (
    60.0  # under 8 s when the test runs alone; the bound only keeps a stalled sampler from hanging the run
)


def _descendants(root: int) -> set[int]:
    """Every live process below `root` (from /proc: Ray's GCS, raylet, workers, replicas)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def cluster() -> Any:
    """The Serve application on a fresh local Ray cluster (4 logical CPUs); torn down with no process left."""
    from avatarcast.realtime.cluster import launch

    if ray.is_initialized():
        pytest.skip("a Ray cluster is already connected in this process")
    before = _descendants(os.getpid())
    port = free_port()
    s = Settings(
        port=port,
        threads=1,
        engine_replicas=2,
        ray_min_replicas=2,
        ray_max_replicas=2,
        ray=1,
        ray_gateways=GATEWAYS,
        admission=0,
        ladder=0,
        clip_cache_dir=tempfile.mkdtemp(prefix="avatarcast-clips-"),
    )
    t0 = time.monotonic()
    launch.start(s, num_cpus=4)
    base = f"http://127.0.0.1:{port}"
    # every gateway, not just the first: the test's sockets (PIN) and HTTP keys may reach any of them
    # (16 probe keys miss one of 2 gateways with p = 2^-15)
    deadline = time.monotonic() + 120
    for key in [PIN["X-Session-Id"]] + [f"ready-probe-{i}" for i in range(16)]:
        wait_ready(base, max(1.0, deadline - time.monotonic()), headers={"X-Session-Id": key})
    print(f"\nray cluster + {GATEWAYS} gateways + 2 engine replicas ready in {time.monotonic() - t0:.1f} s")
    started = _descendants(os.getpid()) - before
    try:
        yield base
    finally:
        launch.stop()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in started):
            time.sleep(0.5)
        left = sorted(p for p in started if _alive(p))
        assert not ray.is_initialized()
        assert not left, f"expected no Ray processes after shutdown, {len(left)} still run: {left}"


def _status(base: str) -> dict:
    """The status of the gateway that holds the test's WebSocket sessions (they share one affinity key)."""
    return httpx.get(base + "/v1/status", headers=PIN, timeout=5).json()


class Stream(WsRecorder):
    """One WebSocket session: records (time, header, image) of every frame and the events."""

    @property
    def sid(self) -> str:
        return next(e["payload"]["session"] for e in self.events if e["type"] == "hello")

    async def pump(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                m = await asyncio.wait_for(self.ws.recv(), 0.2)
            except TimeoutError:
                continue
            self.take(m)

    async def keep_reacting(self, stop: asyncio.Event, every_s: float = 1.5) -> None:
        """One emotion, told again and again: the reaction goes on from sampled chunks only (a new emotion
        would start with its cached first chunk, which would hide a stall of the sampler)."""
        while not stop.is_set():
            await self.ws.send(json.dumps({"type": "emotion", "label": EMOTION, "intensity": 0.9}))
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                pass

    def fresh_times(self, t0: float = 0.0) -> list[float]:
        """Arrival times of frames with a new image (a held frame repeats the last one's bytes)."""
        out, last = [], None
        for t, _, img in self.frames:
            if img != last and t >= t0:
                out.append(t)
            last = img
        return out

    def sampled_after(self, t0: float) -> int:
        return sum(1 for t, h, _ in self.frames if t > t0 and h.source == "sampler")

    def errors(self) -> list[dict]:
        return [e["payload"] for e in self.events if e["type"] == "error"]


async def _open(base: str, n: int) -> list[Stream]:
    url = base.replace("http://", "ws://") + "/v1/ws?avatar=pip"
    out = [Stream(await websockets.connect(url, max_size=None, additional_headers=PIN)) for _ in range(n)]
    for s in out:  # the hello event names the session
        while not any(e["type"] == "hello" for e in s.events):
            m = await asyncio.wait_for(s.ws.recv(), 10)
            if isinstance(m, str):
                s.events.append(json.loads(m))
    return out


def _engine_replicas() -> set[str]:
    """Names of the live engine replica actors, from Ray's named-actor registry."""
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#EngineReplica#" in a["name"]}


def test_builder_args_and_deployment_options() -> None:
    """The config file's args become one Settings; replica bounds pick fixed or autoscaled replicas."""
    from avatarcast.realtime.cluster.app import ROUTER, engine_deployment_options, settings_from_args

    s = settings_from_args(
        {
            "engine": "tiny",
            "engine_replicas": 3,
            "min_replicas": 1,
            "max_replicas": 5,
            "backend": "onnxruntime",
            "target_ongoing_requests": 6,
        },
        env={},
    )
    assert (s.ray, s.engine_replicas, s.ray_min_replicas, s.ray_max_replicas) == (1, 3, 1, 5)
    opts = engine_deployment_options(s)
    auto = opts["autoscaling_config"]
    assert (auto["min_replicas"], auto["initial_replicas"], auto["max_replicas"]) == (1, 3, 5)
    assert auto["target_ongoing_requests"] == 6.0 and "num_replicas" not in opts
    assert opts["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert opts["request_router_config"].request_router_class == ROUTER
    fixed = engine_deployment_options(settings_from_args({"min_replicas": 2, "max_replicas": 2}, env={}))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    gpu = settings_from_args({"backend": "tensorrt"}, env={})
    assert engine_deployment_options(gpu)["ray_actor_options"]["num_gpus"] == 1.0
    # the engine's default follows the backend the args give, over the environment's
    assert gpu.engine == "tiny" and settings_from_args({}, env={}).engine == "motion"
    assert settings_from_args({}, env={"AVATARCAST_BACKEND": "torch"}).engine == "tiny"
    # motion serves on onnxruntime on the CPU or on torch (CPU or CUDA), never on TensorRT
    assert settings_from_args({"engine": "motion", "backend": "torch"}, env={}).engine == "motion"
    with pytest.raises(ValueError, match="--engine tiny"):
        settings_from_args({"engine": "motion", "backend": "tensorrt"}, env={})
    with pytest.raises(ValueError, match="unknown avatarcast setting"):
        settings_from_args({"replicas": 2}, env={})
    with pytest.raises(ValueError, match="ray_min_replicas"):
        settings_from_args({"min_replicas": 3, "max_replicas": 2}, env={})
    from avatarcast.realtime.cluster.app import gateway_deployment_options

    one = gateway_deployment_options(Settings())
    assert one["num_replicas"] == 1 and one["request_router_config"].request_router_class == ROUTER
    many = gateway_deployment_options(settings_from_args({"ray_gateways": 2, "ray_max_gateways": 8}, env={}))
    assert (many["autoscaling_config"]["min_replicas"], many["autoscaling_config"]["max_replicas"]) == (2, 8)
    with pytest.raises(ValueError, match="ray_gateways"):
        settings_from_args({"ray_gateways": 3, "ray_max_gateways": 2}, env={})


def test_session_affinity_and_batching(cluster: str) -> None:
    """Every chunk of a session goes to one replica while both live; sessions sharing one batch there."""

    async def go() -> tuple[list[Stream], dict, dict]:
        before = _status(cluster)["cluster"]
        streams = await _open(cluster, SESSIONS)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(s.pump(stop)) for s in streams] + [
            asyncio.create_task(s.keep_reacting(stop)) for s in streams
        ]
        # until every session has had CHUNKS sampled chunks: a count, not a rate (a timed window failed on
        # the 2-core CI machine when the other tests' processes slowed the 1-thread replicas)
        deadline = time.monotonic() + AFFINITY_DEADLINE_S
        while True:
            await asyncio.sleep(1.0)
            after = await asyncio.to_thread(_status, cluster)
            counts = [after["cluster"]["sessions"].get(s.sid, {}).get("chunks", 0) for s in streams]
            if min(counts) >= CHUNKS or time.monotonic() > deadline:
                break
        stop.set()
        await asyncio.gather(*tasks)
        for s in streams:
            await s.ws.close()
        return streams, before, after["cluster"]

    streams, before, cl = asyncio.run(go())
    replicas = _engine_replicas()
    assert len(replicas) == 2, replicas
    for s in streams:
        info = cl["sessions"].get(s.sid)
        assert info is not None, f"session {s.sid} sent no chunk to an engine replica"
        assert info["chunks"] >= CHUNKS, (
            f"session {s.sid}: expected >= {CHUNKS} sampled chunks in {AFFINITY_DEADLINE_S:.0f} s, got {info['chunks']}"
        )
        assert info["replica"] in replicas
        assert s.sampled_after(0) > 0 and not s.errors(), s.errors()
    assert cl["moves"] == before["moves"], f"expected no session to change replica, {cl['moves'] - before['moves']} did"
    assert cl["failovers"] == before["failovers"] == 0
    status = _status(cluster)["scheduler"]
    print(
        f"affinity: {len(streams)} sessions on {len({cl['sessions'][s.sid]['replica'] for s in streams})} "
        f"replica(s); {status['jobs']} chunks in {status['batches']} batches"
    )


def test_replica_killed_mid_stream(cluster: str) -> None:
    """Kill the engine replica serving the most sessions while four sessions react."""

    async def go() -> dict:
        streams = await _open(cluster, SESSIONS)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(s.pump(stop)) for s in streams] + [
            asyncio.create_task(s.keep_reacting(stop)) for s in streams
        ]
        await asyncio.sleep(5.0)
        deadline = time.monotonic() + 30  # on a loaded machine a session's first chunk can take longer than 5 s
        while True:
            cl = (await asyncio.to_thread(_status, cluster))["cluster"]
            waiting = [s.sid for s in streams if s.sid not in cl["sessions"]]
            if not waiting or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert not waiting, f"sessions {waiting} sent no chunk to an engine replica in 35 s"
        on: dict[str, list[str]] = {}
        for s in streams:
            on.setdefault(cl["sessions"][s.sid]["replica"], []).append(s.sid)
        victim = max(on, key=lambda r: len(on[r]))
        moved = on[victim]
        t_kill = time.monotonic()
        await asyncio.to_thread(ray.kill, ray.get_actor(victim, namespace="serve"), no_restart=True)
        health = []
        for _ in range(16):  # the gateway answers while its engine replica is gone and replaced
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient() as c:
                health.append((await c.get(cluster + "/healthz", timeout=5)).status_code)
        await asyncio.sleep(2.0)
        after = await asyncio.to_thread(_status, cluster)
        stop.set()
        await asyncio.gather(*tasks)
        for s in streams:
            await s.ws.close()
        return {
            "streams": streams,
            "victim": victim,
            "moved": moved,
            "t_kill": t_kill,
            "health": health,
            "after": after,
            "before": cl,
        }

    r = asyncio.run(go())
    streams, victim, t_kill = r["streams"], r["victim"], r["t_kill"]
    cl = r["after"]["cluster"]
    assert r["health"] == [200] * len(r["health"]), r["health"]
    assert r["after"]["ready"] is True

    gaps, before = {}, {}
    for s in streams:
        pre = s.fresh_times(t_kill - 4.0)
        pre = [t for t in pre if t <= t_kill]
        before[s.sid] = max((b - a for a, b in zip(pre, pre[1:])), default=0.0)
        fresh = s.fresh_times(t_kill - 2.0)
        assert fresh and fresh[-1] > t_kill + 8.0, f"session {s.sid}: no fresh frame in the last seconds"
        gap = max(b - a for a, b in zip([t_kill - 2.0, *fresh], fresh))
        gaps[s.sid] = gap
        assert gap < MAX_FRESH_GAP_S, (
            f"session {s.sid}: expected fresh frames every < {MAX_FRESH_GAP_S} s, gap {gap:.2f} s"
        )
        assert s.sampled_after(t_kill + 1.0) > 0, f"session {s.sid}: no sampled frame after the kill"
        fatal = [e for e in s.errors() if e.get("code") == "engine_failed"]
        assert not fatal, f"session {s.sid}: a chunk failed despite failover: {fatal}"
    for sid in r["moved"]:
        now_on = cl["sessions"][sid]["replica"]
        assert now_on != victim, f"session {sid} still on the killed replica {victim}"
    print(
        f"failover: killed {victim.rsplit('#', 1)[-1]} serving {len(r['moved'])} of {SESSIONS} sessions; "
        f"longest fresh-frame gap per session: {', '.join(f'{g:.2f}s' for g in gaps.values())} "
        f"(in the 4 s before the kill: {', '.join(f'{g:.2f}s' for g in before.values())}); "
        f"chunk requests resent: {cl['failovers']}, longest chunk wait across the failure: "
        f"{cl['max_failover_wait_s']:.2f}s"
    )

    deadline = time.monotonic() + 60  # Serve replaces the dead replica
    while True:
        names = _engine_replicas()
        st = serve.status().applications["avatarcast"].deployments["EngineReplica"]
        if victim not in names and len(names) == 2 and st.replica_states.get("RUNNING", 0) == 2:
            break
        assert time.monotonic() < deadline, f"Serve did not restart the killed replica in 60 s: {names}, {st}"
        time.sleep(0.5)
    print(f"Serve restarted the replica {time.monotonic() - t_kill:.1f} s after the kill")


def test_http_sessions_stick_to_their_gateway(cluster: str) -> None:
    """Two gateways: a session made over HTTP lives in one of them. Requests that carry the client's
    X-Session-Id key reach that gateway every time; without the key the proxy spreads them."""
    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#Gateway#" in a["name"]}
    assert len(names) == GATEWAYS, names
    with httpx.Client(base_url=cluster, timeout=10) as c:
        made = []
        for i in range(6):
            key = {"X-Session-Id": f"client-{i}"}
            r = c.post("/v1/sessions", json={}, headers=key)
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            made.append((sid, key))
            codes = [c.get(f"/v1/sessions/{sid}", headers=key).status_code for _ in range(6)]
            assert codes == [200] * 6, (i, codes)
            assert c.post(f"/v1/sessions/{sid}/emotion", json={"label": "happy"}, headers=key).status_code == 202
        sid, _ = made[0]
        unkeyed = [c.get(f"/v1/sessions/{sid}").status_code for _ in range(20)]
        assert set(unkeyed) == {200, 404}, unkeyed  # no key: either gateway (all 20 on one: p = 2^-19)
        for sid, key in made:
            assert c.delete(f"/v1/sessions/{sid}", headers=key).status_code == 204
