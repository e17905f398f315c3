"""A TOML file of settings (`--config`, or AVATARCAST_CONFIG), read into Settings' fields, and the settings written
back as nested TOML (`avatarcast serve --print-config`). The tables and their keys are realtime/settings_model.py's.

A table is a subsystem and its keys drop the table's prefix: `[wan] dtype` is wan_dtype, `[asr] model` asr_model,
`[cluster] max_replicas` ray_max_replicas, `[server] port` port. Files written before the tables keep working: a
top-level key may be any setting's flat name (`max_sessions = 16`, `wan_dtype = "bfloat16"`), and a table also
takes the flat names of its own settings (`[wan] wan_dtype`). Booleans are accepted for the 0/1 switches.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from pathlib import Path
from typing import Any

from avatarcast.realtime.settings_model import GROUPS, SettingsError, place

SECRETS = ("auth_secret", "turn_secret")  # never printed


class SettingsFileError(SettingsError):
    """A settings file that cannot be read, or a key or value in it that is not a setting."""


def read(path: str | Path, cls: type) -> dict[str, Any]:
    """The settings a TOML file sets, as {field name: value as written}. Raises SettingsFileError."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsFileError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsFileError(f"config file {path}: not TOML: {exc}") from None
    ints = {n for n, t in typing.get_type_hints(cls).items() if t is int}
    names = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            pairs = [(_in_table(key, k, names, path), v) for k, v in value.items()]
        else:
            pairs = [(_top_level(key, names, path), value)]
        for name, v in pairs:
            if name in out:
                raise SettingsFileError(f"config file {path}: {name} is set twice")
            out[name] = int(v) if name in ints and isinstance(v, bool) else v  # the 0/1 switches: true/false
    return out


def _top_level(key: str, names: list[str], path: str | Path) -> str:
    if key in names:
        return key
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise SettingsFileError(f"config file {path}: unknown setting {key}{hint}")


def _in_table(table: str, key: str, names: list[str], path: str | Path) -> str:
    if table not in GROUPS:
        raise SettingsFileError(f"config file {path}: unknown table [{table}] (tables: {', '.join(GROUPS)})")
    mine = {place(n)[1]: n for n in names if place(n)[0] == table}
    if key in mine:
        return mine[key]
    if key in mine.values():
        return key
    elsewhere = next((n for n in (key, f"{table}_{key}") if n in names), None)
    if elsewhere:
        t, k = place(elsewhere)
        raise SettingsFileError(f"config file {path}: [{table}] {key} is [{t}] {k}")
    close = difflib.get_close_matches(key, list(mine), n=1)
    hint = f" (did you mean [{table}] {close[0]}?)" if close else ""
    raise SettingsFileError(f"config file {path}: unknown setting [{table}] {key}{hint}")


def render(settings: Any, sources: dict[str, str]) -> str:
    """Every setting as nested TOML, each with where its value came from; a file --config reads back."""
    tables: dict[str, list[str]] = {t: [] for t in GROUPS}
    for f in dataclasses.fields(settings):
        table, key = place(f.name)
        v = getattr(settings, f.name)
        src = sources.get(f.name, "default")
        if f.name in SECRETS and v:
            tables[table].append(f"# {key} = (set, not shown)  # {src}")
            continue
        text = json.dumps(v, ensure_ascii=False) if isinstance(v, str) else repr(v)
        tables[table].append(f"{key} = {text}" + ("" if src == "default" else f"  # {src}"))
    lines = ["# avatarcast settings: flag > environment > config file > default"]
    for table, body in tables.items():
        if body:
            lines += ["", f"[{table}]", *body]
    return "\n".join(lines) + "\n"
