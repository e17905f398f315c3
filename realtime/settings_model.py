"""The settings as one nested pydantic-settings model, a table per subsystem, built from Settings' flat fields.

Settings (realtime/settings.py) keeps the one declaration of each field, flat, as the code reads it
(`settings.steps`). Here they are grouped into tables ([engine], [wan], [asr], [server], [ice], [limits], [load],
[cluster]: GROUPS) and each layer's values are validated by their types; `layer()` stacks the layers, flag > env >
file > default, and a value of the wrong type fails naming the field, where it came from and the value.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from avatarcast.engines.errors import AvatarcastError, ErrorCode

# table -> the fields it holds (fnmatch patterns, the first table that matches wins); a new field lands in [server]
# unless a pattern here names it. Keys are unique within a table (model() checks).
GROUPS: dict[str, tuple[str, ...]] = {
    "engine": (
        "engine",
        "backend",
        "steps",
        "threads",
        "device",
        "weights",
        "motion_draw",
        "avatars",
        "precompute",
        "cache_dir",
    ),
    "wan": ("checkpoint", "wan_*"),
    "asr": ("asr_*", "language"),
    "ice": ("ice_servers", "turn_*"),
    "limits": ("max_*", "rate_*", "session_idle_s", "ws_idle_s", "header_timeout_s", "body_min_bytes_per_s"),
    "load": ("admission", "capacity_*", "ladder", "ladder_*"),
    "cluster": ("ray", "ray_*", "engine_replicas", "redis_url", "artifact_url"),
    "server": ("*",),
}
PREFIX = {"wan": "wan_", "asr": "asr_", "ice": "ice_", "cluster": "ray_"}  # dropped from the keys of that table


class SettingsError(AvatarcastError, ValueError):
    """A setting of the wrong type, or a key that is no setting; the message names the field, source and value."""

    code = ErrorCode.START_FAILED


@functools.cache
def place(name: str) -> tuple[str, str]:
    """Field `name`'s table and its key there: wan_dtype -> ("wan", "dtype"), port -> ("server", "port")."""
    table = next(t for t, patterns in GROUPS.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns))
    return table, name.removeprefix(PREFIX.get(table, ""))


class NestedSettings(BaseSettings):
    """The root of the model: one field per table, each a model of that table's settings."""

    model_config = SettingsConfigDict(extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # only what layer() hands over: it reads the flags, AVATARCAST_* and the file, so it knows each value's source
        return (init_settings,)


@functools.cache
def table_models(cls: type) -> dict[str, type[BaseModel]]:
    """A model per table of the dataclass `cls` (Settings): its fields' types and defaults, grouped by GROUPS."""
    hints = typing.get_type_hints(cls)
    tables: dict[str, dict[str, Any]] = {t: {} for t in GROUPS}
    for f in dataclasses.fields(cls):
        table, key = place(f.name)
        if key in tables[table]:
            raise TypeError(f"settings {f.name} and another are both [{table}] {key}")
        default = f.default if f.default_factory is dataclasses.MISSING else Field(default_factory=f.default_factory)
        tables[table][key] = (hints[f.name], default)
    config = ConfigDict(extra="forbid")
    return {t: create_model(f"{t.title()}Settings", __config__=config, **kw) for t, kw in tables.items() if kw}


@functools.cache
def model(cls: type) -> type[NestedSettings]:
    """The nested model of the dataclass `cls`: a field per table, each holding that table's model."""
    fields: dict[str, Any] = {t: (m, Field(default_factory=m)) for t, m in table_models(cls).items()}
    return create_model("AvatarcastSettings", __base__=NestedSettings, **fields)


def nest(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{field: value} -> {table: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for name, v in values.items():
        table, key = place(name)
        out.setdefault(table, {})[key] = v
    return out


def validated(
    cls: type,
    values: Mapping[str, Any],
    sources: Mapping[str, str],
    *,
    strict: bool,
    error: type[SettingsError] = SettingsError,
) -> dict[str, Any]:
    """One layer's {field: value}, checked and converted by the model (strict: no text for numbers).
    Raises `error` naming each bad field, its source and its value."""
    by_place = {place(n): n for n in values}
    out: dict[str, Any] = {}
    bad = []
    # table by table: BaseSettings validates through its __init__, which would drop `strict`
    for table, given in nest(values).items():
        try:
            m = table_models(cls)[table].model_validate(given, strict=strict)
        except ValidationError as exc:
            for e in exc.errors():
                name = by_place.get((table, str(e["loc"][0])), f"[{table}] {e['loc'][0]}")
                where = f" ({sources[name]})" if name in sources else ""
                bad.append(f"{name} = {e['input']!r}{where}: {e['msg'].lower()}")
            continue
        out.update({by_place[table, k]: getattr(m, k) for k in given})
    if bad:
        raise error("; ".join(bad))
    return out


Layer = tuple[Mapping[str, Any], Mapping[str, str], bool, type[SettingsError]]  # values, their sources, strict, error


def layer(cls: type, layers: list[Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """Layers of ({field: value}, {field: source}, strict, error), lowest first, over the defaults: every field's
    value (the nested model validated, as {field: value}) and each set field's source."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for vals, srcs, strict, error in layers:
        values.update(validated(cls, vals, srcs, strict=strict, error=error))
        sources.update({n: srcs[n] for n in vals})
    return flat(cls, model(cls)(**nest(values))), sources


def flat(cls: type, nested: BaseModel) -> dict[str, Any]:
    """The nested model's values as {field: value}, the keyword arguments of `cls` (Settings)."""
    return {f.name: getattr(getattr(nested, t), k) for f in dataclasses.fields(cls) for t, k in [place(f.name)]}
