"""The TOML config file: flag > env > file > default, tables that group, clear errors, and `serve --print-config`."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from avatarcast.realtime.cli import build_parser
from avatarcast.realtime.settings import Settings
from avatarcast.realtime.settings_file import SettingsFileError

FILE = """
port = 9001
max_sessions = 3
ladder = false

[asr]
model = "tiny.en"
threads = 1

[wan]
dtype = "bfloat16"

[limits]
rate_http_per_s = 20
"""


def serve_args(*flags: str):
    return build_parser().parse_args(["serve", *flags])


def test_flags_beat_env_beat_the_file_beat_defaults(tmp_path: Path) -> None:
    f = tmp_path / "avatarcast.toml"
    f.write_text(FILE)
    env = {"AVATARCAST_MAX_SESSIONS": "5", "AVATARCAST_CONFIG": str(f)}
    s, src = Settings.resolve(serve_args("--port", "9002"), env)
    assert (s.port, src["port"]) == (9002, "flag --port")
    assert (s.max_sessions, src["max_sessions"]) == (5, "env AVATARCAST_MAX_SESSIONS")
    assert (s.asr_model, s.asr_threads, s.wan_dtype, s.ladder) == ("tiny.en", 1, "bfloat16", 0)
    assert s.rate_http_per_s == 20.0 and isinstance(s.rate_http_per_s, float)  # [limits] only groups
    assert src["wan_dtype"] == f"config file {f}"
    assert s.quality == Settings().quality and "quality" not in src
    flag_file = tmp_path / "other.toml"
    flag_file.write_text("port = 7000\nquality = 50\n")
    s2 = Settings.from_args(serve_args("--config", str(flag_file)), env)  # --config beats AVATARCAST_CONFIG
    assert (s2.port, s2.quality, s2.max_sessions, s2.asr_model) == (7000, 50, 5, "base")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_sesions = 3\n", "unknown setting max_sesions (did you mean max_sessions?)"),
        ("[wan]\nnope = 1\n", "unknown setting [wan] nope"),
        ("port = '80'\n", "port must be int"),
        ("steps = 2.5\n", "steps must be int"),
        ("port = 1\n[server]\nport = 2\n", "port is set twice"),
        ("port = = 1\n", "not TOML"),
    ],
)
def test_a_bad_file_names_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(SettingsFileError, match=re.escape(message)):
        Settings.from_args(serve_args("--config", str(f)), {})
    with pytest.raises(SettingsFileError, match="No such file"):
        Settings.from_args(serve_args("--config", str(tmp_path / "missing.toml")), {})


def test_print_config_is_a_file_config_reads_back(tmp_path: Path) -> None:
    f = tmp_path / "avatarcast.toml"
    f.write_text(FILE + '\nauth_secret = "0123456789abcdef0123456789abcdef-secret"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARCAST_")}
    out = subprocess.run(
        [sys.executable, "-m", "avatarcast.realtime.cli", "serve", "--print-config", "--config", str(f), "--steps=3"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "AVATARCAST_QUALITY": "70"},
    )
    assert out.returncode == 0, out.stderr
    printed = tomllib.loads(out.stdout)
    assert printed["steps"] == 3 and printed["quality"] == 70 and printed["port"] == 9001
    assert "auth_secret" not in printed and "secret" not in out.stdout.split("auth_secret")[1].split("\n")[0]
    assert "# flag --steps" in out.stdout and "# env AVATARCAST_QUALITY" in out.stdout
    assert f"# config file {f}" in out.stdout
    back = tmp_path / "printed.toml"
    back.write_text(out.stdout)
    again = Settings.from_args(serve_args("--config", str(back)), {})
    want = Settings.from_args(serve_args("--config", str(f), "--steps", "3"), {"AVATARCAST_QUALITY": "70"})
    assert dataclasses.replace(again, auth_secret=want.auth_secret) == want
