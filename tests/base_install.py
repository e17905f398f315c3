"""What the README's plain install (`bash tools/install.sh`, no extras) puts there, and a way to hide the rest.

The base closure is pyproject's [project.dependencies] plus what they require in turn (their extras as asked),
as the installed distributions declare it, plus what tools/install.sh adds with --no-deps. `hide_others()`
makes importing any other installed distribution's top-level module fail with ModuleNotFoundError, as it
would on a machine that has only the plain install.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
# tools/install.sh installs these with --no-deps after the project itself (none today)
INSTALL_SH_EXTRAS: tuple[str, ...] = ()
# a fresh venv has these whatever the project declares
ALWAYS = ("pip", "setuptools", "wheel")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_distributions() -> set[str]:
    """Normalized names of every distribution the plain install brings."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    seen: set[str] = {_norm(project["name"]), *(_norm(n) for n in (*ALWAYS, *INSTALL_SH_EXTRAS))}
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        extras = sorted(req.extras)
        key = name + "[" + ",".join(extras) + "]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue  # declared but absent here: nothing below it to follow
        for line in requires:
            sub = Requirement(line)
            env_ok = sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ["", *extras])
            if env_ok:
                todo.append(sub)
    return {s for s in seen if "[" not in s}


def hidden_modules() -> set[str]:
    """Top-level import names that only distributions outside the base closure provide."""
    base = base_distributions()
    out = set()
    for module, dists in md.packages_distributions().items():
        if not any(_norm(d) in base for d in dists):
            out.add(module)
    return out


class _Hide(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not in the plain install)", name=fullname)
        return None


def hide_others(names: set[str]) -> None:
    """From now on, importing any of `names` fails, as on a machine with the plain install only."""
    for mod in list(sys.modules):
        if mod.split(".")[0] in names:
            del sys.modules[mod]
    sys.meta_path.insert(0, _Hide(names))


if __name__ == "__main__":
    # python -m tests.base_install MODULE ARGS...: run MODULE as __main__ with only the plain install importable
    import runpy

    hide_others(hidden_modules())
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
