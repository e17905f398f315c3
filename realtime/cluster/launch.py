"""`avatarcast serve --ray`: the Serve application on a local Ray cluster (or the one at ray_address),
its HTTP proxy on --host/--port, until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from avatarcast.realtime.logs import setup_logging
from avatarcast.realtime.settings import Settings

log = logging.getLogger("avatarcast.cluster")
APP_NAME = "avatarcast"
PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


def start(settings: Settings, *, num_cpus: int | None = None) -> Any:
    """ray.init (local unless ray_address), Serve's proxy on the settings' host/port, and the application
    deployed; returns the gateway's handle once every replica is running."""
    import ray  # ray: `avatarcast serve --ray` only; the app module imports Serve itself
    from ray import serve  # ray, as above

    from avatarcast.realtime.cluster.app import build_app  # ray: the app module imports Serve at its top

    if not ray.is_initialized():
        if settings.ray_address:
            ray.init(address=settings.ray_address)
        else:  # a local cluster: its workers import this checkout, installed or not
            path = os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH", "")) if p)
            ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    serve.start(http_options={"host": settings.host, "port": settings.port})
    return serve.run(build_app(settings), name=APP_NAME, route_prefix="/")


def stop() -> None:
    """Serve's deployments and proxy, then this driver's Ray (and the local cluster it started)."""
    import ray  # ray: `avatarcast serve --ray` only
    from ray import serve  # ray, as above

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def serve_on_ray(settings: Settings) -> None:
    """Run until interrupted."""
    setup_logging(settings.log_level, settings.log_format)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    start(settings)
    log.info(
        "avatarcast on Ray Serve at http://%s:%d (engine replicas: %d, min %d, max %d)",
        settings.host,
        settings.port,
        settings.engine_replicas,
        settings.ray_min_replicas,
        settings.ray_max_replicas,
    )
    try:
        done.wait()
    finally:
        log.info("shutting down Serve and Ray")
        stop()
