"""A TOML file of settings (`--config`, or AVATARCAST_CONFIG): read into Settings' fields, and the settings
written back as TOML (`avatarcast serve --print-config`). The fields themselves live in realtime/settings.py.

A key is a field's name (`max_sessions = 16`). Tables only group: inside `[wan]`, `dtype` is `wan_dtype` where
that field exists, else `dtype` itself; so `[asr] model = "base"`, `[server] port = 9000` and a flat file mean
the same. Booleans are accepted for the 0/1 switches.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
from pathlib import Path
from typing import Any

from avatarcast.engines.errors import AvatarcastError, ErrorCode

SECRETS = ("auth_secret",)  # never printed


class SettingsFileError(AvatarcastError, ValueError):
    """A settings file that cannot be read, or a key or value that is not a setting."""

    code = ErrorCode.START_FAILED


def read(path: str | Path, cls: type) -> dict[str, Any]:
    """The settings a TOML file sets, as {field name: value} of the field's type. Raises SettingsFileError."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsFileError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsFileError(f"config file {path}: not TOML: {exc}") from None
    types = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        pairs = (
            [(_field(f"[{key}] {k}", [f"{key}_{k}", k], types, path), v) for k, v in value.items()]
            if isinstance(value, dict)
            else [(_field(key, [key], types, path), value)]
        )
        for name, v in pairs:
            if name in out:
                raise SettingsFileError(f"config file {path}: {name} is set twice")
            out[name] = _typed(name, types[name], v, path)
    return out


def _field(shown: str, candidates: list[str], types: dict[str, str], path: str | Path) -> str:
    name = next((c for c in candidates if c in types), None)
    if name is None:
        close = difflib.get_close_matches(candidates[0], list(types), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SettingsFileError(f"config file {path}: unknown setting {shown}{hint}")
    return name


def _typed(name: str, kind: str, v: Any, path: str | Path) -> Any:
    if kind == "int" and isinstance(v, bool):
        return int(v)  # the 0/1 switches: true/false
    ok = {"int": (int,), "float": (int, float), "str": (str,)}.get(kind, ())
    if not isinstance(v, ok) or isinstance(v, bool):
        raise SettingsFileError(f"config file {path}: {name} must be {kind}, got {v!r}")
    return float(v) if kind == "float" else v


def render(settings: Any, sources: dict[str, str]) -> str:
    """Every setting as TOML, each with where its value came from; a file --config can read back."""
    lines = ["# avatarcast settings: flag > environment > config file > default"]
    for f in dataclasses.fields(settings):
        v = getattr(settings, f.name)
        src = sources.get(f.name, "default")
        if f.name in SECRETS and v:
            lines.append(f"# {f.name} = (set, not shown)  # {src}")
            continue
        text = json.dumps(v, ensure_ascii=False) if isinstance(v, str) else repr(v)
        lines.append(f"{f.name} = {text}" + ("" if src == "default" else f"  # {src}"))
    return "\n".join(lines) + "\n"
