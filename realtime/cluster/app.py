"""The Ray Serve application: a gateway deployment (the FastAPI app and the Hub: sockets, sessions,
ASR, emotion) in front of an engine deployment (model + batching scheduler per replica).

`serve run deploy/ray/serve_config.yaml` and `avatarcast serve --ray` both build it through
`app_builder`. The engine deployment routes by session (Serve's consistent-hash request router on
`handle.options(session_id=...)`), so a session's chunks batch on one replica; it autoscales on
ongoing chunk requests between ray_min_replicas and ray_max_replicas.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from avatarcast.realtime.cluster.remote import RemoteScheduler
from avatarcast.realtime.cluster.replica import EngineReplica, log_to_stderr
from avatarcast.realtime.hub import Hub
from avatarcast.realtime.server import create_app
from avatarcast.realtime.settings import Settings

log = logging.getLogger("avatarcast.cluster")

GATEWAY = "Gateway"
ENGINE = "EngineReplica"
# Serve's consistent-hash router (ray.serve.experimental): the replica is a function of the session id
# and the replica set, so a session stays on its replica while the set is unchanged; when a replica
# dies its sessions go to the next replica on the ring (the fallbacks), the others do not move
ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
# builder args with short names (deploy/ray/serve_config.yaml); any Settings field works by its own name
ALIASES = {
    "min_replicas": "ray_min_replicas",
    "max_replicas": "ray_max_replicas",
    "target_ongoing_requests": "ray_target_ongoing",
}


def settings_from_args(args: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> Settings:
    """Builder args over AVATARCAST_* variables (`env`, default os.environ) over defaults; validated. The args are
    the top layer of Settings.resolve, so a default that depends on others (the engine: its backend's) sees them."""
    names = {f.name: f for f in dataclasses.fields(Settings)}
    given: dict[str, Any] = {}
    for key, value in (args or {}).items():
        name = ALIASES.get(key, key)
        if name not in names:
            raise ValueError(f"unknown avatarcast setting {key!r} in the Serve application args")
        t = names[name].type
        t = t if isinstance(t, str) else t.__name__
        given[name] = {"int": int, "float": float}.get(t, str)(value)
    given["ray"] = 1
    s, sources = Settings.resolve(argparse.Namespace(**given), env)
    s.validate({**sources, **{n: f"Serve application arg {n}" for n in given}})
    return s


def _sticky_router() -> RequestRouterConfig:
    return RequestRouterConfig(
        request_router_class=ROUTER, request_router_kwargs={"num_virtual_nodes": 100, "num_fallback_replicas": 2}
    )


def gateway_deployment_options(s: Settings) -> dict:
    """The gateway replicas. Sessions live in a gateway's memory, so HTTP requests are routed by their
    `x-session-id` header (Serve's proxy hands it to the consistent-hash router): a client that sends one
    key with every request of a session reaches the gateway that holds it. A WebSocket session is one
    connection and needs no header. With ray_max_gateways above ray_gateways, Serve autoscales them on
    ongoing requests: every open socket counts, so this is sessions per gateway."""
    lo, hi = s.ray_gateways, max(s.ray_gateways, s.ray_max_gateways)
    scaling: dict[str, Any] = (
        {"num_replicas": lo}
        if lo == hi
        else {
            "autoscaling_config": {
                "min_replicas": lo,
                "max_replicas": hi,
                "initial_replicas": lo,
                "target_ongoing_requests": s.ray_gateway_target,
                "upscale_delay_s": 10.0,
                "downscale_delay_s": 300.0,
            }
        }
    )
    return {
        "name": GATEWAY,
        **scaling,
        # every open WebSocket is an ongoing request for as long as it lives
        "max_ongoing_requests": max(256, 8 * s.max_sessions),
        "request_router_config": _sticky_router(),
        # the gateway also loads the engine (latents cache, avatar loops): a GPU engine needs one here too
        "ray_actor_options": {"num_cpus": 1, "num_gpus": s.replica_gpus()},
        "health_check_period_s": 5.0,
        "graceful_shutdown_timeout_s": 5.0,
    }


def engine_deployment_options(s: Settings) -> dict:
    """Resources, routing and scaling of the engine replicas."""
    lo, hi = s.ray_min_replicas, s.ray_max_replicas
    scaling: dict[str, Any]
    if lo == hi:
        scaling = {"num_replicas": lo}
    else:
        scaling = {
            "autoscaling_config": {
                "min_replicas": lo,
                "max_replicas": hi,
                "initial_replicas": min(max(s.engine_replicas, lo), hi),
                # a reacting session keeps one or two chunk requests in flight: this is sessions per replica x ~2
                "target_ongoing_requests": s.ray_target_ongoing,
                "upscale_delay_s": 5.0,
                "downscale_delay_s": 60.0,
            }
        }
    return {
        "name": ENGINE,
        **scaling,
        "ray_actor_options": {"num_cpus": s.ray_replica_cpus, "num_gpus": s.replica_gpus()},
        # ongoing requests queue in the replica's EngineScheduler, where they batch: let many in
        "max_ongoing_requests": max(32, 4 * s.max_sessions),
        "request_router_config": _sticky_router(),
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 10.0,
        "graceful_shutdown_timeout_s": 5.0,
    }


@serve.ingress()
class Gateway:
    """The FastAPI app of `avatarcast serve`, its Hub sending chunk jobs to the engine deployment."""

    def __init__(self, settings: dict, engine: Any) -> None:
        self.settings = Settings(**settings)
        log_to_stderr(self.settings)
        s = self.settings
        self.hub = Hub(
            s,
            make_scheduler=lambda local, metrics: RemoteScheduler(
                local,
                engine,
                attempts=s.ray_chunk_attempts,
                timeout_s=s.ray_chunk_timeout_s,
                window_s=s.capacity_window_s,
                on_batch=metrics.observe_batch,
            ),
        )

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.settings, self.hub)

    def check_health(self) -> None:
        """A gateway whose models failed to load is restarted by Serve instead of answering 503 forever."""
        err = self.hub.start_error
        if err:
            raise RuntimeError(f"gateway start-up failed: {err}")


def build_app(s: Settings) -> Any:
    """The bound Serve application for these settings."""
    engine = serve.deployment(EngineReplica, **engine_deployment_options(s)).bind(dataclasses.asdict(s))
    gateway = serve.deployment(Gateway, **gateway_deployment_options(s))
    return gateway.bind(dataclasses.asdict(s), engine)


def app_builder(args: dict[str, Any] | None = None) -> Any:
    """`serve run avatarcast.realtime.cluster.app:app_builder engine=tiny engine_replicas=2 ...` and the config
    file's import_path: args are avatarcast settings (engine, backend, engine_replicas, min_replicas,
    max_replicas, ...), over AVATARCAST_* variables."""
    s = settings_from_args(args)
    log.info(
        "avatarcast on Ray Serve: engine %s/%s, replicas %d (min %d, max %d), %g GPU each",
        s.engine,
        s.backend,
        s.engine_replicas,
        s.ray_min_replicas,
        s.ray_max_replicas,
        s.replica_gpus(),
    )
    return build_app(s)
