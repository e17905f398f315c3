"""Where artefacts (rendered clips, latents-cache entries) live: a directory by default, any fsspec URL when set.

`ArtifactStore` is the contract; `FsspecStore` is its one implementation. A local path gets atomic writes
(a temporary file renamed into place, so no reader sees half a file); an object store (s3:// through s3fs,
the `cluster` extra) writes whole objects, which is atomic there. Credentials and endpoints come from the
backend's own configuration (for S3: AWS_* variables, ~/.aws, or FSSPEC_S3_* variables), not from avatarcast.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import fsspec
from fsspec.implementations.local import LocalFileSystem

from avatarcast.engines.errors import AvatarcastError


class ArtifactError(AvatarcastError, OSError):
    """The store did not answer or refused (permissions, network, a full disk)."""


class ArtifactNotFound(ArtifactError, FileNotFoundError):
    """No artefact of that name (or at that URL)."""


class ArtifactStore(Protocol):
    """A flat namespace of named artefacts under one root."""

    root: str  # the URL (or absolute path) every name is under
    local: bool  # True: a directory of this machine (artefacts need no copying to be served)

    def url(self, name: str) -> str:
        """Where `name` lives: an absolute path for local stores, else a URL such as s3://bucket/prefix/name."""
        ...

    def put(self, name: str, data: bytes) -> str:
        """Stores `data` as `name` (whole or not at all); returns its url."""
        ...

    def put_file(self, name: str, path: str | Path) -> str:
        """Stores the local file `path` as `name`; returns its url."""
        ...

    def get(self, name: str) -> bytes: ...

    def get_file(self, name: str, path: str | Path) -> None:
        """Copies `name` to the local file `path` (atomically: a temporary file, then a rename)."""
        ...

    def exists(self, name: str) -> bool: ...

    def delete(self, name: str) -> None:
        """Removes `name`; a missing one is no error."""
        ...


def _wrapped(what: str, exc: BaseException) -> ArtifactError:
    kind = ArtifactNotFound if isinstance(exc, FileNotFoundError) else ArtifactError
    return kind(f"{what}: {type(exc).__name__}: {exc}")


def _write_atomic(path: Path, write: Any) -> None:
    """write(file) into a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:24]}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; other replicas may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FsspecStore:
    """ArtifactStore over fsspec: a path or file:// URL (local, atomic writes), memory://, s3://, gs://, ..."""

    def __init__(self, url: str | Path, **storage_options: Any) -> None:
        fs, root = fsspec.core.url_to_fs(os.path.expanduser(str(url)), **storage_options)
        self.fs: Any = fs
        self.local = isinstance(fs, LocalFileSystem)
        self._root = root.rstrip("/")
        self.root = self._root if self.local else fs.unstrip_protocol(self._root)

    def __repr__(self) -> str:
        return f"FsspecStore({self.root!r})"

    def _path(self, name: str) -> str:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"artefact names are one path segment, got {name!r}")
        return f"{self._root}/{name}"

    def url(self, name: str) -> str:
        p = self._path(name)
        return p if self.local else self.fs.unstrip_protocol(p)

    def put(self, name: str, data: bytes) -> str:
        p = self._path(name)
        try:
            if self.local:
                _write_atomic(Path(p), lambda f: f.write(data))
            else:
                self.fs.pipe_file(p, data)
        except OSError as exc:
            raise _wrapped(f"writing {self.url(name)}", exc) from exc
        return self.url(name)

    def put_file(self, name: str, path: str | Path) -> str:
        p = self._path(name)
        try:
            if self.local:
                if os.path.abspath(path) != p:  # a file already in place is stored
                    with open(path, "rb") as src:
                        _write_atomic(Path(p), lambda f: _copy(src, f))
            else:
                self.fs.put_file(str(path), p)
        except OSError as exc:
            raise _wrapped(f"writing {self.url(name)}", exc) from exc
        return self.url(name)

    def get(self, name: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._path(name)))
        except OSError as exc:
            raise _wrapped(f"reading {self.url(name)}", exc) from exc

    def get_file(self, name: str, path: str | Path) -> None:
        try:
            with self.fs.open(self._path(name), "rb") as src:
                _write_atomic(Path(path), lambda f: _copy(src, f))
        except OSError as exc:
            raise _wrapped(f"reading {self.url(name)}", exc) from exc

    def exists(self, name: str) -> bool:
        p = self._path(name)
        try:
            if not self.local:
                self.fs.invalidate_cache(p)  # another machine may have written it since a listing was cached
            return bool(self.fs.exists(p))
        except OSError as exc:
            raise _wrapped(f"looking up {self.url(name)}", exc) from exc

    def delete(self, name: str) -> None:
        p = self._path(name)
        try:
            self.fs.rm_file(p)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _wrapped(f"deleting {self.url(name)}", exc) from exc


def _copy(src: Any, dst: Any, block: int = 1 << 20) -> None:
    while chunk := src.read(block):
        dst.write(chunk)


def fetch(url: str) -> bytes:
    """The bytes at any fsspec URL or local path (an artefact another machine published)."""
    try:
        with fsspec.open(url, "rb") as f:
            return bytes(f.read())
    except OSError as exc:
        raise _wrapped(f"reading {url}", exc) from exc


def fetch_to(url: str, path: str | Path) -> None:
    """Copies the artefact at any fsspec URL or path to the local file `path` (atomically)."""
    try:
        with fsspec.open(url, "rb") as src:
            _write_atomic(Path(path), lambda f: _copy(src, f))
    except OSError as exc:
        raise _wrapped(f"reading {url}", exc) from exc


def store_under(url: str, folder: str) -> ArtifactStore | None:
    """The store `folder` under the --artifact-url `url`; None when it is empty (each cache keeps its directory)."""
    return open_store(url.rstrip("/") + "/" + folder) if url else None


def open_store(url: str | Path) -> ArtifactStore:
    """The store at a path or fsspec URL (an s3:// URL needs s3fs: `pip install 'avatarcast[cluster]'`)."""
    try:
        return FsspecStore(url)
    except ImportError as exc:
        hint = "s3:// needs the `cluster` extra: pip install 'avatarcast[cluster]'"
        raise ArtifactError(f"{url}: {exc} ({hint})") from exc
    except ValueError as exc:  # fsspec: "Protocol not known"
        raise ArtifactError(f"{url}: {exc}") from exc


__all__ = [
    "ArtifactError",
    "ArtifactNotFound",
    "ArtifactStore",
    "FsspecStore",
    "fetch",
    "fetch_to",
    "open_store",
    "store_under",
]
