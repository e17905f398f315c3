"""The HTTP contract: /openapi.json says what the server enforces and answers, and schemathesis (every check, the
stateful phase through the links from session creation) finds no failure against a real server on loopback.

CI runs a few examples per operation; the long run (docs/security.md):
AVATARCAST_CONTRACT_EXAMPLES=400 python -m pytest -q tests/realtime/test_contract.py -k schemathesis -s
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from avatarcast.engines.errors import ErrorCode
from avatarcast.realtime.auth import mint
from avatarcast.realtime.commands import MAX_SAY_CHARS
from avatarcast.realtime.http_contract import GUARD, LINKS_FROM_SESSION
from avatarcast.realtime.session import REACTION_EMOTIONS
from tests.conftest import running_server

SECRET = "contract-secret-0123456789abcdef012345"
HERE = Path(__file__).parent / "contract"
EXAMPLES = int(os.environ.get("AVATARCAST_CONTRACT_EXAMPLES", "0"))  # 0: the CI run
MAX_RENDER_S = 1.0  # short renders: the clip API answers within schemathesis' request timeout


@pytest.fixture(scope="module")
def server() -> Any:
    # its own server: auth on (the bearer scheme and 401s are part of the contract), room for the sessions a run
    # makes (they close 5 s after it stops using them), and limits high enough that the routes' logic is reached
    # rather than 429 (429 stays documented; tests/realtime/test_hardening.py covers it)
    with running_server(
        auth_secret=SECRET,
        admission=0,
        ladder=0,
        max_sessions=256,
        session_idle_s=5.0,
        max_render_seconds=MAX_RENDER_S,
        rate_http_per_s=10_000.0,
        rate_sessions_per_min=100_000.0,
    ) as (url, _hub):
        yield url


def auth() -> dict[str, str]:
    return {"Authorization": "Bearer " + mint(SECRET, "contract", 3600)}


def spec_of(url: str) -> dict[str, Any]:
    return httpx.get(url + "/openapi.json").json()


def error_enum(op: dict[str, Any], status: int) -> list[str]:
    return op["responses"][str(status)]["content"]["application/json"]["schema"]["properties"]["error"]["enum"]


def test_the_description_holds_the_limits_codes_auth_and_links(server: str) -> None:
    spec = spec_of(server)
    schemas = spec["components"]["schemas"]
    say = schemas["SayRequest"]["properties"]["text"]
    assert (say["minLength"], say["maxLength"], say["pattern"]) == (1, MAX_SAY_CHARS, r"\S")
    assert schemas["EmotionRequest"]["properties"]["label"]["enum"] == list(REACTION_EMOTIONS)
    assert _branch(schemas["RenderRequest"]["properties"]["seconds"])["maximum"] == MAX_RENDER_S
    languages = _branch(schemas["SessionCreate"]["properties"]["language"])["enum"]
    assert {"", "auto", "en"} <= set(languages)
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "`avatarcast token`",
    }
    assert "HTTPValidationError" not in json.dumps(spec)  # FastAPI's 422 body: the API answers with its own
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert {str(c.status) for c in GUARD} <= set(op["responses"]), (method, path)
            assert ("security" in op) == path.startswith("/v1/"), (method, path)
    create = spec["paths"]["/v1/sessions"]["post"]
    assert set(create["responses"]["201"]["links"]) == set(LINKS_FROM_SESSION)
    assert error_enum(create, 503) == ["avatars_full", "busy", "shutting_down", "starting"]
    assert "401" in create["responses"] and "bad_avatar" in error_enum(create, 400)


def _branch(prop: dict[str, Any]) -> dict[str, Any]:
    return next((b for b in prop.get("anyOf", []) if b.get("type") != "null"), prop)


def test_refused_requests_answer_with_the_typed_error_body(server: str) -> None:
    with httpx.Client(base_url=server, headers=auth()) as c:
        sid = c.post("/v1/sessions", json={}).json()["id"]
        cases = [
            ("/v1/sessions", {"quality": "5"}, 422, ErrorCode.BAD_MESSAGE),  # strict: a string is not an integer
            ("/v1/sessions", {"avatar": "PIP"}, 400, ErrorCode.BAD_AVATAR),
            ("/v1/clips", {"emotion": "happy", "seed": -1}, 400, ErrorCode.BAD_CLIP_REQUEST),
            (f"/v1/sessions/{sid}/say", {"text": " \t"}, 422, ErrorCode.BAD_MESSAGE),
            (f"/v1/sessions/{sid}/emotion", {"label": "listening"}, 400, ErrorCode.UNKNOWN_EMOTION),
        ]
        for path, body, status, code in cases:
            r = c.post(path, json=body)
            assert (r.status_code, r.json()["error"]) == (status, code.wire), (path, body, r.text)
        r = c.post(f"/v1/sessions/{sid}/say", content=b"\xff\xfe{", headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]) == (422, "bad_json"), r.text
        assert c.post("/v1/sessions", json={"quality": 83.0}).status_code == 201  # JSON Schema: 83.0 is an integer


def test_schemathesis_finds_no_failure(server: str, tmp_path: Path) -> None:
    examples = EXAMPLES or 3
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        server + "/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(examples),
        "--seed",
        "20261204",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--header",
        f"Authorization: {auth()['Authorization']}",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    if not EXAMPLES:
        cmd += ["--generation-deterministic", "--no-shrink"]
    root = str(Path(__file__).parents[2])  # where the hooks module is imported from; its cache goes to tmp_path
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "SCHEMATHESIS_HOOKS": "tests.realtime.contract.hooks", "NO_COLOR": "1"}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600)
    out = run.stdout + run.stderr
    counts = re.search(r"(\d+) generated", out)
    print(f"schemathesis: {counts.group(0) if counts else '?'} ({examples} examples per operation)")
    assert run.returncode == 0 and counts, out[-12000:]
