"""The shipped weights of the `tiny` engine: where they live, what they are, and their hash.

Layout of a weights folder (engines/tiny/weights/ by default):
  manifest.json      config, file hashes, training data version and training steps
  tiny.safetensors   the weights (fp16): encoder.*, decoder.*, denoiser.*
  encoder.onnx, decoder.onnx, denoiser.onnx   the graphs the onnxruntime/tensorrt backends serve; they
                     read their weights from tiny.safetensors (ONNX external data, engines/tiny/external_data.py)
  lowres.safetensors, decoder_lowres.onnx     optional: the half-resolution decoder of the
                     degradation ladder's "lower internal resolution" rung (tools/train_lowres.py), the
                     graph reading its weights from lowres.safetensors
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from avatarcast.engines.errors import EngineError
from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.vocabulary import EMOTIONS, FPS, FRAME_HEIGHT, FRAME_WIDTH

DEFAULT_DIR = Path(__file__).parent / "weights"
MANIFEST = "manifest.json"
TORCH_FILE = "tiny.safetensors"
ONNX_FILES = {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "denoiser": "denoiser.onnx"}
LOWRES_FILE = "lowres.safetensors"
LOWRES_ONNX = "decoder_lowres.onnx"
# the safetensors file each graph's weights live in (the exporter links them there; the backends verify it)
GRAPH_DATA = {"encoder": TORCH_FILE, "decoder": TORCH_FILE, "denoiser": TORCH_FILE, "decoder_lowres": LOWRES_FILE}


class WeightsError(EngineError, FileNotFoundError):
    """The weights folder is missing a file, or a file does not match its manifest hash."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Manifest:
    config: TinyConfig
    files: dict[str, str]  # file name -> sha256
    data_version: str
    training: dict
    path: Path
    # (name, size, mtime) of files whose hash was checked: three graphs share tiny.safetensors
    _verified: set = field(default_factory=set, repr=False, compare=False)

    @property
    def weights_hash(self) -> str:
        """One hash of the torch weights and config: keys caches built from these weights."""
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        h.update(self.files.get(TORCH_FILE, "").encode())
        return h.hexdigest()[:16]

    @property
    def has_lowres(self) -> bool:
        """Whether this folder ships the half-resolution decoder (the ladder's lowest rung)."""
        return LOWRES_FILE in self.files and LOWRES_ONNX in self.files

    @property
    def onnx_files(self) -> dict[str, str]:
        """Graph name -> ONNX file, for every graph this folder ships (the backends load these)."""
        return {**ONNX_FILES, **({"decoder_lowres": LOWRES_ONNX} if self.has_lowres else {})}

    def file(self, name: str, verify: bool = False) -> Path:
        p = self.path / name
        if not p.exists():
            raise WeightsError(
                f"{p} is missing: the tiny engine's weights folder is incomplete "
                f"(re-export with `python -m tools.export_tiny`)"
            )
        if verify and name in self.files:
            st = p.stat()
            seen = (name, st.st_size, st.st_mtime_ns)
            if seen not in self._verified:
                if file_sha256(p) != self.files[name]:
                    raise WeightsError(
                        f"{p} does not match the sha256 in {self.path / MANIFEST}: the file is corrupt or stale"
                    )
                self._verified.add(seen)
        return p

    def graph_file(self, graph: str, verify: bool = False) -> Path:
        """A graph's ONNX file, after the safetensors file holding its weights (both checked with verify)."""
        self.file(GRAPH_DATA[graph], verify=verify)
        return self.file(self.onnx_files[graph], verify=verify)


def check_vocabulary(cfg: TinyConfig, where: str | Path) -> None:
    """WeightsError unless the weights speak the server's vocabulary: its emotions in the same order (the
    wire's emotion index is the embedding row), its frame size and rate."""
    if tuple(cfg.emotions) != EMOTIONS:
        raise WeightsError(
            f"{where}: the weights were trained on the emotions {list(cfg.emotions)}, but "
            f"templates/emotions.json lists {list(EMOTIONS)}: the order must match (retrain, or "
            f"fix the templates' order)"
        )
    got, want = (cfg.width, cfg.height, cfg.fps), (FRAME_WIDTH, FRAME_HEIGHT, FPS)
    if got != want:
        raise WeightsError(
            f"{where}: the weights make {got[0]}x{got[1]} frames at {got[2]} fps; the server streams "
            f"{want[0]}x{want[1]} at {want[2]} fps"
        )


def load_manifest(weights_dir: str | Path | None = None) -> Manifest:
    d = Path(weights_dir) if weights_dir else DEFAULT_DIR
    mp = d / MANIFEST
    if not mp.exists():
        raise WeightsError(f"no {MANIFEST} in {d}: not a tiny engine weights folder")
    try:
        m = json.loads(mp.read_text())
        manifest = Manifest(
            TinyConfig.from_dict(m["config"]),
            dict(m.get("files", {})),
            m.get("data_version", "unknown"),
            dict(m.get("training", {})),
            d,
        )
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{mp} is not a valid manifest: {e}") from e
    check_vocabulary(manifest.config, mp)
    return manifest


def write_manifest(weights_dir: Path, cfg: TinyConfig, data_version: str, training: dict) -> Manifest:
    files = {p.name: file_sha256(p) for p in sorted(weights_dir.iterdir()) if p.suffix in (".onnx", ".safetensors")}
    body = {
        "format": 1,
        "engine": "tiny",
        "config": cfg.to_dict(),
        "files": files,
        "data_version": data_version,
        "training": training,
    }
    (weights_dir / MANIFEST).write_text(json.dumps(body, indent=1) + "\n")
    return load_manifest(weights_dir)


def load_torch_modules(manifest: Manifest, device: str = "cpu"):
    """Build (encoder, decoder, denoiser) torch modules in float32 from tiny.safetensors."""
    from safetensors.torch import load_file  # torch: the `train` extra, only for the torch backend

    from avatarcast.engines.tiny.model import Denoiser, Encoder, make_decoder  # torch, as above

    sd = load_file(str(manifest.file(TORCH_FILE)), device=device)
    mods = {
        "encoder": Encoder(manifest.config),
        "decoder": make_decoder(manifest.config),
        "denoiser": Denoiser(manifest.config),
    }
    for name, mod in mods.items():
        part = {k[len(name) + 1 :]: v.float() for k, v in sd.items() if k.startswith(name + ".")}
        mod.load_state_dict(part)
        mod.to(device).eval()
    return mods["encoder"], mods["decoder"], mods["denoiser"]


def load_lowres_module(manifest: Manifest, device: str = "cpu"):
    """The half-resolution decoder (HalfResDecoder, float32) from lowres.safetensors."""
    from safetensors.torch import load_file  # torch, as above

    from avatarcast.engines.tiny.model import HalfResDecoder  # torch, as above

    sd = load_file(str(manifest.file(LOWRES_FILE)), device=device)
    mod = HalfResDecoder(manifest.config)
    mod.load_state_dict(
        {k[len("decoder_lowres.") :]: v.float() for k, v in sd.items() if k.startswith("decoder_lowres.")}
    )
    return mod.to(device).eval()
