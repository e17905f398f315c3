# avatarcast, CPU image: the embedded `tiny` engine on onnxruntime (no torch, no CUDA).
#
#   docker build -t avatarcast:cpu .
#   docker run --rm -p 8080:8080 avatarcast:cpu            # demo page: http://HOST:8080/
#
# Ray Serve image (adds the package's `ray` extra, i.e. ray[serve]; KubeRay: docs/deploy/):
#   docker build --build-arg EXTRAS=ray -t avatarcast:ray .
#
# No Docker Hub? Any Debian bookworm image with python3 (3.11) and python3-venv works as the base,
# e.g. one made with debootstrap (docs/docker.md):
#   docker build --build-arg BASE_IMAGE=avatarcast-base:bookworm -t avatarcast:cpu .
#
# Settings: every `avatarcast serve` flag is also an AVATARCAST_* variable (`avatarcast serve --help`),
# e.g. -e AVATARCAST_AUTH_SECRET=..., -e AVATARCAST_THREADS=2 (the default, 0, uses every CPU in the
# container's cpuset: `--cpus` does not change that count, `--cpuset-cpus` does).
#
# Written for the classic builder as well as BuildKit (no heredocs, no syntax directive, one
# linear chain of stages), so it also builds on an offline daemon without buildx.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: a venv with the package
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY realtime ./realtime
COPY engines ./engines
COPY templates ./templates
COPY tools ./tools
# EXTRAS: "" (default) or "ray". Not "wan"/"train": those pull torch; use Dockerfile.gpu.
ARG EXTRAS=""
# As tools/install.sh does, but not editable. The checks fail the build if torch crept in, or if the
# ray extra gave no ray.serve.
RUN pip install --upgrade pip \
 && pip install ".${EXTRAS:+[$EXTRAS]}" \
 && if pip show torch >/dev/null 2>&1; then echo "torch was installed: not wanted in the CPU image" >&2; exit 1; fi \
 && case ",$EXTRAS," in *,ray,*) python -c "import ray, ray.serve; print('ray', ray.__version__)" ;; esac \
 && avatarcast --help >/dev/null

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime
ARG EXTRAS=""
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AVATARCAST_PORT=8080
# KubeRay's default probes run wget inside Ray containers: only the ray variant gets it.
RUN case ",$EXTRAS," in *,ray,*) \
      apt-get update && apt-get install -y --no-install-recommends wget && rm -rf /var/lib/apt/lists/* ;; \
    esac \
 && useradd --create-home --uid 10001 --shell /bin/bash avatarcast
COPY --from=build /opt/venv /opt/venv
USER avatarcast
WORKDIR /home/avatarcast

# WARM_CACHE=1 starts the server once at build time and stops it once /readyz answers 200, so the
# image carries ~/.cache/avatarcast (emotion prototypes, the start-up avatars' loops and latents
# cache of the default engine, motion; a container run with --engine tiny builds tiny's at its first
# start, about 4.5 s) and later starts read them from disk. WARM_AVATARS: the avatars warmed (serve's default: pip).
ARG WARM_CACHE=1
ARG WARM_AVATARS=pip
RUN if [ "$WARM_CACHE" = 1 ]; then \
      AVATARCAST_AVATARS="$WARM_AVATARS" avatarcast serve --host 127.0.0.1 --port 18080 & pid=$!; \
      ok=1; for i in $(seq 1 300); do \
        if python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:18080/readyz', timeout=2)" 2>/dev/null; \
        then ok=0; echo "ready after ${i} s of polling"; break; fi; sleep 1; done; \
      kill -TERM $pid; wait $pid || true; \
      [ $ok = 0 ] && du -sh /home/avatarcast/.cache/avatarcast; \
    fi

EXPOSE 8080
# Liveness. /readyz (503 while the models load and the start-up avatars warm) is the readiness
# check for orchestrators (docs/deploy/); Docker has one health check, so it gets /healthz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python3 -c "import os,urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AVATARCAST_PORT','8080'), timeout=4)" || exit 1
STOPSIGNAL SIGTERM
# The ray variant runs the same by default; under KubeRay the operator replaces the command with
# `ray start ...` and deploys the Serve app (import path avatarcast.realtime.cluster.app:app_builder).
CMD ["avatarcast", "serve", "--host", "0.0.0.0"]
