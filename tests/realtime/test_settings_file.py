"""The settings model and its TOML file: flag > env > file > default, nested tables and the flat keys of older files,
errors that name the field, its source and its value, and `serve --print-config` read back as --config."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from avatarcast.realtime.cli import build_parser
from avatarcast.realtime.settings import Settings, SettingValueError
from avatarcast.realtime.settings_file import SettingsFileError, render
from avatarcast.realtime.settings_model import GROUPS, SettingsError, model, place

NESTED = """
[server]
port = 9001

[limits]
max_sessions = 3
rate_http_per_s = 20

[load]
ladder = false

[asr]
model = "tiny.en"
threads = 1

[wan]
dtype = "bfloat16"

[cluster]
max_replicas = 6
"""
# the same settings as a file written before the tables: flat names at the top level, and a table of flat names
FLAT = """
port = 9001
max_sessions = 3
rate_http_per_s = 20
ladder = false
asr_model = "tiny.en"
asr_threads = 1
ray_max_replicas = 6

[wan]
wan_dtype = "bfloat16"
"""


def serve_args(*flags: str):
    return build_parser().parse_args(["serve", *flags])


def settings_of(text: str, tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> Settings:
    f = tmp_path / "avatarcast.toml"
    f.write_text(text)
    return Settings.from_args(serve_args("--config", str(f), *flags), env or {})


def test_flags_beat_env_beat_the_file_beat_defaults(tmp_path: Path) -> None:
    f = tmp_path / "avatarcast.toml"
    f.write_text(NESTED)
    env = {"AVATARCAST_MAX_SESSIONS": "5", "AVATARCAST_CONFIG": str(f)}
    s, src = Settings.resolve(serve_args("--port", "9002"), env)
    assert (s.port, src["port"]) == (9002, "flag --port")
    assert (s.max_sessions, src["max_sessions"]) == (5, "env AVATARCAST_MAX_SESSIONS")
    assert (s.asr_model, s.asr_threads, s.wan_dtype, s.ladder, s.ray_max_replicas) == ("tiny.en", 1, "bfloat16", 0, 6)
    assert s.rate_http_per_s == 20.0 and isinstance(s.rate_http_per_s, float)
    assert src["wan_dtype"] == f"config file {f}"
    assert s.quality == Settings().quality and "quality" not in src
    flag_file = tmp_path / "other.toml"
    flag_file.write_text("[server]\nport = 7000\nquality = 50\n")
    s2 = Settings.from_args(serve_args("--config", str(flag_file)), env)  # --config beats AVATARCAST_CONFIG
    assert (s2.port, s2.quality, s2.max_sessions, s2.asr_model) == (7000, 50, 5, "base")


def _other(v: object) -> object:
    """A value of v's type that is not v."""
    return v + 1 if isinstance(v, int) else v + 0.5 if isinstance(v, float) else f"x{v}"


def test_every_setting_keeps_its_flag_and_env_name_and_has_one_place_in_the_file(tmp_path: Path) -> None:
    hints = typing.get_type_hints(Settings)
    places = {f.name: place(f.name) for f in dataclasses.fields(Settings)}
    assert len(set(places.values())) == len(places) and {t for t, _ in places.values()} == set(GROUPS)
    for f in dataclasses.fields(Settings):
        v = _other(f.default)
        text = repr(v) if hints[f.name] is not str else f'"{v}"'
        flag = "--" + ("ice-server" if f.name == "ice_servers" else f.name.replace("_", "-"))
        table, key = places[f.name]
        ways = {
            "flag": Settings.resolve(serve_args(flag, str(v)), {}),
            "env": Settings.resolve(None, {f"AVATARCAST_{f.name.upper()}": str(v)}),
            "nested file": Settings.resolve(None, {}, _write(tmp_path, f"[{table}]\n{key} = {text}\n")),
            "flat file": Settings.resolve(None, {}, _write(tmp_path, f"{f.name} = {text}\n")),
        }
        for way, (s, src) in ways.items():
            assert getattr(s, f.name) == v and list(src) == [f.name], (f.name, way)


