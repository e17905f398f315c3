"""How ambiguous are the emotion labels? A second writer labels a held-out set blind; agreement with its labels.

    python -m tools.emotion_agreement blind --sets J > blind.tsv   # id, language, text: shuffled, no labels
    # ... fill a label into each line: id<TAB>label (the text may stay as a third column) -> labels.tsv
    python -m tools.emotion_agreement score --sets J labels.tsv     # agreement per language / label, confusions

`blind` prints the set's lines shuffled (a fixed seed), each with an id (the first 10 hex digits of the sha1 of its
language and text), never its label, so that the second writer reads only the line and the label guide
(tests/data/emotion/README.md). `score` compares the second writer's labels with the set's: raw agreement and
Cohen's kappa per language, per label (of the set's lines of that label, the share the second writer gave the same
label; and of the lines the second writer gave a label, the share the set agrees with), and the pairs of labels the
two writers split on most. Agreement between two writers bounds what a reader can be expected to score on lines
written by either: a line two careful people label differently is a coin toss for a model.

`blind` refuses the round's clean set (tools.eval_emotion.CLEAN): only a development set's lines may be read.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections import Counter
from pathlib import Path

from avatarcast.realtime.emotion import CUE_LABELS
from tools.eval_emotion import CLEAN, held_out


def line_id(language: str, text: str) -> str:
    """A stable id for one line, that says nothing about its label."""
    return hashlib.sha1(f"{language}\t{text}".encode()).hexdigest()[:10]


def blind(sets: str, seed: int = 17) -> list[tuple[str, str, str]]:
    """(id, language, text) of the sets' lines, shuffled."""
    if CLEAN in sets:
        raise SystemExit(f"set {CLEAN} is this round's clean set: its lines are not printed")
    rows = [(line_id(r["language"], r["text"]), r["language"], r["text"]) for r in held_out(sets)]
    random.Random(seed).shuffle(rows)
    return rows


def read_labels(path: Path) -> dict[str, str]:
    """id -> label from a tab-separated file (id, label[, anything]); blank lines and '#' comments skipped."""
    out = {}
    for ln in path.read_text(encoding="utf-8").splitlines():
        if not ln.strip() or ln.startswith("#"):
            continue
        parts = ln.split("\t")
        label = parts[1].strip()
        if label not in CUE_LABELS:
            raise ValueError(f"{path}: {label!r} is not a cue label {CUE_LABELS}")
        out[parts[0].strip()] = label
    return out


def kappa(pairs: list[tuple[str, str]]) -> float:
    """Cohen's kappa of (gold, second) label pairs."""
    n = len(pairs)
    po = sum(a == b for a, b in pairs) / n
    ca, cb = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    pe = sum(ca[k] * cb[k] for k in CUE_LABELS) / (n * n)
    return (po - pe) / (1 - pe) if pe < 1 else 1.0


def score(sets: str, labels: dict[str, str]) -> dict:
    """Agreement of the second writer's labels with the sets' labels."""
    rows = held_out(sets)
    pairs: dict[str, list[tuple[str, str]]] = {"en": [], "zh": []}
    missing = 0
    for r in rows:
        i = line_id(r["language"], r["text"])
        if i not in labels:
            missing += 1
            continue
        pairs[r["language"]].append((r["emotion"], labels[i]))
    out: dict = {"missing": missing, "per_language": {}, "per_label": {}, "splits": Counter()}
    everything = pairs["en"] + pairs["zh"]
    for lang, ps in [*pairs.items(), ("all", everything)]:
        out["per_language"][lang] = {
            "n": len(ps),
            "agreement": sum(a == b for a, b in ps) / max(1, len(ps)),
            "kappa": kappa(ps) if ps else float("nan"),
        }
    for label in CUE_LABELS:
        per = {}
        for lang, ps in [*pairs.items(), ("all", everything)]:
            gold = [b for a, b in ps if a == label]
            second = [a for a, b in ps if b == label]
            per[lang] = {
                "n": len(gold),
                "recall": sum(b == label for b in gold) / max(1, len(gold)),
                "n_second": len(second),
                "precision": sum(a == label for a in second) / max(1, len(second)),
            }
        out["per_label"][label] = per
    for a, b in everything:
        if a != b:
            out["splits"][tuple(sorted((a, b)))] += 1
    out["directed"] = Counter((a, b) for a, b in everything if a != b)
    return out


def markdown(result: dict, sets: str) -> str:
    """The agreement as short markdown tables."""
    pl = result["per_language"]
    lines = [
        f"| set {sets} | lines | agreement | Cohen's kappa |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {pl[k]['n']} | {100 * pl[k]['agreement']:.1f}% | {pl[k]['kappa']:.2f} |"
            for k, name in (("en", "English"), ("zh", "Chinese"), ("all", "both"))
        ),
        "",
        "| label | set's lines (en / zh) | second writer agrees, en | zh | both | second writer's label, set agrees |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in CUE_LABELS:
        p = result["per_label"][label]
        lines.append(
            f"| {label} | {p['en']['n']} / {p['zh']['n']} | {100 * p['en']['recall']:.0f}% | "
            f"{100 * p['zh']['recall']:.0f}% | {100 * p['all']['recall']:.0f}% | "
            f"{100 * p['all']['precision']:.0f}% of {p['all']['n_second']} |"
        )
    lines += ["", "| labels split on (set's -> second writer's, both directions) | lines |", "|---|---:|"]
    d = result["directed"]
    for (a, b), n in result["splits"].most_common(10):
        lines.append(f"| {a} / {b} ({a} -> {b}: {d[(a, b)]}, {b} -> {a}: {d[(b, a)]}) | {n} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("blind", help="print the sets' lines shuffled, without labels")
    b.add_argument("--sets", default="J")
    b.add_argument("--seed", type=int, default=17)
    s = sub.add_parser("score", help="agreement of a second writer's labels with the sets'")
    s.add_argument("--sets", default="J")
    s.add_argument("labels", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "blind":
        for i, lang, text in blind(args.sets, args.seed):
            print(f"{i}\t{lang}\t{text}")
        return 0
    result = score(args.sets, read_labels(args.labels))
    if result["missing"]:
        print(f"{result['missing']} lines have no label", file=sys.stderr)
    print(markdown(result, args.sets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
