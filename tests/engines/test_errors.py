"""One error tree and one table: every failure's wire code, HTTP status and WebSocket close code."""

from __future__ import annotations

import ast
import importlib
import re
from collections import Counter
from pathlib import Path

from avatarcast.engines.errors import CLOSE_INTERNAL, AvatarcastError, EngineError, ErrorCode

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("realtime", "engines", "templates")


def test_the_protocol_page_prints_the_table() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (\d+|—) \| (\d+|—) \|", doc, re.M)
    printed = Counter((code, None if s == "—" else int(s), None if c == "—" else int(c)) for code, s, c in rows)
    assert printed == Counter((e.wire, e.status, e.close) for e in ErrorCode)


def test_each_failure_answers_by_the_table() -> None:
    from avatarcast.realtime.audio import AudioDecodeError
    from avatarcast.realtime.hub import HubError

    busy = HubError(ErrorCode.BUSY, "all 8 session slots are taken")
    assert (busy.status, busy.close_code, busy.retry_after, busy.body()) == (
        503,
        1013,
        "5",
        {"error": "busy", "message": "all 8 session slots are taken"},
    )
    limited = HubError(ErrorCode.RATE_LIMITED, "slow down", retry_after="3")
    assert (limited.status, limited.close_code, limited.retry_after) == (429, 1008, "3")
    assert HubError(ErrorCode.BAD_AVATAR, "no avatar 'x'").retry_after is None
    # an empty body and a clip that decodes to nothing share the code "empty", not the status
    empty = AudioDecodeError("empty", "the stream decoded to zero samples")
    assert (empty.status, empty.body()["error"], empty.reason) == (422, "empty", "empty")
    assert ErrorCode.EMPTY.status == 400 and str(ErrorCode.EMPTY) == "empty"
    assert isinstance(empty, ValueError)  # callers that caught ValueError still do
    assert AudioDecodeError("too_long").status == 413 and AudioDecodeError("unsupported").status == 415
    assert AvatarcastError("?").close_code == CLOSE_INTERNAL  # an event-only code never closes a socket cleanly


def _error_classes() -> list[tuple[str, str]]:
    """(module, class) of every exception class defined in the shipped packages."""
    out = []
    for pkg in SHIPPED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in tree.body:
                if isinstance(node, ast.ClassDef) and any(
                    isinstance(b, ast.Name)
                    and (
                        b.id.endswith("Error")
                        or b.id.endswith("Exception")
                        or b.id in ("AvatarcastError", "EngineError")
                    )
                    for b in node.bases
                ):
                    out.append(("avatarcast." + ".".join(path.relative_to(ROOT).with_suffix("").parts), node.name))
    return out


def test_every_exception_the_packages_define_is_in_the_tree() -> None:
    classes = _error_classes()
    assert len(classes) >= 12
    for module, name in classes:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, AvatarcastError), f"{module}.{name} is outside the error tree"
    from avatarcast.engines.tiny.weights import WeightsError

    assert issubclass(WeightsError, EngineError) and issubclass(WeightsError, FileNotFoundError)
    assert WeightsError("missing").body() == {"error": "engine_unavailable", "message": "missing"}
