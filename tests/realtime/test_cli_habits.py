"""What a command-line user expects: `avatarcast --version`, and progress bars on a terminal only (off in pipes
and logs, and with --quiet), run as real processes with stderr on a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_on_a_terminal(args: list[str], cwd: Path, timeout: float = 120) -> tuple[int, str, str]:
    """(exit code, stdout, what the process wrote to its terminal) with stderr on a pseudo-terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 x 120, as a terminal has
    p = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            p.kill()
            raise TimeoutError(" ".join(args))
        try:
            data = os.read(master, 4096)
        except OSError:  # the process closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = p.stdout.read() if p.stdout else ""
    return p.wait(timeout), out, b"".join(chunks).decode(errors="replace")


def test_version_is_the_packages() -> None:
    want = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = subprocess.run(
        [sys.executable, "-m", "avatarcast.realtime.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == f"avatarcast {want}", out


@pytest.mark.parametrize("quiet", [False, True], ids=["bar", "quiet"])
def test_render_and_precompute_show_a_bar_on_a_terminal_unless_quiet(tmp_path: Path, quiet: bool) -> None:
    q = ["--quiet"] if quiet else []
    cli = [sys.executable, "-m", "avatarcast.realtime.cli"]
    code, out, term = run_on_a_terminal([*cli, "render", "--seconds", "1", "-o", str(tmp_path / "c.webm"), *q], ROOT)
    assert code == 0 and "wrote" in out, term
    assert ("render: 100%" in term and "8/8" in term) is not quiet, term
    args = ["precompute", "--avatars", "0", "--emotions", "happy,sad", "--variants", "1", "--batch", "1"]
    code, out, term = run_on_a_terminal([*cli, *args, "--cache-dir", str(tmp_path / "cache"), *q], ROOT)
    assert code == 0 and "2 computed" in out, term
    assert ("precompute: 100%" in term and "2/2" in term) is not quiet, term


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """The pipes of CI and of a log file: the same render prints its result and nothing else."""
    out = subprocess.run(
        [sys.executable, "-m", "avatarcast.realtime.cli", "render", "--seconds", "1", "-o", str(tmp_path / "c.webm")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "wrote" in out.stdout
    assert "%|" not in out.stderr and "render:" not in out.stderr, out.stderr


def test_the_offline_tools_take_quiet() -> None:
    """eval, the dataset writer and the trainers (too slow to run here) accept --quiet: their --help, in one process."""
    code = (
        "import contextlib, importlib, io\n"
        "for m in ('tools.eval.evaluate', 'tools.avatar_world.dataset', 'tools.train_tiny', 'tools.train_lowres'):\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
        "        importlib.import_module(m).main(['--help'])\n"
        "    print(m, '--quiet' in buf.getvalue())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [
        w
        for m in ("tools.eval.evaluate", "tools.avatar_world.dataset", "tools.train_tiny", "tools.train_lowres")
        for w in (m, "True")
    ], out.stdout
