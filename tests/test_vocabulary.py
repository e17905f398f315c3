"""One home for the vocabulary (avatarcast/vocabulary.py): the templates' emotion order is the wire's and the
weights', and no other module declares the emotion list or the frame rate again."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from avatarcast import vocabulary
from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.engines.tiny.weights import DEFAULT_DIR, MANIFEST, WeightsError, load_manifest
from avatarcast.realtime.protocol import FRAME_HEADER, pack_frame, unpack_frame
from avatarcast.templates import DEFAULT_PATH

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("realtime", "engines", "templates", "avatarcast", "tools")
HOME = ROOT / "avatarcast" / "vocabulary.py"


def _template_names() -> list[str]:
    """The names in templates/emotions.json, read straight from the file."""
    return [e["name"] for e in json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))["emotions"]]


def test_the_emotions_are_the_templates_in_file_order() -> None:
    assert vocabulary.EMOTIONS == tuple(_template_names())
    assert TinyConfig().emotions == vocabulary.EMOTIONS


def test_the_wire_emotion_index_is_the_templates_order() -> None:
    for i, name in enumerate(_template_names()):
        msg = pack_frame(3, 0.375, 1.0, "jpeg", "cache", name, b"img")
        assert msg[FRAME_HEADER.size - 2] == i
        head, image = unpack_frame(msg)
        assert head.emotion == name and image == b"img"


def test_the_frame_header_bytes_are_unchanged() -> None:
    """The wire codes clients already decode: formats jpeg 1 / webp 2, sources idle 0 .. sampler 3, sad = 5."""
    msg = pack_frame(7, 0.875, 1_700_000_000.5, "webp", "sampler", "sad", b"\xff")
    assert msg == (
        b"AVF1"
        + (7).to_bytes(4, "little")
        + bytes.fromhex("000000000000ec3f")
        + bytes.fromhex("00002040fc54d941")
        + bytes([2, 3, 5, 0])
        + b"\xff"
    )
    assert pack_frame(0, 0.0, 0.0, "jpeg", "idle", "idle", b"")[24:28] == bytes([1, 0, 0, 0])
    assert pack_frame(0, 0.0, 0.0, "jpeg", "listening", "listening", b"")[24:28] == bytes([1, 1, 1, 0])


def test_the_api_accepts_exactly_the_wire_image_formats() -> None:
    import pydantic

    from avatarcast.realtime.server import SessionCreate

    for fmt in vocabulary.IMAGE_FORMATS:
        assert SessionCreate(image_format=fmt).image_format == fmt
    assert SessionCreate().image_format is None
    with pytest.raises(pydantic.ValidationError):
        SessionCreate(image_format="png")
    field = SessionCreate.model_json_schema()["properties"]["image_format"]  # what /openapi.json publishes
    assert [set(o["enum"]) for o in field["anyOf"] if "enum" in o] == [set(vocabulary.IMAGE_FORMATS)]


def _weights_copy(tmp_path: Path, **config) -> Path:
    d = tmp_path / "w"
    d.mkdir(parents=True)
    shutil.copy(DEFAULT_DIR / MANIFEST, d / MANIFEST)
    m = json.loads((d / MANIFEST).read_text())
    m["config"].update(config)
    (d / MANIFEST).write_text(json.dumps(m))
    return d


def test_the_weights_manifest_must_match_the_vocabulary(tmp_path: Path) -> None:
    assert load_manifest().config.emotions == vocabulary.EMOTIONS  # the shipped weights do
    swapped = list(vocabulary.EMOTIONS)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    with pytest.raises(WeightsError, match="order must match"):
        load_manifest(_weights_copy(tmp_path / "a", emotions=swapped))
    with pytest.raises(WeightsError, match="order must match"):
        load_manifest(_weights_copy(tmp_path / "b", emotions=swapped[:-1]))
    with pytest.raises(WeightsError, match="at 12 fps"):
        load_manifest(_weights_copy(tmp_path / "c", fps=12))


# --- nothing declares them again ------------------------------------------------------------------

_RATE_NAME = re.compile(r"(?i)^(fps|frame_s|frame_rate|frames_per_second|time_base)$")


def _number(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def redeclarations(source: str) -> list[str]:
    """Emotion lists written out (a literal naming all, or all but one, of the emotions) and frame rates
    written as numbers (an fps-like name or parameter default set to a number, a Fraction of two numbers)."""
    names = set(vocabulary.EMOTIONS)
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            words = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if len(words & names) >= len(names) - 1:
                out.append(f"line {node.lineno}: an emotion list")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if (
                    isinstance(t, (ast.Name, ast.Attribute))
                    and _RATE_NAME.match(getattr(t, "id", None) or t.attr)
                    and _number(node.value)
                ):
                    out.append(f"line {node.lineno}: a frame rate")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            pos = a.posonlyargs + a.args
            pairs = list(zip(pos[len(pos) - len(a.defaults) :], a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
            out += [
                f"line {node.lineno}: a frame rate default"
                for arg, d in pairs
                if _RATE_NAME.match(arg.arg) and _number(d)
            ]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "Fraction"
            and len(node.args) == 2
            and all(_number(x) for x in node.args)
        ):
            out.append(f"line {node.lineno}: a time base")
    return out


def test_no_module_declares_the_emotions_or_the_frame_rate_again() -> None:
    files = [p for pkg in SCANNED for p in sorted((ROOT / pkg).rglob("*.py")) if p != HOME]
    bad = {str(p.relative_to(ROOT)): found for p in files if (found := redeclarations(p.read_text()))}
    assert bad == {}


def test_the_check_finds_a_planted_declaration() -> None:
    planted = (
        "EMOTIONS = " + repr(tuple(vocabulary.EMOTIONS[1:])) + "\nFPS = 8\nclass C:\n    fps: int = 8\n"
        "def f(x, fps=8.0, *, frame_rate=8):\n    return Fraction(1, 8)\n"
    )
    assert len(redeclarations(planted)) == 6
    assert redeclarations("FPS = vocabulary.FPS\ndef f(fps=FPS):\n    return Fraction(1, fps)\n") == []
