"""The tracked tree stays within its size budget (issue 16).

A run on the GPU machines carries the working tree with it, at most 64 MiB (67.1 MB) per call, model weights
included. The budget keeps ~12 MB of that free for what a run needs beside the tree (a build, a venv folder, new
weights). What is large: engines/tiny/weights (the model), docs images and bench results; docs/bench keeps bench
runs with per-clip records gzipped (`zcat` reads them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREE_BUDGET_BYTES = 55_000_000  # the one budget: tracked files' total size, under the GPU runs' 64 MiB per call


def _tracked() -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("no git")
    r = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True)
    if r.returncode != 0 or not r.stdout:
        pytest.skip("not a git checkout")
    return [p for p in r.stdout.decode().split("\0") if p]


def test_tracked_files_fit_the_budget():
    sizes = {p: (ROOT / p).stat().st_size for p in _tracked() if (ROOT / p).is_file()}
    total = sum(sizes.values())
    largest = ", ".join(f"{p} {s / 1e6:.1f} MB" for p, s in sorted(sizes.items(), key=lambda x: -x[1])[:5])
    assert total <= TREE_BUDGET_BYTES, (
        f"tracked files total {total / 1e6:.2f} MB, over the {TREE_BUDGET_BYTES / 1e6:.0f} MB budget "
        f"(a GPU run carries at most 64 MiB of the tree); largest: {largest}"
    )
