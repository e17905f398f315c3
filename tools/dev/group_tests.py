"""Group the tests as the shipped packages are: tests/realtime, tests/engines, tests/templates, and tests/tools for
the offline tools; repo-wide checks and the shared fixtures (conftest.py) stay in tests/.

Re-runnable: it moves (`git mv`) only the tests/*.py files that belong in a group, so after a merge brings new
tests into tests/ it files them too. For each moved file it fixes the paths the file computes from its own
location (`Path(__file__)...parent(s)`), the `tests.<module>` imports of what moved, and `tests/<file>.py`
mentions anywhere in the repository. A test not in GROUPS goes where its imports point (the package it imports
most); where they do not decide, add it to GROUPS.

    python tools/dev/group_tests.py [--dry-run]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
PACKAGES = ("realtime", "engines", "templates", "tools")
TOP = "."  # stays in tests/: checks of the whole repository, and what every group shares
GROUPS = {
    TOP: "conftest base_install test_imports test_install_deps test_layout test_vocabulary",
    "realtime": """test_asr test_audio test_auth test_batching test_bench_latency test_browser test_cli_serve
        test_commands test_emotion test_emotion_data test_fuzz test_hardening test_hub test_live test_live_cues
        test_load_control test_origins test_playout test_ray_cluster test_runner test_scheduler test_server
        test_server_multilingual test_session test_speech test_webrtc test_ws""",
    "engines": """test_avatar_world test_backends test_crop test_errors test_refdec test_tiny_engine test_wan_engine
        test_wan_export test_wan_runtime test_wan_serving test_wan_vae_start wan_checkpoint""",
    "templates": "test_templates",
    "tools": "test_eval test_export test_fidelity_eval test_fidelity_holdout test_fidelity_metrics",
}
GROUP_OF = {name: group for group, names in GROUPS.items() for name in names.split()}
INIT_DOC = {
    TOP: "The tests, grouped as the shipped packages are; repo-wide checks and the shared fixtures live here.",
    "realtime": "Tests of avatarcast.realtime: server, sessions, transports, ASR, emotion, scheduling, benches.",
    "engines": "Tests of avatarcast.engines: the tiny and wan engines, backends, the avatar world, the errors.",
    "templates": "Tests of avatarcast.templates: emotion templates and the latents cache.",
    "tools": "Tests of tools/: the offline evaluation, export and training helpers.",
}
# Path(__file__)[.resolve()] followed by .parent... or .parents[N]
FILE_PATH = re.compile(r"(Path\(__file__\)(?:\.resolve\(\))?)((?:\.parent\b(?!s))+|\.parents\[(\d+)\])")


def guess_group(path: Path) -> str:
    """The package a new test imports most; SystemExit where that does not decide."""
    text = path.read_text(encoding="utf-8")
    votes = Counter(m.group(1) for m in re.finditer(r"^\s*(?:from|import)\s+avatarcast\.(\w+)", text, re.M))
    votes["tools"] += len(re.findall(r"^\s*(?:from|import)\s+tools\b", text, re.M))
    ranked = [(n, g) for g, n in votes.most_common() if g in PACKAGES and n]
    if not ranked or (len(ranked) > 1 and ranked[0][0] == ranked[1][0]):
        sys.exit(f"{path.name}: its imports do not say which group it belongs to ({dict(votes)}); add it to GROUPS")
    return ranked[0][1]


def deeper(text: str) -> str:
    """Paths computed from the file's own location, for a file one folder deeper."""

    def up_one(m: re.Match) -> str:
        levels = int(m.group(3)) + 1 if m.group(3) is not None else m.group(2).count(".parent")
        return f"{m.group(1)}.parents[{levels}]"

    return FILE_PATH.sub(up_one, text)


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    files = []
    for rel in out.decode().split("\0"):
        p = ROOT / rel
        if rel and p.is_file() and not p.is_symlink():
            try:
                p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            files.append(p)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the moves, change nothing")
    args = ap.parse_args(argv)

    moves: dict[str, str] = {}  # module name -> group, for what moves now
    for path in sorted(TESTS.glob("*.py")):
        name = path.stem
        if name == "__init__":
            continue
        group = GROUP_OF.get(name)
        if group is None:
            if not name.startswith("test_"):
                sys.exit(f"tests/{path.name}: a helper module not in GROUPS; add it where its users are")
            group = guess_group(path)
            print(f"tests/{path.name}: not in GROUPS, filed under {group}/ by its imports")
        if group != TOP:
            moves[name] = group
    for name, group in sorted(moves.items(), key=lambda kv: (kv[1], kv[0])):
        print(f"tests/{name}.py -> tests/{group}/{name}.py")
    if args.dry_run:
        return 0

    for group in (TOP, *PACKAGES):
        init = TESTS / (group if group != TOP else "") / "__init__.py"
        if not init.exists():
            init.parent.mkdir(exist_ok=True)
            init.write_text(f'"""{INIT_DOC[group]}"""\n')
            subprocess.run(["git", "add", str(init.relative_to(ROOT))], cwd=ROOT, check=True)
    for name, group in moves.items():
        src, dst = TESTS / f"{name}.py", TESTS / group / f"{name}.py"
        subprocess.run(["git", "mv", str(src.relative_to(ROOT)), str(dst.relative_to(ROOT))], cwd=ROOT, check=True)
        dst.write_text(deeper(dst.read_text(encoding="utf-8")), encoding="utf-8")

    # every grouped module, moved now or before: stale `tests.<name>` imports and `tests/<name>.py` mentions
    located = {
        p.stem: p.parent.name
        for group in PACKAGES
        for p in (TESTS / group).glob("*.py")
        if p.stem != "__init__" and not (TESTS / p.name).exists()
    }
    if located:
        names = "|".join(sorted(map(re.escape, located), key=len, reverse=True))
        module = re.compile(rf"\btests\.({names})\b")
        mention = re.compile(rf"\btests/({names})\.py\b")
        for p in tracked_text_files():
            text = p.read_text(encoding="utf-8")
            new = module.sub(lambda m: f"tests.{located[m.group(1)]}.{m.group(1)}", text)
            new = mention.sub(lambda m: f"tests/{located[m.group(1)]}/{m.group(1)}.py", new)
            if new != text:
                p.write_text(new, encoding="utf-8")
                print(f"updated references in {p.relative_to(ROOT)}")
    for group in PACKAGES:
        for p in sorted((TESTS / group).glob("*.py")):
            if "__file__" in FILE_PATH.sub("", p.read_text(encoding="utf-8")):
                print(f"check by hand: {p.relative_to(ROOT)} uses __file__ in a way this script does not rewrite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
