"""The browser client as a package: its npm layout, its exports against its TypeScript types (tsc --strict on
tests/js/usage.ts and on the README's example), and the server serving it as a JavaScript module."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "realtime" / "static" / "avatarcast-client"
TYPECHECK = ROOT / "tests" / "js"  # `npm ci --prefix tests/js` (tools/test.sh) installs TypeScript there
TSC = TYPECHECK / "node_modules" / ".bin" / "tsc"
NODE = shutil.which("node")
NPM = shutil.which("npm")


def test_package_json_publishes_the_module_and_its_types() -> None:
    pkg = json.loads((CLIENT / "package.json").read_text())
    assert pkg["type"] == "module"
    assert pkg["exports"]["."] == {"types": "./index.d.ts", "default": "./index.js"}
    assert pkg["types"] == "./index.d.ts" and pkg["main"] == "./index.js"
    assert set(pkg["files"]) == {"index.js", "index.d.ts", "README.md"}
    assert not pkg.get("dependencies") and "scripts" not in pkg, "no dependencies, no build step"
    version = re.search(r'^export const VERSION = "([^"]+)";', (CLIENT / "index.js").read_text(), re.M)
    assert version and version.group(1) == pkg["version"]


@pytest.mark.skipif(NPM is None, reason="needs npm")
def test_npm_pack_holds_exactly_the_package_files() -> None:
    out = subprocess.run(
        [NPM, "pack", "--dry-run", "--json"], cwd=CLIENT, capture_output=True, text=True, check=True, timeout=60
    )
    files = {f["path"] for f in json.loads(out.stdout)[0]["files"]}
    assert files == {"index.js", "index.d.ts", "README.md", "package.json"}, files


@pytest.mark.skipif(NODE is None, reason="needs node")
def test_the_module_exports_what_its_types_declare() -> None:
    """Imported by Node (no browser globals at import time), its exports are the .d.ts's value exports."""
    out = subprocess.run(
        [NODE, "--input-type=module", "-e", f"const m = await import({json.dumps((CLIENT / 'index.js').as_uri())});"
         " console.log(JSON.stringify(Object.keys(m).sort()))"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    runtime = json.loads(out.stdout)
    dts = (CLIENT / "index.d.ts").read_text()
    declared = sorted(re.findall(r"^export declare (?:const|class|function) (\w+)", dts, re.M))
    assert runtime == declared


@pytest.mark.skipif(not TSC.exists(), reason="TypeScript not installed: npm ci --prefix tests/js (tools/test.sh)")
def test_types_check_strict_with_the_readme_example() -> None:
    """tsc --strict on usage.ts (its @ts-expect-error lines: misuses the types must refuse) and the README's example
    (as checked JavaScript), both importing the package by name through its package.json."""
    readme = (CLIENT / "README.md").read_text()
    example = re.search(r"```js\n(.*?)```", readme, re.S)
    assert example, "the client README has no js example"
    gen = TYPECHECK / "readme_example.gen.js"
    gen.write_text(example.group(1).replace('"/static/avatarcast-client/index.js"', '"avatarcast-client"'))
    try:
        r = subprocess.run([str(TSC), "-p", str(TYPECHECK)], capture_output=True, text=True, timeout=120)
    finally:
        gen.unlink()
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_server_serves_the_module(server_url: str) -> None:
    for name, kind in (("index.js", "javascript"), ("index.d.ts", ""), ("package.json", "json")):
        r = httpx.get(f"{server_url}/static/avatarcast-client/{name}", timeout=10)
        assert r.status_code == 200, name
        assert kind in r.headers["content-type"], (name, r.headers["content-type"])
    assert r.json()["name"] == "avatarcast-client"
