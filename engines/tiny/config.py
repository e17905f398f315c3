"""The `tiny` engine's shape settings, free of torch so the CPU serving path never imports it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from avatarcast.vocabulary import EMOTIONS, FPS, FRAME_HEIGHT, FRAME_WIDTH

# What a manifest written before `arch` existed meant by the fields it did not have.
LEGACY_V1: dict = {
    "arch": 1,
    "window_x0": 0,
    "window_width": 640,
    "latent_channels": 16,
    "downsample": 16,
    "patch": 1,
    "enc_channels": (32, 64, 128, 128),
    "enc_blocks": (1, 1, 1, 1),
    "dec_channels": (128, 64, 32, 16),
    "dec_blocks": (1, 0, 0, 0),
    "crop_threshold": 0.0,
    "background_latent": [0.0] * 16,
}
# What a config written before `den_pred` existed trained: the velocity itself.
LEGACY_DEN_PRED = "v"

_TUPLES = ("emotions", "enc_channels", "enc_blocks", "dec_channels", "dec_blocks", "den_channels")


@dataclass
class TinyConfig:
    """Everything that fixes the shapes of the networks; stored in the weights manifest.

    The networks see a window of the frame, not the whole frame: the avatar and everything it
    draws stay inside the renderer's band of columns, so the columns outside the window are
    always transparent and spending model capacity (and CPU) on them would buy nothing.
    """

    arch: int = 2  # 1: the first model's decoder layout (engines/tiny/model.py DecoderV1)
    height: int = FRAME_HEIGHT
    width: int = FRAME_WIDTH
    pad_height: int = 384  # rows padded so the window divides by the latent grid and the U-Net's levels
    window_x0: int = 96  # first frame column the networks see
    window_width: int = 448  # the renderer draws within 320 +- 215 columns: 96..543 holds all of it
    latent_channels: int = 8
    downsample: int = 8
    patch: int = 2  # the denoiser works on patch x patch groups of latent cells
    chunk_frames: int = 4  # frames generated per sampler call (0.5 s at 8 fps)
    context_frames: int = 2  # previous frames the denoiser sees
    fps: int = FPS
    # the emotion embedding's rows, in order: part of what the weights learnt, so kept in the manifest
    # and checked against the vocabulary when it loads (weights.load_manifest)
    emotions: tuple[str, ...] = EMOTIONS
    enc_channels: tuple[int, ...] = (64, 128, 192)  # one stride-2 level each: 1/2, 1/4, 1/8
    enc_blocks: tuple[int, ...] = (1, 1, 2)
    dec_channels: tuple[int, ...] = (128, 64, 32)  # 1/8, 1/4, 1/2; a pixel shuffle makes full size
    dec_blocks: tuple[int, ...] = (2, 1, 0)
    den_channels: tuple[int, ...] = (96, 160, 192)
    cond_dim: int = 256
    min_shortcut: float = 1.0 / 32  # smallest shortcut step the denoiser was trained for
    # What the denoiser's last layer outputs: "x" the clean chunk (the graph turns it into the
    # velocity), or "v" the velocity itself. A velocity carries the noise, and a patch-2 chunk has
    # T*C*4 = 128 noise values per position against 96 channels at the U-Net's first level: a
    # "v" network cannot hand the noise through and leaves part of it in every sample
    # (docs/training/README.md, "Why the first run's denoiser failed").
    den_pred: str = "x"
    # Per-channel latent statistics, measured after autoencoder training; the denoiser and
    # the exported graphs work on normalized latents.
    latent_mean: list[float] = field(default_factory=lambda: [0.0] * 8)
    latent_std: list[float] = field(default_factory=lambda: [1.0] * 8)
    # What an empty (transparent) latent cell looks like, normalized, and how far from it a cell
    # must be to hold some of the avatar: decoding only the cells around the avatar is what keeps
    # the CPU decoder cheap (engines/tiny/crop.py).
    background_latent: list[float] = field(default_factory=lambda: [0.0] * 8)
    crop_threshold: float = 0.0  # 0: decode the whole grid
    crop_margin: int = 2  # cells kept around the avatar's cells (outlines, soft shadow)

    def __post_init__(self) -> None:
        if self.den_pred not in ("v", "x"):
            raise ValueError(f"den_pred must be 'v' or 'x', got {self.den_pred!r}")

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.pad_height // self.downsample, self.window_width // self.downsample

    @property
    def pad_top(self) -> int:
        return (self.pad_height - self.height) // 2

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in _TUPLES:
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TinyConfig:
        d = dict(d)
        if "arch" not in d:  # a manifest from before the window, the crop decode and the patches
            d = {**LEGACY_V1, **d}
        d.setdefault("den_pred", LEGACY_DEN_PRED)
        for k in _TUPLES:
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)
