"""Score EmotionReader on labelled CSVs (text,language,emotion): accuracy, confusion, live partials, latency.

    python -m tools.eval_emotion                      # the held-out sets (F, then A-E) -> docs/emotion_eval.md
    python -m tools.eval_emotion --data some.csv --json --report ''

Clip mode reads each line whole. Live mode feeds each line's prefixes, at every word (English) or
character (Chinese) boundary, to a PartialTracker as a live partial transcript would grow (as a live session's
partials go to one, realtime/runner.py, so a policy's hold counts the words / characters between them); the
label first shown is the first partial's cue, else the final read. The session replaces a
partial's cue when the final transcript disagrees, so the final read is what stays on screen.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from avatarcast.realtime.emotion import CUE_LABELS, EmotionReader
from avatarcast.realtime.emotion.partial import PartialTracker, units
from avatarcast.realtime.emotion.text import normalize

HELD_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "emotion"
SETS = {
    "A": "heldout_{}.csv",
    "B": "heldout_b_{}.csv",
    "C": "heldout_c_{}.csv",
    "D": "heldout_d_{}.csv",
    "E": "heldout_e_{}.csv",
    "F": "heldout_f_{}.csv",
    "G": "heldout_g_{}.csv",
    "H": "heldout_h_{}.csv",
    "I": "heldout_i_{}.csv",
    "J": "heldout_j_{}.csv",
    "K": "heldout_k_{}.csv",
    "L": "heldout_l_{}.csv",
    "M": "heldout_m_{}.csv",
}
# M (written 2026-12-07, before any change of the sixth round, committed alone) is the sixth round's clean set: never
# fitted on or read, scored once by that round's rule (docs/emotion.md, "Sixth round"), its misread lines never
# printed. L was the fifth round's clean set (scored once, 2026-12-07) and, with A-K, is spent: the sixth round fits
# heads on A-L (tools/fit_set_heads.py). F-I were clean in earlier rounds and used for decisions since, their misread
# lines never looked at; J (third round) and K (fourth) are development sets (J's lines were read, labelled blind by a
# second writer, tools/emotion_agreement.py); A-E were scored while the reader was developed, so they are reported apart
CLEAN = "M"
UNPRINTED = "FGHILM"
GROUPS = ("M", "L", "K", "J", "I", "F", "G", "H", "ABCDE")


def load_rows(path: str | Path) -> list[dict[str, str]]:
    """Read the labelled utterances; refuse labels the avatar has no template for."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("text", "").strip()]
    bad = sorted({r["emotion"] for r in rows} - set(CUE_LABELS))
    if bad:
        raise ValueError(f"{path}: labels {bad} are not cue labels {CUE_LABELS}")
    return rows


def held_out(sets: str = "ABCDEFGHIJKL") -> list[dict[str, str]]:
    """The held-out rows of the named sets, each tagged with its set."""
    rows = []
    for s in sets:
        for lang in ("en", "zh"):
            rows += [{**r, "set": s} for r in load_rows(HELD_OUT / SETS[s].format(lang))]
    return rows


def _rate(ok: list[bool]) -> dict:
    return {"n": len(ok), "accuracy": round(sum(ok) / max(len(ok), 1), 4)}


def evaluate(reader: EmotionReader, rows: list[dict[str, str]]) -> dict:
    """Clip mode: every row through reader.read; accuracy per language, set and emotion, confusion, latency."""
    confusion: dict[str, dict[str, Counter]] = defaultdict(lambda: {k: Counter() for k in CUE_LABELS})
    groups: dict[str, dict[str, list[bool]]] = {
        "language": defaultdict(list),
        "set": defaultdict(list),
        "emotion": defaultdict(list),
        "set_language": defaultdict(list),
    }
    latencies, errors, ok_all = [], [], []
    for row in rows:
        t0 = time.perf_counter()
        cue = reader.read(row["text"])
        latencies.append((time.perf_counter() - t0) * 1000.0)
        ok = cue.label == row["emotion"]
        ok_all.append(ok)
        confusion[row["language"]][row["emotion"]][cue.label] += 1
        groups["language"][row["language"]].append(ok)
        groups["emotion"][row["emotion"]].append(ok)
        if "set" in row:
            groups["set"][row["set"]].append(ok)
            groups["set_language"][f"{row['set']}/{row['language']}"].append(ok)
        if not ok:
            errors.append(
                {
                    "text": row["text"],
                    "language": row["language"],
                    "expected": row["emotion"],
                    "got": cue.label,
                    "confidence": cue.confidence,
                }
            )
    return {
        "n": len(rows),
        "accuracy": _rate(ok_all)["accuracy"],
        "per_language": {k: _rate(v) for k, v in sorted(groups["language"].items())},
        "per_set": {k: _rate(v) for k, v in sorted(groups["set"].items())},
        "per_set_language": {k: _rate(v) for k, v in sorted(groups["set_language"].items())},
        "per_emotion": {k: _rate(groups["emotion"][k]) for k in CUE_LABELS if groups["emotion"][k]},
        "confusion": {lang: {k: dict(c[k]) for k in CUE_LABELS} for lang, c in sorted(confusion.items())},
        "latency_ms": _latency(latencies),
        "errors": errors,
    }


