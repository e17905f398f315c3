"""Progress bars for the long command-line loops (precompute, render, eval, dataset writing, training): tqdm on
stderr while stderr is a terminal; off in logs, pipes and CI, and with --quiet. Stdout keeps the reports."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def shown(quiet: bool = False) -> bool:
    """Whether a bar would show: stderr is a terminal and --quiet was not given."""
    return not quiet and sys.stderr.isatty()


def bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    quiet: bool = False,
) -> tqdm:
    """A tqdm bar on stderr (wrapping `iterable`, or updated by hand); off where shown() is false."""
    return tqdm(
        iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=not shown(quiet), dynamic_ncols=True
    )


def write(line: str) -> None:
    """Print a line to stdout without tearing a bar that is showing."""
    tqdm.write(line, file=sys.stdout)


def add_quiet_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (one shows only when stderr is a terminal)"
    )
