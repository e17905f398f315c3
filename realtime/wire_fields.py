"""Frozen dataclasses as JSON messages: a field's wire name and description, the dict it becomes, the
dataclass a received dict becomes, and its JSON Schema (docs/protocol.schema.json is built from these).

A field's metadata comes from `wire(...)`: `doc` (its description), `name` (its key on the wire, where the
Python name cannot be: `from`), `part` ("payload" by default; "envelope" fields are the event's own
`t`/`seq`, "extra" holds keys this version does not know) and any other JSON Schema keywords (an enum,
bounds), which are merged into the field's generated schema.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any, Literal, Union

from avatarcast.engines.errors import AvatarcastError, ErrorCode

KEY = "avatarcast.wire"


class ProtocolError(AvatarcastError, ValueError):
    """A message that does not have the shape its type declares (a missing field, an unknown value)."""

    code = ErrorCode.BAD_MESSAGE


def wire(doc: str = "", *, name: str | None = None, part: str = "payload", **schema: Any) -> dict[str, Any]:
    """Field metadata: `dataclasses.field(metadata=wire("the utterance", minimum=0))`."""
    return {KEY: {"doc": doc, "name": name, "part": part, "schema": schema}}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved annotations (resolving them is slow; the classes are fixed)."""
    return typing.get_type_hints(cls)


def _meta(f: dataclasses.Field) -> dict[str, Any]:
    return f.metadata.get(KEY) or {"doc": "", "name": None, "part": "payload", "schema": {}}


def payload_fields(cls: type) -> list[tuple[dataclasses.Field, str]]:
    """(field, wire name) of the fields that travel as the message's own keys."""
    return [(f, _meta(f)["name"] or f.name) for f in dataclasses.fields(cls) if _meta(f)["part"] == "payload"]


def _extra_field(cls: type) -> str | None:
    return next((f.name for f in dataclasses.fields(cls) if _meta(f)["part"] == "extra"), None)


def to_wire(obj: Any) -> Any:
    """A dataclass (and what it holds) as plain JSON values; unknown keys kept in its extra field go back out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # an optional field left at None stays off the wire (absent and null mean the same there)
        out = {
            name: to_wire(v)
            for f, name in payload_fields(type(obj))
            if (v := getattr(obj, f.name)) is not None or f.default is not None
        }
        extra = _extra_field(type(obj))
        if extra:
            out.update(getattr(obj, extra))
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_wire(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    return obj


def from_wire(cls: type, data: Any, **envelope: Any) -> Any:
    """The dataclass `cls` from a received dict. Raises ProtocolError for a missing required key or a value
    outside a declared enumeration; keys it does not know go to the extra field (or are dropped)."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = dict(envelope)
    known = set()
    for f, name in payload_fields(cls):
        known.add(name)
        if name in data:
            kwargs[f.name] = _value(hints[f.name], data[name], f"{cls.__name__}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{cls.__name__}: missing {name!r}")
    extra = _extra_field(cls)
    if extra:
        kwargs[extra] = {k: v for k, v in data.items() if k not in known}
    return cls(**kwargs)


def _value(tp: Any, v: Any, where: str) -> Any:
    """Enum members and nested dataclasses from their JSON form; anything else as received."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if v is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _value(inner[0], v, where) if len(inner) == 1 else v
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(v)
        except ValueError:
            raise ProtocolError(f"{where}: {v!r} is not one of {[m.value for m in tp]}") from None
    if origin is Literal and v not in typing.get_args(tp):
        raise ProtocolError(f"{where}: {v!r} is not one of {list(typing.get_args(tp))}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_wire(tp, v)
    return v


def json_schema(cls: type, *, closed: bool = True) -> dict[str, Any]:
    """The JSON Schema (2020-12) of `cls`'s wire form: an object with its payload fields; `closed`: no other keys."""
    hints = _hints(cls)
    props: dict[str, Any] = {}
    required = []
    for f, name in payload_fields(cls):
        meta = _meta(f)
        s = type_schema(hints[f.name])
        if meta["doc"]:
            s = {"description": meta["doc"], **s}
        s.update(meta["schema"])
        if f.default is not dataclasses.MISSING and isinstance(f.default, (str, int, float, bool)):
            s["default"] = f.default.value if isinstance(f.default, enum.Enum) else f.default
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(name)
        props[name] = s
    out: dict[str, Any] = {"type": "object"}
    doc = (cls.__doc__ or "").strip()
    if doc and not doc.startswith(cls.__name__ + "("):  # dataclass's generated signature is no description
        out["description"] = " ".join(doc.split())
    out["properties"] = props
    if required:
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    return out


def type_schema(tp: Any) -> dict[str, Any]:
    """JSON Schema of a Python annotation: str, int, float, bool, None, Literal, enums, lists, str-keyed
    dicts, unions and nested dataclasses."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None) or tp is None:
        return {"type": "null"}
    if origin in (Union, types.UnionType):
        return {"anyOf": [type_schema(a) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, tuple):
        return {"type": "array", "items": type_schema(args[0])} if args else {"type": "array"}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1])}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return json_schema(tp)
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if tp in simple:
        return {"type": simple[tp]}
    if tp is Any:
        return {}
    raise TypeError(f"no JSON Schema for {tp!r}")


def payload_model(cls: type, name: str) -> type:
    """A pydantic model of an event's payload (its own keys, no envelope): the HTTP body that carries the same
    facts as the WebSocket event, so the two cannot drift apart."""
    import pydantic

    hints = _hints(cls)
    fields: dict[str, Any] = {
        wire_name: (hints[f.name], pydantic.Field(description=_meta(f)["doc"] or None))
        for f, wire_name in payload_fields(cls)
    }
    return pydantic.create_model(name, **fields)
