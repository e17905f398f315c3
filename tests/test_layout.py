"""The installed layout: one `avatarcast` package holding every shipped folder, and shipped code that
never reaches into tools/ (offline work, not installed)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("realtime", "engines", "templates", "avatarcast")


def _shipped_files() -> list[Path]:
    return [p for pkg in SHIPPED for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_pyproject_lists_every_package_folder() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"avatarcast"} | {
        "avatarcast." + ".".join(init.parent.relative_to(ROOT).parts)
        for pkg in SHIPPED[:-1]
        for init in (ROOT / pkg).rglob("__init__.py")
    }
    found |= {  # subpackages of avatarcast/ itself (integrations)
        "avatarcast." + ".".join(init.parent.relative_to(ROOT / "avatarcast").parts)
        for init in (ROOT / "avatarcast").glob("*/**/__init__.py")
    }
    assert listed == found, f"missing {sorted(found - listed)}, stale {sorted(listed - found)}"


def _tools_references(path: Path) -> list[str]:
    """Imports of tools (anywhere in the file) and module paths naming it in strings."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name == "tools" or a.name.startswith("tools.")]
        elif (
            isinstance(node, ast.ImportFrom)
            and not node.level
            and node.module
            and (node.module == "tools" or node.module.startswith("tools."))
        ):
            out.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
            "run_module",
        ):
            out += [
                a.value
                for a in node.args
                if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("tools")
            ]
    return out


def test_shipped_code_never_imports_tools() -> None:
    bad = {str(p.relative_to(ROOT)): refs for p in _shipped_files() if (refs := _tools_references(p))}
    assert bad == {}


def test_the_walk_sees_an_import_of_tools(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text(
        "def f():\n    from tools.eval import x\n    import importlib\n    importlib.import_module('tools.y')\n"
    )
    assert _tools_references(p) == ["tools.eval", "tools.y"]


def test_no_module_path_outside_the_namespace() -> None:
    """Every import of a shipped package goes through `avatarcast.` (a bare `realtime.x` is a second copy)."""
    pat = re.compile(r"^\s*(from|import)\s+(realtime|engines|templates)\b", re.M)
    files = _shipped_files() + sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "tools").rglob("*.py"))
    bad = [str(p.relative_to(ROOT)) for p in files if pat.search(p.read_text())]
    assert bad == []


OPTIONAL_FRAMEWORKS = {"pipecat", "livekit"}  # extras that only avatarcast/integrations/ may import


def _top_level_imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_only_the_integrations_import_optional_frameworks() -> None:
    """A plain install (without the pipecat extra) imports every module but avatarcast/integrations/'s."""
    integrations = ROOT / "avatarcast" / "integrations"
    bad = {
        str(p.relative_to(ROOT)): sorted(hit)
        for p in _shipped_files()
        if integrations not in p.parents and (hit := _top_level_imports(p) & OPTIONAL_FRAMEWORKS)
    }
    assert bad == {}
    assert "pipecat" in _top_level_imports(integrations / "pipecat.py")  # the walk sees the one that does