def _latency(ms: list[float]) -> dict:
    a = np.array(ms or [0.0])
    return {
        "p50": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "max": round(float(a.max()), 2),
        "n": len(ms),
    }


def partials_of(text: str, language: str) -> list[str]:
    """A live transcript's growth: every word (en) or character (zh) boundary, the whole line excluded."""
    if language == "zh":
        return [text[:k] for k in range(1, len(text)) if not text[k - 1].isspace()]
    words = text.split()
    return [" ".join(words[:k]) for k in range(1, len(words))]


def evaluate_live(reader: EmotionReader, rows: list[dict[str, str]], min_confidence: float = 0.6) -> dict:
    """Live mode: each growing prefix fed to a PartialTracker, as a live session feeds an utterance's partials; the
    first cue shown, and how early it came."""
    per_lang: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    latencies, lines = [], []
    for row in rows:
        final = reader.read(row["text"]).label
        first, heard, at = None, 1.0, 0
        parts = partials_of(row["text"], row["language"])
        tracker = PartialTracker(reader, min_confidence)
        for p in parts:
            t0 = time.perf_counter()
            cue = tracker.feed(p)
            latencies.append((time.perf_counter() - t0) * 1000.0)
            if cue is not None:
                first, heard = cue.label, len(p) / len(row["text"])
                at = units(normalize(p))
                break
        early = first is not None
        lines.append({"first_shown": first or final, "decided_early": early, "units": at if early else None})
        d = per_lang[row["language"]]
        d["final_ok"].append(final == row["emotion"])
        d["first_ok"].append((first or final) == row["emotion"])
        if first is not None:
            d["early_ok"].append(first == row["emotion"])
            d["heard"].append(heard)
            d["revised"].append(first != final)
    out = {}
    for lang, d in sorted(per_lang.items()):
        n = len(d["final_ok"])
        out[lang] = {
            "n": n,
            "clip_accuracy": round(float(np.mean(d["final_ok"])), 4),
            "first_shown_accuracy": round(float(np.mean(d["first_ok"])), 4),
            "decided_early": round(len(d["early_ok"]) / n, 4),
            "early_precision": round(float(np.mean(d["early_ok"])), 4) if d["early_ok"] else None,
            "early_revised_by_final": int(sum(d["revised"])),
            "median_heard_at_decision": round(float(np.median(d["heard"])), 3) if d["heard"] else None,
        }
    # per row, in order: the label first shown, whether a partial decided it, and at how many words / characters
    return {"per_language": out, "read_partial_latency_ms": _latency(latencies), "lines": lines}


