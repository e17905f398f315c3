"""`avatarcast bench latency|load|engine` work with the README's plain install alone (issue 17: httpx crash).

Two checks: every import in the bench modules (module level or inside a function) is the standard library,
the project itself, or a distribution of the plain install, save named optional ones; and the commands run
for real, in a subprocess where every other installed distribution is hidden (tests/base_install.py).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.base_install import REPO, _norm, base_distributions

BENCH_MODULES = (
    "avatarcast/client.py",
    "realtime/bench/client.py",
    "realtime/bench/server.py",
    "realtime/bench/latency.py",
    "realtime/bench/load.py",
    "realtime/bench/engine.py",
)
FIRST_PARTY = {"realtime", "engines", "templates", "tools"}
# imports the bench modules make only behind an option that needs an extra, and what asks for them
OPTIONAL = {
    "matplotlib": "bench latency --chart (the train extra)",
    "torch": "bench engine --backend torch|tensorrt on a GPU (the train/wan extras)",
}
SPEECH = REPO / "tests" / "data" / "speech"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_bench_modules_import_only_the_plain_install() -> None:
    base = base_distributions()
    providers = md.packages_distributions()
    missing = {}
    for rel in BENCH_MODULES:
        for name in _imports(REPO / rel):
            if name in sys.stdlib_module_names or name in FIRST_PARTY or name in OPTIONAL or name == "__future__":
                continue
            if not any(_norm(d) in base for d in providers.get(name, [])):
                missing.setdefault(rel, []).append(name)
    assert not missing, f"bench modules import what the plain install lacks (add it to the dependencies): {missing}"


def _plain(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`avatarcast ARGS` in a subprocess that can import only what the plain install has."""
    return subprocess.run(
        [sys.executable, "-m", "tests.base_install", "avatarcast.realtime.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One committed English and one Mandarin clip, with their manifest rows."""
    d = tmp_path_factory.mktemp("clips")
    rows = []
    for lang, name in (("en", "en06_happy.ogg"), ("zh", "zh06_happy.ogg")):
        shutil.copy(SPEECH / lang / name, d / name)
        rows += [
            line
            for line in (SPEECH / lang / "manifest.csv").read_text(encoding="utf-8").splitlines()[1:]
            if line.startswith(name + ",")
        ]
    header = (SPEECH / "en" / "manifest.csv").read_text(encoding="utf-8").splitlines()[0]
    (d / "manifest.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return d


@pytest.mark.slow
def test_bench_latency_runs_on_the_plain_install(server_url: str, two_clips: Path) -> None:
    r = _plain("bench", "latency", "--clips", str(two_clips), "--url", server_url, "--json", "--linger", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    rows = {row["file"]: row for row in report["clips"]}
    assert report["summary"]["measured"] == 2, [row.get("error") for row in report["clips"]]
    assert rows["en06_happy.ogg"]["language"] == "en" and rows["zh06_happy.ogg"]["language"] == "zh", rows
    assert all(row["tter_ms"] is not None for row in rows.values())


@pytest.mark.slow
def test_bench_load_and_engine_run_on_the_plain_install(server_url: str, two_clips: Path) -> None:
    r = _plain(
        "bench",
        "load",
        "--clips",
        str(two_clips),
        "--url",
        server_url,
        "--sessions",
        "1",
        "--seconds",
        "6",
        "--gap",
        "1,2",
        "--json",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["sessions"] == 1
    r = _plain("bench", "engine", "--seconds", "0.5", "--warmup", "1", "--min-chunks", "1", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
