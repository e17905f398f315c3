# coturn from Debian's archive (the same turnserver the tests start), run as its own unprivileged user.
#   docker build -f coturn.Dockerfile -t avatarcast-coturn .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends coturn \
 && rm -rf /var/lib/apt/lists/*
USER turnserver
ENTRYPOINT ["turnserver"]
