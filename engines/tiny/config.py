"""The `tiny` engine's shape settings, free of torch so the CPU serving path never imports it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

EMOTIONS: tuple[str, ...] = (
    "idle", "listening", "happy", "excited", "surprised", "sad",
    "angry", "laughing", "love", "confused", "sleepy",
)


@dataclass
class TinyConfig:
    """Everything that fixes the shapes of the networks; stored in the weights manifest."""

    height: int = 360
    width: int = 640
    pad_height: int = 384  # 384 and 640 divide by 16
    latent_channels: int = 16
    downsample: int = 16
    chunk_frames: int = 4  # frames generated per sampler call (0.5 s at 8 fps)
    context_frames: int = 2  # previous frames the denoiser sees
    fps: int = 8
    emotions: tuple[str, ...] = EMOTIONS
    enc_channels: tuple[int, ...] = (32, 64, 128, 128)
    dec_channels: tuple[int, ...] = (128, 64, 32, 16)
    den_channels: tuple[int, ...] = (96, 160, 192)
    cond_dim: int = 256
    min_shortcut: float = 1.0 / 32  # smallest shortcut step the denoiser was trained for
    # Per-channel latent statistics, measured after autoencoder training; the denoiser and
    # the exported graphs work on normalized latents.
    latent_mean: list[float] = field(default_factory=lambda: [0.0] * 16)
    latent_std: list[float] = field(default_factory=lambda: [1.0] * 16)

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.pad_height // self.downsample, self.width // self.downsample

    @property
    def pad_top(self) -> int:
        return (self.pad_height - self.height) // 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["emotions"] = list(self.emotions)
        for k in ("enc_channels", "dec_channels", "den_channels"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TinyConfig":
        d = dict(d)
        for k in ("emotions", "enc_channels", "dec_channels", "den_channels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)