def markdown(result: dict, live: dict | None, title: str, data: str, level: int = 1, errors: bool = True) -> str:
    """The report as Markdown: accuracy tables, live mode, confusion per language, latency, errors (unless
    `errors` is false: a clean set's lines stay unread, so that it can measure the next change too)."""
    h1, h2 = "#" * level, "#" * (level + 1)
    lines = [f"{h1} {title}", "", f"Data: {data}. Command: `python -m tools.eval_emotion`.", ""]
    lines += [f"{h2} Clip mode (whole transcript)", "", "| set | language | n | top-1 |", "|---|---|---:|---:|"]
    for k, v in result["per_set_language"].items():
        s, lang = k.split("/")
        lines.append(f"| {s} | {lang} | {v['n']} | {v['accuracy']:.1%} |")
    for lang, v in result["per_language"].items():
        lines.append(f"| {'+'.join(result['per_set']) or 'all'} | **{lang}** | {v['n']} | **{v['accuracy']:.1%}** |")
    if live:
        lines += [
            "",
            f"{h2} Live mode (partial transcripts)",
            "",
            "| language | clip top-1 | first shown top-1 | decided on a partial | right when decided early "
            "| revised by the final | median share heard at decision |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for lang, v in live["per_language"].items():
            prec = "-" if v["early_precision"] is None else f"{v['early_precision']:.1%}"
            heard = "-" if v["median_heard_at_decision"] is None else f"{v['median_heard_at_decision']:.0%}"
            lines.append(
                f"| {lang} | {v['clip_accuracy']:.1%} | {v['first_shown_accuracy']:.1%} | "
                f"{v['decided_early']:.1%} | {prec} | {v['early_revised_by_final']} | {heard} |"
            )
    lines += ["", f"{h2} Per emotion (both languages)", "", "| emotion | n | top-1 |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['n']} | {v['accuracy']:.1%} |" for k, v in result["per_emotion"].items()]
    for lang, conf in result["confusion"].items():
        labels = [k for k in CUE_LABELS if sum(conf[k].values())]
        lines += [
            "",
            f"{h2} Confusion, {lang} (rows: expected, columns: read)",
            "",
            "| | " + " | ".join(CUE_LABELS) + " | top-1 |",
            "|---|" + "---:|" * (len(CUE_LABELS) + 1),
        ]
        for k in labels:
            n = sum(conf[k].values())
            lines.append(
                f"| **{k}** | "
                + " | ".join(str(conf[k].get(p, "")) for p in CUE_LABELS)
                + f" | {conf[k].get(k, 0) / n:.0%} |"
            )
    lat = result["latency_ms"]
    lines += [
        "",
        f"Latency of one `read` (one thread, after warm-up): p50 {lat['p50']} ms, p95 {lat['p95']} ms "
        f"over {lat['n']} reads"
        + (
            f"; `read_partial` p50 {live['read_partial_latency_ms']['p50']} ms, "
            f"p95 {live['read_partial_latency_ms']['p95']} ms"
            if live
            else ""
        )
        + ".",
    ]
    if result["errors"] and errors:
        lines += ["", f"{h2} Misread (clip mode)", ""]
        lines += [
            f"- ({e['language']}) {e['text']} — expected {e['expected']}, read {e['got']} ({e['confidence']:.2f})"
            for e in result["errors"]
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", help="CSV file(s); default: the held-out sets")
    ap.add_argument(
        "--sets",
        default=",".join(GROUPS),
        help="held-out sets, comma-separated groups scored together (default: M, L, K, J, I, F, G, H apart, then A-E)",
    )
    ap.add_argument("--no-live", action="store_true", help="skip live mode (partial transcripts)")
    ap.add_argument("--weights", type=Path, default=None, help="a candidate's weights folder (default: the shipped)")
    ap.add_argument("--json", action="store_true", help="print the full result as JSON")
    ap.add_argument("--report", default=None, help="Markdown report path ('' to skip; default docs/emotion_eval.md)")
    args = ap.parse_args(argv)

    if args.data:
        rows = [r for p in args.data for r in load_rows(p)]
        groups = [("Emotion reader: evaluation", ", ".join(f"`{p}`" for p in args.data), rows, False)]
    else:
        groups = []
        for g in args.sets.split(","):
            rows = held_out(g)
            clean = (
                "the clean set; misread lines are not printed"
                if set(g) <= set(CLEAN)
                else "clean in an earlier round, used for decisions since; misread lines are not printed"
                if set(g) <= set(UNPRINTED)
                else "scored while the reader was developed"
                if set(g) <= set("ABCDE")
                else "clean in an earlier round, a development set since; misread lines are printed"
            )
            groups.append(
                (
                    f"Held-out set{'s' if len(g) > 1 else ''} {'-'.join((g[0], g[-1])) if len(g) > 1 else g}",
                    f"held-out set{'s' if len(g) > 1 else ''} {', '.join(g)} in `tests/data/emotion/` "
                    f"({len(rows)} utterances; {clean})",
                    rows,
                    set(g) <= set(UNPRINTED),
                )
            )
    reader = EmotionReader.load() if args.weights is None else EmotionReader.load(weights=args.weights)
    out, parts = {}, ["# Emotion reader: held-out evaluation", ""]
    for title, data, rows, is_clean in groups:
        result = evaluate(reader, rows)
        live = None if args.no_live else evaluate_live(reader, rows)
        # a clean or unprinted set's misread lines stay out of the JSON too (only their count)
        shown = {**result, "errors": len(result["errors"])} if is_clean else result
        out[title] = {"clip": shown, "live": live}
        parts.append(markdown(result, live, title, data, level=2, errors=not is_clean))
        print(f"{title}: clip accuracy {result['accuracy']:.1%} on {result['n']}", file=sys.stderr)
        for k, v in {**result["per_language"], **result["per_set_language"]}.items():
            print(f"  {k:>5}: {v['accuracy']:.1%} ({v['n']})", file=sys.stderr)
        for k, v in (live or {"per_language": {}})["per_language"].items():
            print(f"  live {k}: {v}", file=sys.stderr)
        print(f"  latency ms: {result['latency_ms']}", file=sys.stderr)
    report = "docs/emotion_eval.md" if args.report is None else args.report
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text("\n".join(parts), encoding="utf-8")
    if args.json:
        json.dump(out, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
