"""Heads fitted on the spent held-out sets, added beside a reader's own (issue 17, sixth round).

Each held-out set (tests/data/emotion) was written apart from the training corpus (from E on, most by a writer of its
own) to measure the reader on text it had never seen; once a round has scored it, it is a development set. Their lines
(A-L, ~4,100 in both languages) are more than the corpus holds, and scored leave one set out (a set's heads fitted
on the other eleven, the set read by the reader with them added) they lift every set: English on F-L from 81.6% to
86.4%, Chinese from 84.5% to 89.3% (docs/emotion.md, "Sixth round"). The corpus's own heads cannot be refitted on
them here: they were fitted on out-of-fold embeddings of cross-fitted layer packs that are not kept. These heads read
the serving encoder's embeddings of lines it was never trained on (the sets never entered a fine-tune), so their
inputs are what serving sees.

    python -m tools.fit_set_heads --sets ABCDEFGHIJKL --weight 4 --out realtime/emotion/weights

reads the reader in --base (default: the shipped weights; set heads it already has are replaced), fits three heads
(`query_sets`, `passage_sets`: the e5 views; `ngram_sets`: hashed n-grams; each with the lexicon's keyword evidence,
as tools/train_emotion.py fits the corpus's) on the sets' lines as written and ASR-style, and writes base + heads to
--out (the shipped folder itself: the command above rewrites what ships, to the bit), each new head at --weight in the
mean of probabilities (the base's heads at their own). The round's clean set (tools.eval_emotion.CLEAN) is refused.
Deterministic on one machine.

--leave-out S: the evaluation of the docs' table: for each set S named, heads fitted on the others into
OUT/without_S (then `python -m tools.eval_emotion --sets S --weights OUT/without_S`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from avatarcast.realtime.emotion.classifier import WEIGHTS_DIR, Head, Manifest, NgramHead
from avatarcast.realtime.emotion.cue import CUE_LABELS
from avatarcast.realtime.emotion.e5pack import PACK_FILE
from avatarcast.realtime.emotion.encoder import E5Encoder
from avatarcast.realtime.emotion.lexicon import Lexicon
from avatarcast.realtime.emotion.ngrams import features as ngram_features
from avatarcast.realtime.emotion.text import normalize
from avatarcast.templates import load_templates
from tools.eval_emotion import CLEAN, SETS, held_out
from tools.train_emotion import HYPER, KINDS, NGRAM_DIM, EmbeddingCache, SparseRows, asr_style, fit_head, fit_ngram

SUFFIX = "_sets"  # the added heads' names: query_sets, passage_sets, ngram_sets


def fit_heads(rows: list[dict[str, str]], encoder: E5Encoder, lexicon: Lexicon) -> list[Head | NgramHead]:
    """The three heads on these lines, as written and ASR-style (two rows a line, as the corpus's heads)."""
    styles = [[normalize(r["text"]) for r in rows], [normalize(asr_style(r["text"], r["language"])) for r in rows]]
    caches = {k: EmbeddingCache(encoder, k) for k in KINDS}
    y = np.array([CUE_LABELS.index(r["emotion"]) for r in rows] * 2)
    texts = styles[0] + styles[1]
    lex = np.stack([lexicon.features(lexicon.hits(t)) for t in texts])
    heads: list[Head | NgramHead] = [
        dataclasses.replace(fit_head(k, caches[k](texts), lex, y), kind=k + SUFFIX, view=k) for k in KINDS
    ]
    X = SparseRows([ngram_features(t) for t in texts], NGRAM_DIM)
    W, Wl, b = fit_ngram(X, lex, y, len(CUE_LABELS), HYPER["ngram_l2"], HYPER["ngram_epochs"], HYPER["lr"])
    return [*heads, NgramHead("ngram" + SUFFIX, W, Wl, b)]


def write(base: Path, out: Path, heads: list[Head | NgramHead], weight: float, about: dict) -> None:
    """base's reader + these heads into out (a folder of its own, or base itself)."""
    manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    feat = manifest["features"]
    old = [k for k in feat["heads"] if k.endswith(SUFFIX)]  # set heads fitted before: replaced
    with np.load(base / "classifier.npz") as z:
        arrays = {k: z[k] for k in z.files if not any(k.startswith(f"{o}_") for o in old)}
    feat["heads"] = [k for k in feat["heads"] if k not in old]
    feat["head_views"] = {k: v for k, v in feat.get("head_views", {}).items() if k not in old}
    manifest["head_weights"] = {k: v for k, v in manifest.get("head_weights", {}).items() if k not in old}
    for h in heads:
        if isinstance(h, NgramHead):
            arrays.update(h.arrays())
        else:
            arrays.update({f"{h.kind}_W": h.W, f"{h.kind}_b": h.b, f"{h.kind}_mu": h.mu,
                           f"{h.kind}_scale": np.float32(h.scale)})  # fmt: skip
    views = {k: feat.get("head_views", {}).get(k, k) for k in feat["heads"]}
    feat["heads"] = [*feat["heads"], *(h.kind for h in heads)]
    feat["head_views"] = {**views, **{h.kind: h.view if isinstance(h, Head) else "ngram" for h in heads}}
    manifest["head_weights"] = {**manifest.get("head_weights", {}), **{h.kind: weight for h in heads}}
    manifest["set_heads"] = about
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != base.resolve() and (base / PACK_FILE).is_file():  # the encoder the heads were fitted with
        shutil.copyfile(base / PACK_FILE, out / PACK_FILE)
    np.savez_compressed(out / "classifier.npz", **arrays)
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, default=WEIGHTS_DIR, help="the reader the heads join (default: shipped)")
    ap.add_argument("--sets", default="ABCDEFGHIJKL", help="the spent held-out sets the heads are fitted on")
    ap.add_argument("--weight", type=float, default=4.0, help="each added head's weight (the base's are theirs)")
    ap.add_argument("--out", type=Path, required=True, help="where the reader with the added heads goes")
    ap.add_argument("--leave-out", default="", help="per set named: heads on the other sets into OUT/without_S")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    sets = "".join(dict.fromkeys(args.sets.upper()))
    if CLEAN in sets or CLEAN in args.leave_out.upper():
        raise SystemExit(f"set {CLEAN} is this round's clean set: nothing is fitted on it")
    if unknown := sorted(set(sets + args.leave_out.upper()) - set(SETS)):
        raise SystemExit(f"no held-out sets {unknown} (tests/data/emotion: {''.join(SETS)})")
    base = Manifest.read(args.base / "manifest.json")
    pack = args.base / PACK_FILE
    encoder = E5Encoder(threads=args.threads, pack=pack if pack.is_file() else None)
    if encoder.fingerprint != base.raw["encoder"]["fingerprint"]:
        raise SystemExit(f"{args.base}'s encoder is {base.raw['encoder']['fingerprint']}, not {encoder.fingerprint}")
    lexicon = Lexicon.from_templates(load_templates(), CUE_LABELS)
    rows = held_out(sets)
    runs = [(f"without_{s}", [r for r in rows if r["set"] != s]) for s in args.leave_out.upper()] or [("", rows)]
    for sub, part in runs:
        t0 = time.time()
        heads = fit_heads(part, encoder, lexicon)
        digest = hashlib.sha256(
            "\n".join(f"{r['text']}\t{r['language']}\t{r['emotion']}" for r in part).encode()
        ).hexdigest()[:16]
        about = {
            "sets": "".join(dict.fromkeys(r["set"] for r in part)),
            "lines": len(part),
            "lines_sha256": digest,
            "weight": args.weight,
            "rows": "each line as written and ASR-style",
            "hyper": {k: HYPER[k] for k in ("l2", "epochs", "lr", "embedding_scale", "ngram_l2", "ngram_epochs")},
            "command": "python -m tools.fit_set_heads " + " ".join(argv if argv is not None else sys.argv[1:]),
        }
        write(args.base, args.out / sub if sub else args.out, heads, args.weight, about)
        print(f"{sub or args.out}: heads on {len(part)} lines of {about['sets']} in {time.time() - t0:.0f} s",
              file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
