"""moto's S3 emulator (`moto[server]`, the dev extra) as a process on a free loopback port: an S3 API to test
the s3fs path against. It is an emulator, not real object storage (docs/scale-out.md says what was run where)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest


def _free_port() -> int:  # tests/conftest.py imports this module: its free_port is not importable here
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The emulator's URL; s3fs (botocore) finds it through AWS_ENDPOINT_URL, as a deployment would."""
    pytest.importorskip("s3fs", reason="the `cluster` extra (s3fs)")
    pytest.importorskip("moto.server", reason="the dev extra (moto[server])")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; returns its s3:// URL."""
    import s3fs

    for k, v in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached instance would keep an earlier endpoint
    name = f"b{_free_port()}"
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}"