def _write(tmp_path: Path, text: str) -> str:
    f = tmp_path / "one.toml"
    f.write_text(text)
    return str(f)


def test_a_flat_file_of_older_releases_means_what_the_nested_one_does(tmp_path: Path) -> None:
    nested, flat = settings_of(NESTED, tmp_path), settings_of(FLAT, tmp_path)
    assert nested == flat and nested != Settings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_sesions = 3\n", "unknown setting max_sesions (did you mean max_sessions?)"),
        ("[wan]\nnope = 1\n", "unknown setting [wan] nope"),
        ("[wan]\ndtpye = 'auto'\n", "unknown setting [wan] dtpye (did you mean [wan] dtype?)"),
        ("[server]\nmax_sessions = 3\n", "[server] max_sessions is [limits] max_sessions"),
        ("[ray]\naddress = 'auto'\n", "unknown table [ray] (tables: engine, wan, asr, ice"),
        ("port = '80'\n", "port = '80' (config file {f}): input should be a valid integer"),
        ("[engine]\nsteps = 2.5\n", "steps = 2.5 (config file {f}): input should be a valid integer"),
        ("[server]\nhost = 8080\n", "host = 8080 (config file {f}): input should be a valid string"),
        ("port = 1\n[server]\nport = 2\n", "port is set twice"),
        ("port = = 1\n", "not TOML"),
    ],
)
def test_a_bad_file_names_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(SettingsFileError, match=re.escape(message.format(f=f))):
        Settings.from_args(serve_args("--config", str(f)), {})
    with pytest.raises(SettingsFileError, match="No such file"):
        Settings.from_args(serve_args("--config", str(tmp_path / "missing.toml")), {})


def test_a_bad_value_names_the_field_its_source_and_the_value(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=re.escape("quality = 'high' (env AVATARCAST_QUALITY): input should be")):
        Settings.from_args(serve_args(), {"AVATARCAST_QUALITY": "high"})
    # the rules across fields name each setting they are about and where it came from
    cases = [
        ((["--steps", "99"], {}, ""), "steps must be 1..64, got 99 (steps from flag --steps)"),
        (([], {"AVATARCAST_STEPS": "0"}, ""), "steps must be 1..64, got 0 (steps from env AVATARCAST_STEPS)"),
        (([], {}, "[engine]\nsteps = 65\n"), "steps must be 1..64, got 65 (steps from config file {f})"),
        (
            (["--ray-max-replicas", "1"], {}, "[cluster]\nmin_replicas = 2\n"),
            "got 2, 1, 2 (ray_min_replicas from config file {f}; ray_max_replicas from flag --ray-max-replicas)",
        ),
    ]
    f = tmp_path / "rules.toml"
    for (flags, env, text), message in cases:
        f.write_text(text)
        with pytest.raises(SettingValueError, match=re.escape(message.format(f=f))):
            Settings.from_args(serve_args("--config", str(f), *flags), env)
    with pytest.raises(SettingsError, match=re.escape("port = '80': input should be a valid integer")):
        Settings(port="80").validate()  # type: ignore[arg-type]  # built by hand: the same model checks it


def test_the_model_is_nested_per_subsystem() -> None:
    m = model(Settings)()
    assert list(type(m).model_fields) == list(GROUPS)
    assert (m.engine.steps, m.wan.dtype, m.asr.model, m.limits.max_sessions, m.server.port, m.cluster.redis_url) == (
        Settings().steps,
        Settings().wan_dtype,
        Settings().asr_model,
        Settings().max_sessions,
        Settings().port,
        "",
    )


