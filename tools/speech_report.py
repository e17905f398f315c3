"""The docs/speech.md tables from raw results: `bench latency --json` runs and `tools.eval_speech --json`.

    python -m tools.speech_report docs/bench/speech_latency_*.json.gz [--asr docs/bench/speech_asr.json]

Per latency run (named *_<lang>_<mode>_s<sessions>.json, or .json.gz as the committed runs are): TTER
p50/p95 over all clips and over the clips that got a non-idle reaction (an "idle" decision has no reaction
frame: its TTER is its TTFF), the time to the emotion decision, language-ID accuracy and error rate of the
transcripts the server sent, emotion accuracy, and the other load on the machine during the run.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import re
import sys
from pathlib import Path

from tools.eval_speech import CLIPS, edit_distance, units

NAME = re.compile(r"_(?P<lang>[a-z]{2})_(?P<mode>clip|stream)_s(?P<sessions>\d+)(_\w+)?\.json(\.gz)?$")


def _texts() -> dict[str, str]:
    out = {}
    for manifest in CLIPS.glob("*/manifest.csv"):
        with open(manifest, newline="", encoding="utf-8") as f:
            out.update({r["file"]: r["text"] for r in csv.DictReader(f)})
    return out


def _p(d: dict, key: str) -> str:
    v = d.get(key) or {}
    return f"{v.get('p50', '-'):.0f} / {v.get('p95', '-'):.0f}" if v.get("p50") is not None else "-"


def latency_row(path: Path, texts: dict[str, str]) -> dict:
    m = NAME.search(path.name)
    if m is None:
        raise ValueError(f"{path}: name must end _<lang>_<clip|stream>_s<N>.json (or .json.gz)")
    lang = m["lang"]
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    r = json.loads(raw.decode("utf-8"))
    s, rows = r["summary"], [c for c in r["clips"] if not c.get("error")]
    errs = refs = 0
    for c in rows:
        ref = units(texts[c["file"]], lang)
        errs += edit_distance(ref, units(c.get("transcript") or "", lang))
        refs += len(ref)
    lid = sum(1 for c in rows if c.get("language") == lang)
    acc = s["accuracy"]
    other = (r.get("host_cpu") or {}).get("other_cores")
    return {
        "language": lang,
        "mode": m["mode"],
        "sessions": int(m["sessions"]),
        "clips": f"{s['measured']}/{s['clips']}",
        "tter": _p(s, "tter_ms"),
        "tter_reactions": _p(s, "tter_ms_reactions"),
        "reactions": (s.get("tter_ms_reactions") or {}).get("n", 0),
        "decision": _p(s, "decision_ms"),
        "lid": f"{lid}/{len(rows)}",
        ("cer" if lang == "zh" else "wer"): round(errs / max(1, refs), 3),
        "emotion": f"{acc['correct']}/{acc['labelled']}",
        "other_load_cores": other,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="speech_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="bench latency --json outputs")
    ap.add_argument("--asr", default=None, help="tools.eval_speech --json output")
    args = ap.parse_args(argv)
    texts = _texts()
    rows = sorted(
        (latency_row(Path(p), texts) for p in args.runs), key=lambda r: (r["mode"], r["sessions"], r["language"])
    )
    print(
        "| language | mode | sessions | TTER p50 / p95 ms | TTER, non-idle reactions (n) "
        "| emotion decided p50 / p95 ms | language found | WER / CER | emotion right | other load (cores) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        err = f"WER {r['wer']}" if "wer" in r else f"CER {r['cer']}"
        print(
            f"| {r['language']} | {r['mode']} | {r['sessions']} | {r['tter']} "
            f"| {r['tter_reactions']} ({r['reactions']}) | {r['decision']} | {r['lid']} | {err} | {r['emotion']} "
            f"| {r['other_load_cores']} |"
        )
    if args.asr:
        a = json.loads(Path(args.asr).read_text(encoding="utf-8"))
        print(
            "\n| language | ASR p50 / p95 ms | ASR CPU time p50 ms | language found | WER / CER | emotion right "
            "(today's reader, on the transcript) |"
        )
        print("|---|---|---|---|---|---|")
        for lang, v in a["languages"].items():
            err = f"CER {v['cer']}" if "cer" in v else f"WER {v['wer']}"
            print(
                f"| {lang} | {v['asr_ms_p50']:.0f} / {v['asr_ms_p95']:.0f} | {v['asr_cpu_ms_p50']:.0f} "
                f"| {v['language_id_accuracy']:.0%} | {err} | {v['emotion_accuracy']:.0%} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
