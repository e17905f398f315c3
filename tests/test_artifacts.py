"""The artefact store (avatarcast/artifacts.py) on a real directory, fsspec's memory://, and s3:// through s3fs
against moto's S3 emulator on loopback (not real object storage)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from avatarcast.artifacts import ArtifactError, ArtifactNotFound, FsspecStore, fetch, fetch_to, open_store, store_under


@pytest.fixture(params=["dir", "memory", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "dir":
        return str(tmp_path / "store")
    if request.param == "memory":
        return f"memory://avatarcast-test-{secrets.token_hex(4)}/arts"
    return request.getfixturevalue("s3_bucket") + "/prefix/arts"


def test_the_store_contract(store_url: str, tmp_path: Path) -> None:
    st = open_store(store_url)
    assert not st.exists("a.npz")
    with pytest.raises(ArtifactNotFound):
        st.get("a.npz")
    url = st.put("a.npz", b"first")
    assert url == st.url("a.npz") and url.startswith(st.root) and st.exists("a.npz")
    assert st.put("a.npz", b"second") == url and st.get("a.npz") == b"second"  # replaced whole
    assert fetch(url) == b"second"  # by URL, as another machine reads what the index names
    big = tmp_path / "clip.mp4"
    big.write_bytes(os.urandom(3 << 20))  # several read blocks
    st.put_file("clip.mp4", big)
    st.get_file("clip.mp4", tmp_path / "back" / "clip.mp4")
    assert (tmp_path / "back" / "clip.mp4").read_bytes() == big.read_bytes()
    fetch_to(st.url("clip.mp4"), tmp_path / "again.mp4")
    assert (tmp_path / "again.mp4").read_bytes() == big.read_bytes()
    st.delete("a.npz")
    st.delete("a.npz")  # a missing one is no error
    assert not st.exists("a.npz")
    with pytest.raises(ArtifactNotFound):
        st.get_file("a.npz", tmp_path / "no.npz")
    assert not (tmp_path / "no.npz").exists()
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError, match="one path segment"):
            st.put(bad, b"x")
    # a second store object on the same URL (another process) sees the same artefacts
    assert open_store(store_url).get("clip.mp4") == big.read_bytes()


def test_a_local_store_writes_atomically(tmp_path: Path) -> None:
    st = FsspecStore(tmp_path / "d")
    assert st.local and st.root == str(tmp_path / "d")
    st.put("x.npz", b"1" * 1000)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x.npz"]  # no temporary file left
    assert oct((tmp_path / "d" / "x.npz").stat().st_mode & 0o777) == "0o644"  # readable by other replicas' users

    class Boom(Exception):
        pass

    def failing(f):  # the write dies half-way: the old artefact stays whole, no temporary file remains
        f.write(b"half")
        raise Boom

    from avatarcast.artifacts import _write_atomic

    with pytest.raises(Boom):
        _write_atomic(tmp_path / "d" / "x.npz", failing)
    assert (tmp_path / "d" / "x.npz").read_bytes() == b"1" * 1000
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x.npz"]
    # a file already in place is not copied onto itself
    assert st.put_file("x.npz", tmp_path / "d" / "x.npz") == str(tmp_path / "d" / "x.npz")
    # a read-only directory is a typed error
    (tmp_path / "ro").mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(ArtifactError):
            FsspecStore(tmp_path / "ro").put("y", b"1")


def test_store_under_the_artifact_url(tmp_path: Path) -> None:
    assert store_under("", "clips") is None  # the default: each cache keeps its own directory
    st = store_under(str(tmp_path) + "/", "clips")
    assert st is not None and st.root == str(tmp_path / "clips")
    with pytest.raises(ArtifactError):
        open_store("nosuchprotocol://x/y")