def test_print_config_is_a_file_config_reads_back(tmp_path: Path) -> None:
    f = tmp_path / "avatarcast.toml"
    f.write_text(NESTED.replace("port = 9001\n", 'port = 9001\nauth_secret = "0123456789abcdef0123456789abcdef-s"\n'))
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
    assert list(printed) == list(GROUPS)
    assert printed["engine"]["steps"] == 3 and printed["server"]["quality"] == 70 and printed["server"]["port"] == 9001
    assert printed["wan"]["dtype"] == "bfloat16" and printed["asr"]["model"] == "tiny.en"
    assert "auth_secret" not in printed["server"] and "secret" not in out.stdout.split("auth_secret")[1].split("\n")[0]
    assert "# flag --steps" in out.stdout and "# env AVATARCAST_QUALITY" in out.stdout
    assert f"# config file {f}" in out.stdout
    back = tmp_path / "printed.toml"
    back.write_text(out.stdout)
    again = Settings.from_args(serve_args("--config", str(back)), {})
    want = Settings.from_args(serve_args("--config", str(f), "--steps", "3"), {"AVATARCAST_QUALITY": "70"})
    assert dataclasses.replace(again, auth_secret=want.auth_secret) == want
    # in process too, every setting changed: render() read back is the same settings
    changed = Settings(**{f.name: _other(f.default) for f in dataclasses.fields(Settings) if "secret" not in f.name})
    back.write_text(render(changed, {}))
    assert Settings.resolve(None, {}, str(back))[0] == changed


def test_the_engine_defaults_to_motion_on_the_cpu_and_on_cuda(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--engine auto` (the default) is resolved once, from the backend and device; an explicit engine from any
    source wins; motion on tensorrt or onnxruntime on CUDA fails naming what serves it."""
    assert Settings().engine == "motion" and Settings(device="cpu").engine == "motion"
    for other in (
        {"backend": "tensorrt"},
        {"device": "cuda"},
        {"backend": "torch", "device": "cpu"},
    ):
        assert Settings(**other).engine == "tiny", other
    assert Settings(backend="torch", device="cuda").engine == "motion"  # the cut-out draw on the GPU
    assert (
        Settings.from_args(serve_args(), {"AVATARCAST_BACKEND": "torch", "AVATARCAST_DEVICE": "cpu"}).engine == "tiny"
    )
    assert (
        Settings.from_args(serve_args(), {"AVATARCAST_BACKEND": "torch", "AVATARCAST_DEVICE": "cuda"}).engine
        == "motion"
    )
    assert settings_of('[engine]\nbackend = "tensorrt"\n', tmp_path).engine == "tiny"
    # explicit: a flag, the environment, the file, or auto spelled out
    assert Settings.from_args(serve_args("--engine", "tiny"), {}).engine == "tiny"
    assert Settings.from_args(serve_args(), {"AVATARCAST_ENGINE": "tiny"}).engine == "tiny"
    assert settings_of('[engine]\nengine = "tiny"\n', tmp_path).engine == "tiny"
    assert (
        Settings.from_args(serve_args("--engine", "auto", "--backend", "torch", "--device", "cpu"), {}).engine == "tiny"
    )
    assert Settings.from_args(serve_args("--engine", "motion", "--backend", "torch"), {}).engine == "motion"
    with pytest.raises(SettingValueError, match=r"onnxruntime on the CPU or on torch, not tensorrt on auto: use"):
        Settings.from_args(serve_args("--engine", "motion", "--backend", "tensorrt"), {})
    with pytest.raises(SettingValueError, match=r"not onnxruntime on cuda: use --backend torch, .*device from flag"):
        Settings.from_args(serve_args("--engine", "motion", "--device", "cuda"), {})
    with pytest.raises(SystemExit):
        serve_args("--help")
    helped = " ".join(capsys.readouterr().out.split())
    assert "default 'auto'; auto: motion on onnxruntime on the CPU and on torch on CUDA; tiny elsewhere" in helped
    assert Settings().engine_choice().startswith("motion (the default on onnxruntime on auto; --engine tiny")
    assert Settings(backend="torch", device="cpu").engine_choice().startswith("tiny (the default on torch on cpu")
    assert Settings(engine="tiny").engine_choice() == "tiny (chosen; the default here is motion)"
