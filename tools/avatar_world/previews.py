"""Preview images of the avatar world.

``python -m tools.avatar_world.previews --out docs/previews`` writes

* ``emotions_<avatar>.png``  contact sheet: rows = emotions, columns = frames across time
* ``avatars.png``            the built-in avatars (idle frame each)
* ``random_avatars.png``     members of the parametric family
* ``intensity.png``          each emotion at intensity 0.3 / 0.6 / 1.0
* ``emotion_<name>.gif``     per emotion, several avatars side by side, 8 fps
* ``sequence.gif``           a render_sequence with transitions between emotions
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from avatarcast.engines.avatar_world.avatars import BUILTIN_AVATARS, get_avatar, random_avatar
from avatarcast.engines.avatar_world.render import render_clip, render_sequence
from avatarcast.vocabulary import EMOTIONS, FPS

BG = (226, 236, 246, 255)
INK = (40, 40, 60, 255)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def _tile(frame: np.ndarray, crop: tuple[int, int], size: tuple[int, int]) -> Image.Image:
    x0, x1 = crop
    im = Image.fromarray(frame[:, x0:x1])
    return im.resize(size, Image.LANCZOS)


def contact_sheet(avatar=0, cols: int = 8, step: int = 2, seed: int = 7, tile=(200, 180)) -> Image.Image:
    av = get_avatar(avatar)
    lab_w = 130
    sheet = Image.new("RGBA", (lab_w + cols * tile[0], len(EMOTIONS) * tile[1] + 34), BG)
    d = ImageDraw.Draw(sheet)
    d.text(
        (8, 6), f"avatar '{av.name}': rows = emotions, columns = every {step} frames at 8 fps", fill=INK, font=_font(20)
    )
    for r, emo in enumerate(EMOTIONS):
        frames = render_clip(av, emo, cols * step, seed=seed, start_time=0.0)
        y = 34 + r * tile[1]
        d.text((10, y + tile[1] // 2 - 12), emo, fill=INK, font=_font(22))
        for c in range(cols):
            sheet.alpha_composite(_tile(frames[c * step], (120, 520), tile), (lab_w + c * tile[0], y))
        d.line([(0, y), (sheet.width, y)], fill=(200, 210, 225, 255), width=1)
    return sheet.convert("RGB")


def avatar_sheet(
    avatars, emotion: str = "idle", tile=(300, 300), cols: int | None = None, title: str = ""
) -> Image.Image:
    avatars = [get_avatar(a) for a in avatars]
    cols = cols or len(avatars)
    rows = (len(avatars) + cols - 1) // cols
    top = 34 if title else 0
    sheet = Image.new("RGBA", (cols * tile[0], rows * (tile[1] + 36) + top), BG)
    d = ImageDraw.Draw(sheet)
    if title:
        d.text((8, 6), title, fill=INK, font=_font(20))
    for i, av in enumerate(avatars):
        f = render_clip(av, emotion, 1, seed=i, start_time=0.3)[0]
        x, y = (i % cols) * tile[0], top + (i // cols) * (tile[1] + 36)
        sheet.alpha_composite(_tile(f, (140, 500), tile), (x, y))
        d.text((x + 10, y + tile[1] - 4), av.name, fill=INK, font=_font(15))
        d.text((x + 10, y + tile[1] + 14), f"{av.body_shape}, {av.headwear}, {av.accessory}", fill=INK, font=_font(12))
    return sheet.convert("RGB")


def intensity_sheet(avatar=5, levels=(0.3, 0.6, 1.0), tile=(150, 150)) -> Image.Image:
    av = get_avatar(avatar)
    lab = 40
    sheet = Image.new("RGBA", (lab + len(EMOTIONS) * tile[0], len(levels) * tile[1] + 30), BG)
    d = ImageDraw.Draw(sheet)
    for j, emo in enumerate(EMOTIONS):
        d.text((lab + j * tile[0] + 8, 6), emo, fill=INK, font=_font(16))
        for i, k in enumerate(levels):
            f = render_clip(av, emo, 1, seed=3, intensity=k, start_time=0.5)[0]
            sheet.alpha_composite(_tile(f, (140, 500), tile), (lab + j * tile[0], 30 + i * tile[1]))
    for i, k in enumerate(levels):
        d.text((4, 30 + i * tile[1] + tile[1] // 2 - 8), f"{k:.1f}", fill=INK, font=_font(16))
    return sheet.convert("RGB")


def _save_gif(frames: list[Image.Image], path: Path, fps: int = FPS) -> None:
    pal = [
        f.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) for f in frames
    ]
    pal[0].save(path, save_all=True, append_images=pal[1:], duration=int(1000 / fps), loop=0, optimize=True, disposal=1)


def emotion_gif(emotion: str, avatars, n_frames: int = 16, tile=(150, 150), path: Path | None = None) -> list:
    avatars = [get_avatar(a) for a in avatars]
    clips = [render_clip(av, emotion, n_frames, seed=11 + i) for i, av in enumerate(avatars)]
    out = []
    for t in range(n_frames):
        im = Image.new("RGBA", (tile[0] * len(avatars), tile[1] + 20), BG)
        d = ImageDraw.Draw(im)
        for i, c in enumerate(clips):
            im.alpha_composite(_tile(c[t], (140, 500), tile), (i * tile[0], 20))
        d.text((6, 2), emotion, fill=INK, font=_font(15))
        out.append(im)
    if path is not None:
        _save_gif(out, path)
    return out


def sequence_gif(path: Path, avatar=1, tile=(320, 180)) -> None:
    """A render_sequence (with transitions), labelled with the per-frame emotion, cropped to the middle."""
    segs = [
        ("idle", 8, 1.0),
        ("listening", 12, 1.0),
        ("surprised", 12, 1.0),
        ("happy", 12, 1.0),
        ("laughing", 10, 1.0),
        ("confused", 12, 1.0),
        ("sad", 12, 0.7),
        ("love", 12, 1.0),
    ]
    frames, labels = render_sequence(avatar, segs, seed=5)
    out = []
    for f, lab in zip(frames, labels):
        im = Image.new("RGBA", tile, BG)
        im.alpha_composite(_tile(f, (0, 640), tile))
        ImageDraw.Draw(im).text((6, 4), EMOTIONS[int(lab)], fill=INK, font=_font(15))
        out.append(im)
    _save_gif(out, path)


def _save_png(im: Image.Image, path: Path) -> None:
    # a 256-colour palette keeps the flat-shaded sheets small and looks the same
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def write_previews(out_dir, sheet_avatars=(0, 4)) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for a in sheet_avatars:
        name = get_avatar(a).name
        p = out / f"emotions_{name}.png"
        _save_png(contact_sheet(a), p)
        written.append(p)
    p = out / "avatars.png"
    _save_png(avatar_sheet(BUILTIN_AVATARS, title="built-in avatars (ids 0..5), idle"), p)
    written.append(p)
    p = out / "random_avatars.png"
    _save_png(
        avatar_sheet(
            [random_avatar(k) for k in range(12)],
            emotion="happy",
            tile=(200, 200),
            cols=6,
            title="random_avatar(0..11), happy",
        ),
        p,
    )
    written.append(p)
    p = out / "intensity.png"
    _save_png(intensity_sheet(), p)
    written.append(p)
    gif_avatars = [BUILTIN_AVATARS[0], BUILTIN_AVATARS[3], BUILTIN_AVATARS[4], random_avatar(3)]
    for emo in EMOTIONS:
        p = out / f"emotion_{emo}.gif"
        emotion_gif(emo, gif_avatars, path=p)
        written.append(p)
    p = out / "sequence.gif"
    sequence_gif(p)
    written.append(p)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write avatar-world preview images.")
    ap.add_argument("--out", default="docs/previews")
    a = ap.parse_args(argv)
    total = 0
    for p in write_previews(a.out):
        total += p.stat().st_size
        print(f"{p}  {p.stat().st_size / 1024:.0f} KiB")
    print(f"total {total / 1024 / 1024:.2f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
