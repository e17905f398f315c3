"""Fit the live partial policy on held-out sets that may be tuned on (those of earlier rounds), as training does.

    python -m tools.fit_partial_policy --sets FGHI [--weights DIR] [--write]   # ~10 min on 2 cores per 800 lines

Training fits the policy (how many words / characters, how much confidence and how long a hold before a partial
decides) on out-of-fold reads of the training lines' prefixes (tools/train_emotion.py). Those reads are easier than
new text's: the whole transcript is read right more often, so an early decision costs less there than on text the
reader has never seen (on held-out sets F-I the first label shown was up to 2 points below the whole transcript's
in Chinese). This reads every prefix of the named held-out sets, as tools/eval_emotion feeds them, with the given
weights, and fits the same policy grid on them; each set is a fold, so the fit is also scored leaving one set out.
`--write` puts the policy into the weights' manifest. Never name the round's clean set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from avatarcast.realtime.emotion import CUE_LABELS, EmotionReader
from avatarcast.realtime.emotion.classifier import WEIGHTS_DIR
from avatarcast.realtime.emotion.partial import units
from avatarcast.realtime.emotion.text import normalize
from tools.eval_emotion import CLEAN, held_out
from tools.train_emotion import FLOOR, HOLD_UNITS, LiveCases, cross_fitted, fit_partial_policy, prefixes


def live_cases(reader: EmotionReader, rows: list[dict[str, str]], sets: str) -> LiveCases:
    """Every row's prefixes read by `reader` (each line a case, its set its fold), in LiveCases' layout."""
    gold, full, fold, case, n_units, label, prob, backed = [], [], [], [], [], [], [], []
    for i, r in enumerate(rows):
        gold.append(CUE_LABELS.index(r["emotion"]))
        full.append(CUE_LABELS.index(reader.read(r["text"]).label))
        fold.append(sets.index(r["set"]))
        for p in prefixes(normalize(r["text"]), r["language"]):
            cue = reader.read(p)
            case.append(i)
            n_units.append(units(p))
            label.append(CUE_LABELS.index(cue.label))
            prob.append(cue.confidence)
            backed.append(reader.backed(cue))
        if i % 100 == 99:
            print(f"  {i + 1}/{len(rows)} lines", file=sys.stderr, flush=True)
    lab, pr = np.array(label, np.int64), np.array(prob)
    return LiveCases(
        gold=np.array(gold),
        full=np.array(full),
        lang=np.array([r["language"] for r in rows]),
        fold=np.array(fold),
        case=np.array(case, np.int64),
        units=np.array(n_units, np.int64),
        label=lab,
        prob=pr,
        backed=np.array(backed, bool),
        may=(lab != CUE_LABELS.index("idle")) & (pr >= FLOOR),
    )


def choose_hold(cases: LiveCases, fitted: dict, lang: str, sel: np.ndarray) -> dict:
    """The training-fitted policy with the hold under which the first label shown is most often right on the
    selected cases of `lang`, the shortest among ties (a hold only where it helps)."""
    m = sel & (cases.lang == lang)

    def right(h: int) -> float:
        shown, _ = cases.first_shown({**fitted, "hold_units": h})
        return float(np.mean(shown[m] == cases.gold[m]))

    best = max(HOLD_UNITS[lang], key=lambda h: (right(h), -h))
    return {**fitted, "hold_units": best}


def leave_one_set_out_hold(cases: LiveCases, fitted: dict, lang: str) -> dict:
    """choose_hold's own honest score: each set read with the hold chosen on the other sets."""
    m = cases.lang == lang
    shown = cases.full.copy()
    chosen = {}
    for f in np.unique(cases.fold[m]):
        p = choose_hold(cases, fitted, lang, cases.fold != f)
        chosen[int(f)] = p["hold_units"]
        s, _ = cases.first_shown(p)
        shown[cases.fold == f] = s[cases.fold == f]
    return {
        "n": int(m.sum()),
        "clip_accuracy": round(float(np.mean(cases.full[m] == cases.gold[m])), 4),
        "first_shown_accuracy": round(float(np.mean(shown[m] == cases.gold[m])), 4),
        "hold_chosen_per_left_out_set": chosen,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="FGHI", help="held-out sets to fit on (never the clean set)")
    ap.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--cases", type=Path, help="the reads (npz): loaded when the file exists, else saved there")
    ap.add_argument("--languages", default="en,zh", help="fit these languages' policies; the others stay as they are")
    ap.add_argument(
        "--hold-only",
        action="store_true",
        help="keep the manifest's thresholds (fitted in training) and choose only the hold on these sets",
    )
    ap.add_argument("--write", action="store_true", help="write the fitted policy into the weights' manifest")
    args = ap.parse_args(argv)
    if CLEAN in args.sets:
        raise SystemExit(f"set {CLEAN} is this round's clean set: it is scored once, never fitted on")
    t0 = time.time()
    if args.cases is not None and args.cases.is_file():
        cases = LiveCases.load(args.cases)
    else:
        reader = EmotionReader.load(weights=args.weights)
        langs = args.languages.split(",")
        cases = live_cases(reader, [r for r in held_out(args.sets) if r["language"] in langs], args.sets)
        if args.cases is not None:
            cases.save(args.cases)
    print(f"{len(cases.gold)} lines, {len(cases.case)} prefixes read in {time.time() - t0:.0f} s", file=sys.stderr)
    langs = sorted(set(cases.lang.tolist()))
    manifest = json.loads((args.weights / "manifest.json").read_text(encoding="utf-8"))
    everyone = np.ones(len(cases.gold), bool)
    if args.hold_only:
        policy = {g: choose_hold(cases, manifest["partial"][g], g, everyone) for g in langs}
        loso = {g: leave_one_set_out_hold(cases, manifest["partial"][g], g) for g in langs}
    else:
        policy = {g: p for g, p in fit_partial_policy(cases).items() if g in langs}
        loso = {g: v for g, v in cross_fitted(cases).items() if g in langs}
    report = {
        "sets": args.sets,
        "policy": policy,
        "fitted_on": {g: cases.score(policy[g], everyone & (cases.lang == g)) for g in langs},
        "leave_one_set_out": loso,
        "holds": {
            g: {h: cases.score({**manifest["partial"][g], "hold_units": h}, cases.lang == g) for h in HOLD_UNITS[g]}
            for g in langs
        }
        if args.hold_only
        else None,
    }
    print(json.dumps(report, indent=2))
    if args.write:
        path = args.weights / "manifest.json"
        manifest["partial"].update(policy)
        manifest["training"]["live_heldout"] = report
        hold = " --hold-only" if args.hold_only else ""
        manifest["partial_command"] = (
            f"python -m tools.fit_partial_policy --sets {args.sets} --languages {','.join(langs)}{hold} --write"
        )
        path.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"wrote the partial policy into {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
